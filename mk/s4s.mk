# mk/s4s.mk — S4S's latent table (Frankel et al. 2025): Stable Diffusion v1.5 on MS-COCO captions with
# classifier-free guidance, and the CompVis LDM on LSUN Bedroom; the base solvers and the learned ones
# (S4S, S4S-Alt, and D-ODE next to them) over S4S's NFE list. GPU work (docs/latent.md: the files needed,
# the NFE convention under guidance); `make -n table-latent` prints the commands.
#
#   make table-latent                                  # both models
#   make table-latent LATENT_MODELS=coco GUIDANCE=7.5  # Stable Diffusion only
#   make table-latent LATENT_EVALS_COCO=fid30k,clip30k # also the CLIP score of the same samples
#
# First `python -m dode.report check-files` checks every local file (checkpoints, LDM config.yaml, COCO
# captions, FID statistics, CLIP weights) and names each missing one with where to get it, then the sweeps
# run (`dode-run -m`, resumable), then `python -m dode.report table-learned` renders one table per model and
# base solver into $(RESULTS)/tables/latent-<solver>/ (captions state the NFE convention of the rows).

PYTHON ?= python
DODE_RUN ?= dode-run
RESULTS ?= results
comma := ,

# the models whose sweeps run (coco: Stable Diffusion; lsun_bedroom: the CompVis LDM) and their checkpoints
LATENT_MODELS ?= coco lsun_bedroom
LATENT_SD ?= sd-v1-5
LATENT_LDM ?= ldm-lsun-bedroom
# classifier-free guidance scale w of the SD runs (docs/latent.md); set it to the reproduced paper's
GUIDANCE ?= 7.5
# S4S's NFE columns (its published CIFAR-10 row; docs/latent.md)
LATENT_NFES ?= 4,5,6,7,8,10
# base solvers (each also runs alone: compare_base) and the learned corrections on each
LATENT_SOLVERS ?= ddim,ipndm,dpmpp2m
LATENT_LEARNED ?= dode,s4s,s4s_alt
LATENT_SEEDS ?= 0
# the metrics of the COCO samples (clip30k: the CLIP score of the same shards)
LATENT_EVALS_COCO ?= fid30k
# the SD networks in half precision on GPUs (the solver state stays float32)
LATENT_SD_DTYPE ?= float16
# SOLVER:NFE of a reference run per model (e.g. ddim:1000); empty: none
LATENT_TEACHER ?=

LATENT_RUN = $(DODE_RUN) -m results_dir=$(RESULTS) progress=false 'seeds=[$(subst $() ,$(comma),$(strip $(LATENT_SEEDS)))]'
LATENT_BASE_coco = dataset=coco checkpoint=$(LATENT_SD) checkpoint.guidance.scale=$(GUIDANCE) checkpoint.dtype=$(LATENT_SD_DTYPE)
LATENT_MODEL_coco = $(LATENT_BASE_coco) eval=$(LATENT_EVALS_COCO)
LATENT_MODEL_lsun_bedroom = dataset=lsun_bedroom checkpoint=$(LATENT_LDM)
# check-files: one job per model and metric (the files do not depend on the solver or the NFE)
LATENT_CHECK_coco = $(foreach e,$(subst $(comma), ,$(LATENT_EVALS_COCO)),'$(LATENT_BASE_coco) eval=$(e)')
LATENT_CHECK_lsun_bedroom = '$(LATENT_MODEL_lsun_bedroom)'
LATENT_CKPT_coco = $(LATENT_SD)
LATENT_CKPT_lsun_bedroom = $(LATENT_LDM)
LATENT_TEACHER_ARGS = solver=$(word 1,$(subst :, ,$(LATENT_TEACHER))) nfe=$(word 2,$(subst :, ,$(LATENT_TEACHER))) distill=none
latent_sweep = $(LATENT_RUN) $(LATENT_MODEL_$(1)) solver=$(LATENT_SOLVERS) distill=$(LATENT_LEARNED) 'nfe=[$(LATENT_NFES)]'
# the metrics rendered per model: one table per model × base solver × metric (the CLIP score is higher-is-better)
LATENT_EVALS_coco = $(subst $(comma), ,$(LATENT_EVALS_COCO))
LATENT_EVALS_lsun_bedroom = fid50k
latent_render = $(PYTHON) -m dode.report table-learned --results $(RESULTS) --dataset $(1) --checkpoint $(LATENT_CKPT_$(1)) \
	--learned-solver $(2) --metric $(3) --nfe $(LATENT_NFES) $(if $(LATENT_TEACHER),--teacher-noise $(LATENT_TEACHER)) \
	--tables $(RESULTS)/tables/latent-$(2)-$(3) --figures $(RESULTS)/figures/latent-$(2)-$(3)

.PHONY: table-latent runs-latent latent-files

latent-files:
	$(PYTHON) -m dode.report check-files $(foreach m,$(LATENT_MODELS),$(LATENT_CHECK_$(m)))

runs-latent: latent-files
	$(foreach m,$(LATENT_MODELS),$(call latent_sweep,$(m)) &&) true
ifneq ($(LATENT_TEACHER),)
	$(foreach m,$(LATENT_MODELS),$(LATENT_RUN) $(LATENT_MODEL_$(m)) $(LATENT_TEACHER_ARGS) &&) true
endif

table-latent: runs-latent
	$(foreach m,$(LATENT_MODELS),$(foreach s,$(subst $(comma), ,$(LATENT_SOLVERS)),$(foreach e,$(LATENT_EVALS_$(m)),$(call latent_render,$(m),$(s),$(e)) &&))) true
