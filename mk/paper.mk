# mk/paper.mk — the D-ODE paper's tables and figures (Kim, Tang & Yu, CVPR 2024), regenerated.
#
# Included by the Makefile (`include mk/paper.mk`), or on its own: `make -f mk/paper.mk paper`.
# Each target first runs the sweeps it needs through `dode-run -m` (Hydra multirun; the runner skips
# finished fits, shards and metrics, so rerunning a target only renders), then renders with
# `python -m dode.report` into results/tables (Markdown + CSV) and results/figures (PNG + PDF).
#
#   make paper                                    # everything, on the embedded digits models (CPU)
#   make table-formulations                       # one table
#   make table-learned                            # the learned solvers, un-learned bases and the teacher
#   make fig-fid-nfe DATASET=cifar10              # the paper's settings on a real checkpoint
#   make fig-fid-nfe DATASET=cifar10 CHECKPOINT=ddpm-cifar10 EDM_CHECKPOINT=edm-cifar10-32x32-uncond-vp
#
# DATASET=digits (default) uses the embedded 8×8 digits models (digits-ddpm: noise prediction,
# digits-edm: data prediction) and FD-digits, with SAMPLES=2000 samples per evaluation seed (the
# paper: 50K) so that `make paper` finishes on 2 CPU cores; every other dataset keeps the paper's
# settings: the dataset's num_samples (50K), three seeds, K = 10, B = 100 (LSUN: 25).
# Variables (command line wins): DATASET, CHECKPOINT (noise-prediction model: Fig. 3, Tables 2–4),
# EDM_CHECKPOINT (data-prediction model: Fig. 4, Table 1, Fig. 6), SAMPLES, SEEDS, RESULTS,
# the NFE lists below, LAM_GRID, DODE_RUN, PYTHON.

DATASET ?= digits
PYTHON ?= python
DODE_RUN ?= dode-run
RESULTS ?= results
SEEDS ?= 0 1 2

# One source for what the report and these sweeps share: conf/paper.yaml (the paper's checkpoints per
# dataset, NFE columns, reference solvers, Fig. 6's columns) and the artifact registry of dode.report
# (the artifacts and the make target of each one's sweeps). `python -m dode.report query make` prints
# them as PAPER_* assignments (one word each, lists comma-separated), read once here (or given as
# PAPER_QUERY=… on the command line, as the tests do to save a Python start per make call).
# Asked only when a goal other than the including Makefile's own (OWN_TARGETS) is requested.
ifeq ($(origin PAPER_QUERY),undefined)
ifneq ($(filter-out $(OWN_TARGETS),$(or $(MAKECMDGOALS),$(.DEFAULT_GOAL))),)
PAPER_QUERY := $(shell $(PYTHON) -m dode.report query make --dataset $(DATASET) 2>/dev/null)
endif
endif
$(foreach v,$(PAPER_QUERY),$(eval $(v)))
ifeq ($(PAPER_ARTIFACTS),)
ifneq ($(filter paper paper-runs table-% fig-% runs-%,$(filter-out $(OWN_TARGETS),$(MAKECMDGOALS))),)
$(error `$(PYTHON) -m dode.report query make` failed (is dode installed for $(PYTHON)? run it to see why))
endif
endif
comma := ,
PAPER_ARTIFACT_LIST := $(subst $(comma), ,$(PAPER_ARTIFACTS))

# The paper's checkpoints of DATASET; empty: that half is skipped.
CHECKPOINT ?= $(PAPER_CHECKPOINT)
EDM_CHECKPOINT ?= $(PAPER_EDM_CHECKPOINT)

ifeq ($(DATASET),digits)
# digits: 2,000 samples per seed (FD-digits std over seeds ≈ 2–3 at NFE 10, against a DDIM → D-DDIM
# gap of ≈ 25; raise SAMPLES=10000 for the dataset's default).
SAMPLES ?= 2000
NFES_NOISE ?= 2,3,4,5,6,8,10,15,25,50
NFES_EULER ?= 2,3,4,5,6,8,10,15,25,50
NFES_HEUN ?= 3,5,7,9,11,15,25,51
LAM_GRID ?= 0.5,1.0,1.5,2.0,3.0,4.0
else
SAMPLES ?=
# Noise-prediction models: K·N ≤ T = 1000 at K = 10 caps NFE at 100 (the runner refuses more).
NFES_NOISE ?= 2,3,5,10,25,50,100
NFES_EULER ?= 2,3,5,10,25,50,100,250
NFES_HEUN ?= 3,5,11,25,51,101,251
LAM_GRID ?= 0.05,0.1,0.2,0.3,0.5
endif
NFES_TABLE ?= $(PAPER_TABLE_NFE)
# Fig. 6: NFE of the sample grids (Heun spends odd NFE)
NFES_SAMPLES_EULER ?= $(PAPER_SAMPLES_NFE_DDIM)
NFES_SAMPLES_HEUN ?= $(PAPER_SAMPLES_NFE_HEUN)
NOISE_SOLVERS ?= $(PAPER_NOISE_SOLVERS)
SCALES ?= 5,10,20
SCALES_K30 ?= 30
NFES_TABLE_K30 ?= 10,25
BATCHES ?= 5,10,50,100
# table-learned: the learned solvers on one base solver, un-learned base solvers, and each model's
# reference solver ("teacher" of the table: SOLVER:NFE; 200 Heun steps spend 399 NFE).
NFES_LEARNED ?= $(PAPER_LEARNED_NFE)
LEARNED_SOLVER ?= $(PAPER_LEARNED_SOLVER)
# the learned methods (conf/paper.yaml; S4S with the digits classifier's features on digits only)
LEARNED ?= $(PAPER_LEARNED)
# un-learned base solvers shown next to them (conf/paper.yaml learned.bases): SOLVER or SOLVER@GRID (solver.grid)
LEARNED_BASES ?= $(PAPER_LEARNED_BASES)
# learned methods also fitted on more noises (conf/paper.yaml learned.extra_batches): METHOD:B, a row each
LEARNED_EXTRA ?= $(PAPER_LEARNED_EXTRA)
TEACHER_NOISE ?= $(PAPER_TEACHER_NOISE)
TEACHER_EDM ?= $(PAPER_TEACHER_EDM)
LEARNED_REPORT = --learned-solver $(LEARNED_SOLVER) --nfe $(NFES_LEARNED) --teacher-noise $(TEACHER_NOISE) \
	--teacher-edm $(TEACHER_EDM)

RUN = $(DODE_RUN) -m dataset=$(DATASET) results_dir=$(RESULTS) progress=false $(if $(SAMPLES),num_samples=$(SAMPLES))
# the model of each part, with the FID mode the paper computed its FID in (conf/paper.yaml; not on digits)
NOISE_MODEL = checkpoint=$(CHECKPOINT)$(if $(filter digits,$(DATASET)),, eval.mode=$(PAPER_FID_MODE_NOISE))
EDM_MODEL = checkpoint=$(EDM_CHECKPOINT)$(if $(filter digits,$(DATASET)),, eval.mode=$(PAPER_FID_MODE_EDM))
RUN_SEEDS = 'seeds=[$(subst $() ,$(comma),$(strip $(SEEDS)))]'
REPORT = $(PYTHON) -m dode.report --results $(RESULTS) --dataset $(DATASET) \
	$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(EDM_CHECKPOINT),--edm-checkpoint $(EDM_CHECKPOINT))

.PHONY: paper paper-runs table-learned-edm-cifar10 $(PAPER_ARTIFACT_LIST) runs-fid-nfe runs-time runs-formulations runs-ablation-scale \
	runs-ablation-batch runs-lookahead runs-samples runs-learned

# ---------------------------------------------------------------------------------------- sweeps
# Fig. 3 (noise prediction: DDIM, iPNDM, DPM-Solver-3, DEIS-3) and Fig. 4 (data prediction: DDIM
# = Euler, EDM = Heun), each with its D-ODE variant, over NFE.
runs-fid-nfe:
ifneq ($(CHECKPOINT),)
	$(RUN) $(RUN_SEEDS) $(NOISE_MODEL) solver=$(NOISE_SOLVERS) distill=dode 'nfe=[$(NFES_NOISE)]'
endif
ifneq ($(EDM_CHECKPOINT),)
	$(RUN) $(RUN_SEEDS) $(EDM_MODEL) solver=ddim distill=dode 'nfe=[$(NFES_EULER)]'
	$(RUN) $(RUN_SEEDS) $(EDM_MODEL) solver=heun distill=dode 'nfe=[$(NFES_HEUN)]'
endif

# Table 1: λ fit and sampling time of D-EDM (Heun) on the data-prediction model.
runs-time:
ifneq ($(EDM_CHECKPOINT),)
	$(RUN) $(RUN_SEEDS) $(EDM_MODEL) solver=heun distill=dode 'nfe=[$(NFES_HEUN)]'
endif

# Table 2: DDIM, D-DDIM-Sep, D-DDIM-All, D-DDIM, D-DDIM-2 (the base DDIM runs once).
runs-formulations:
	$(RUN) $(RUN_SEEDS) $(NOISE_MODEL) solver=ddim distill=dode,dode_sep,dode_all,dode_2 'nfe=[$(NFES_TABLE)]'

# Table 3: K and B ablations of D-DDIM. Each evaluation seed s gets its own λ fit (fit_seed=s), so
# mean ± std covers the fit batch too, as in the paper's three independent runs. K = 30 at NFE 50
# would need K·N = 1500 > T = 1000 teacher steps, which the runner refuses (the paper's capped
# teacher is the K = 20 one), so K = 30 runs below NFE 50 only.
runs-ablation-scale:
	$(foreach s,$(SEEDS),$(RUN) $(NOISE_MODEL) solver=ddim distill=dode compare_base=false 'nfe=[$(NFES_TABLE)]' scale=$(SCALES) fit_seed=$(s) 'seeds=[$(s)]' &&) true
	$(foreach s,$(SEEDS),$(RUN) $(NOISE_MODEL) solver=ddim distill=dode compare_base=false 'nfe=[$(NFES_TABLE_K30)]' scale=$(SCALES_K30) fit_seed=$(s) 'seeds=[$(s)]' &&) true

runs-ablation-batch:
	$(foreach s,$(SEEDS),$(RUN) $(NOISE_MODEL) solver=ddim distill=dode compare_base=false 'nfe=[$(NFES_TABLE)]' batch=$(BATCHES) fit_seed=$(s) 'seeds=[$(s)]' &&) true

# Section 13 (Table 4): DDIM, LA-DDIM and Fixed-D-DDIM (one λ, grid search over LAM_GRID), D-DDIM.
runs-lookahead:
	$(RUN) $(RUN_SEEDS) $(NOISE_MODEL) solver=ddim distill=dode 'nfe=[$(NFES_TABLE)]'
	$(RUN) $(RUN_SEEDS) $(NOISE_MODEL) solver=ddim distill=fixed,lookahead distill.lam=$(LAM_GRID) compare_base=false 'nfe=[$(NFES_TABLE)]'

# Fig. 6: the first seed's samples of the data-prediction model (reused from Fig. 4's runs), as in the
# paper; a dataset with no data-prediction checkpoint shows DDIM vs D-DDIM of the noise-prediction one.
runs-samples:
ifneq ($(EDM_CHECKPOINT),)
	$(RUN) 'seeds=[0]' $(EDM_MODEL) solver=ddim distill=dode 'nfe=[$(NFES_SAMPLES_EULER)]'
	$(RUN) 'seeds=[0]' $(EDM_MODEL) solver=heun distill=dode 'nfe=[$(NFES_SAMPLES_HEUN)]'
else ifneq ($(CHECKPOINT),)
	$(RUN) 'seeds=[0]' $(NOISE_MODEL) solver=ddim distill=dode 'nfe=[$(NFES_SAMPLES_EULER)]'
endif

# The learned solvers next to their base solver over NFE, on both models (and those of LEARNED_EXTRA
# again on their own fit batch B); the un-learned base solvers of LEARNED_BASES at the same NFE; and each model's reference solver once (digits-ddpm: 1000 DDIM
# steps; digits-edm: 200 Heun steps).
teacher_args = solver=$(word 1,$(subst :, ,$(1))) nfe=$(word 2,$(subst :, ,$(1))) distill=none
base_args = solver=$(word 1,$(subst @, ,$(1))) distill=none$(if $(word 2,$(subst @, ,$(1))), solver.grid=$(word 2,$(subst @, ,$(1))))
extra_args = solver=$(LEARNED_SOLVER) distill=$(word 1,$(subst :, ,$(1))) batch=$(word 2,$(subst :, ,$(1)))
# one dode-run at the learned NFE per entry of the comma list $(2), its arguments $(call $(3),ENTRY), on model $(1)
runs_each = $(foreach e,$(subst $(comma), ,$(2)),$(RUN) $(RUN_SEEDS) $(1) $(call $(3),$(e)) 'nfe=[$(NFES_LEARNED)]' &&) true
bases_of = $(call runs_each,$(1),$(LEARNED_BASES),base_args)
extras_of = $(call runs_each,$(1),$(LEARNED_EXTRA),extra_args)
runs-learned:
ifneq ($(CHECKPOINT),)
	$(RUN) $(RUN_SEEDS) $(NOISE_MODEL) solver=$(LEARNED_SOLVER) distill=$(LEARNED) 'nfe=[$(NFES_LEARNED)]'
	$(call extras_of,$(NOISE_MODEL))
	$(call bases_of,$(NOISE_MODEL))
	$(RUN) $(RUN_SEEDS) $(NOISE_MODEL) $(call teacher_args,$(TEACHER_NOISE))
endif
ifneq ($(EDM_CHECKPOINT),)
	$(RUN) $(RUN_SEEDS) $(EDM_MODEL) solver=$(LEARNED_SOLVER) distill=$(LEARNED) 'nfe=[$(NFES_LEARNED)]'
	$(call extras_of,$(EDM_MODEL))
	$(call bases_of,$(EDM_MODEL))
	$(RUN) $(RUN_SEEDS) $(EDM_MODEL) $(call teacher_args,$(TEACHER_EDM))
endif

# every sweep an artifact names (the registry's, in its order), but this target itself
paper-runs: $(filter-out paper-runs,$(subst $(comma), ,$(PAPER_SWEEPS)))

# ---------------------------------------------------------------------------------------- render
# One target per artifact of the registry (`python -m dode.report --help`): its sweeps
# (PAPER_SWEEP_<artifact>: none for Figs. 2 and 5, computed with the model; all of them for
# table-runs), then `python -m dode.report <artifact>` with the options below, if any.
REPORT_ARGS_table-learned = $(LEARNED_REPORT)
REPORT_ARGS_fig-samples = --samples-nfe $(NFES_SAMPLES_EULER) --samples-nfe-heun $(NFES_SAMPLES_HEUN)
ifneq ($(PAPER_ARTIFACT_LIST),)
$(foreach a,$(PAPER_ARTIFACT_LIST),$(eval $(a): $(PAPER_SWEEP_$(a))))
$(PAPER_ARTIFACT_LIST):
	$(REPORT) $@ $(REPORT_ARGS_$@)
endif

paper: $(PAPER_ARTIFACT_LIST)

# ------------------------------------------------------------------- on a real checkpoint (issue 18)
# table-learned with the field's protocol on EDM's CIFAR-10 unconditional VP model only: every learned
# method and base solver of conf/paper.yaml at the learned NFE, FID as EDM's fid.py computes it
# (legacy_tensorflow), 50K samples per seed, seed 0 = EDM's seeds 0–49999 (seeds 1 and 2: the next blocks
# of 10⁷; EDM draws its noise on the GPU's generator, dode on the CPU's, so the images are not EDM's), and
# mean and min over the three seeds (conf/paper.yaml aggregate). Needs the checkpoint and the statistics
# (docs/checkpoints.md); `make -n table-learned-edm-cifar10` prints the dode-run commands.
table-learned-edm-cifar10:
	$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) table-learned DATASET=cifar10 CHECKPOINT= EDM_CHECKPOINT=edm-cifar10-32x32-uncond-vp RESULTS=$(RESULTS) PAPER_QUERY="$$($(PYTHON) -m dode.report query make --dataset cifar10)"
