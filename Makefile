# zipper_pl: pretrain -> zip -> finetune -> evaluate.   `make help` lists targets and variables.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# ---- variables ------------------------------------------------------------------------------
# Empty ones take the experiment file's value; set ones are forwarded as key=value overrides.
SCALE        ?= demo#      tower + corpus size preset: tiny | demo | s | l
DATA         ?=#           corpus: embedded | librispeech | libritts | librilight | jsonl | lhotse (CutSets, Shar) | hf | textfile
DATA_ROOT    ?=#           corpus root (generated corpora are written under it)
CODEC        ?=#           audio tokenizer: units (offline k-means) | encodec (pretrained weights) | hubert (HuBERT-layer k-means)
ALIGNED_FRAC ?=#           share of aligned pairs for fine-tuning, in (0, 1]
MODEL        ?=#           fine-tuned model: zipper | single (the single-decoder baseline)
FREEZE       ?=#           frozen towers when zipping: text | speech | none | both
DEVICES      ?=#           devices per node (a count, auto, or 0,1)
NUM_NODES    ?=#           nodes
ACCELERATOR  ?=#           auto | cpu | gpu
STRATEGY     ?=#           auto | ddp | fsdp
PRECISION    ?=#           auto (bf16-mixed on GPU, fp32 on CPU) | 32-true | bf16-mixed
MAX_STEPS    ?=#           optimizer steps (every stage)
FT_STEPS     ?=#           optimizer steps of the fine-tuning stages only (zip, finetune, evaluate, ablation)
DEMO_FT_STEPS ?= 500#      FT_STEPS of `make demo` (keeps the whole chain within ~30 min on 2 CPU cores)
DEMO_JOBS    ?= 2#          stages `make demo` runs side by side, on nproc / DEMO_JOBS torch threads each (2 cores: 1.2x the work of one stage on both); 1 = one at a time
SEED         ?=#           seed for data order, init and subsets
RUNS         ?= runs#      root of all stage folders
ARGS         ?=#           extra key=value overrides of every stage the command runs, towers included
FT_ARGS      ?=#           extra key=value overrides of the fine-tuning stages only, e.g. FT_ARGS="train.lr=5e-4"
TASK         ?= asr#       `make zip` task (asr | tts | asr_phonemes: speech -> [phonemes, text]); reads EXP/zip_TASK.yaml
TOWERS       ?=#           `make zip` towers, comma-separated modalities, e.g. text,speech,phonemes; empty = the file's zip.towers
OUT          ?=#           `make export-lhotse` output folder for the CutSet files
SHARD        ?=#           `make data` as process i of n: i/n (e.g. 0/4 ... 3/4, run side by side); each tokenizes every n-th store shard, the last to finish merges
VOCODER      ?=#           a finished vocoder stage folder to voice speech with (evaluate); empty = the chain's
TEXT_TOWER   ?=#           the text tower to zip: a finished stage folder, or hf:<hub id or folder> (a Llama/Mistral/Qwen2 causal LM)
SPEECH_TOWER ?=#           a finished speech-tower stage folder to zip (e.g. pretrained on LibriLight)
EXP          ?= experiments/$(strip $(SCALE))#  folder of the experiment YAML files
STUDY        ?= ablation#   the study `make ablation` runs: EXP/<STUDY>.yaml (ablation: aligned data, Fig. 3; design: the design ablations) or a YAML file's path
STUDY_JOBS   ?= 1#         `make ablation` shards side by side, on nproc / STUDY_JOBS torch threads each (each takes its own share of stages first, then any stage no other shard holds)
ABLATION_FRACS ?=#         `make ablation` aligned fractions (the file's: 0.01 0.03 0.1 0.3 1.0 at demo scale)
ABLATION_SEEDS ?=#         `make ablation` seeds, each with towers pretrained with it (demo: 0 1 2)
ABLATION_FREEZE ?=#        `make ablation` Zipper FREEZE values of the TTS cells (demo: text both; text = speech tower trained)
ABLATION_LRS ?=#           `make ablation` lr grid per system, selected on validation (demo: 5e-4 1e-3 2e-3 4e-3)
ABLATION_TTS ?=#           false: `make ablation` runs ASR cells only (no judge)
ABLATION_QUICK_FRACS ?= 0.01 0.1 1.0#  `make ablation-quick`: these fractions, seeds 0 1, ASR only, ABLATION_QUICK_LRS
ABLATION_QUICK_LRS ?=#     `make ablation-quick`'s lr for both systems; empty: 2e-3 at SCALE=demo (its grid's ASR choice for each: quick cells are the full study's), else [] = the file's train.lr / single_lr
TB_BIND_ALL  ?=#           1: `make tensorboard` listens on every interface (no authentication: anyone who can reach the port reads every run)
BENCH_ARGS   ?=#           `make bench` flags: --quick, --sizes demo,s, --threads N, --compile
TEST_JOBS    ?= 2#          pytest-xdist processes of `make test` / `test-fast` (one per core here: the suite alone keeps 1.1 cores busy); 1 = one process

fwd = $(if $(strip $($(1))),$(2)=$(strip $($(1))))
COMMON = runs=$(strip $(RUNS)) $(call fwd,SEED,seed) $(call fwd,DATA,data.corpus) \
  $(call fwd,DATA_ROOT,data.root) $(call fwd,CODEC,audio.codec) $(call fwd,DEVICES,train.devices) \
  $(call fwd,NUM_NODES,train.num_nodes) $(call fwd,ACCELERATOR,train.accelerator) \
  $(call fwd,STRATEGY,train.strategy) $(call fwd,PRECISION,train.precision) \
  $(call fwd,MAX_STEPS,train.max_steps) $(call fwd,TEXT_TOWER,inputs.text) \
  $(call fwd,SPEECH_TOWER,inputs.speech) $(ARGS)
# a stage beside others (`make demo`'s lanes): its share of the cores and no progress bar
LANE = $(if $(strip $(LANE_THREADS)),train.threads=$(strip $(LANE_THREADS)) train.progress_bar=false)
ZIPVARS = $(call fwd,MODEL,arch) $(call fwd,FREEZE,zip.freeze) $(call fwd,ALIGNED_FRAC,data.aligned_frac) \
  $(call fwd,FT_STEPS,train.max_steps) $(FT_ARGS)

PY    := .venv/bin/python
STAMP := .venv/.installed
ZPL   := $(PY) -m zipper_pl

# ---- stage folders: computed once per make run by the same code that names them -----------
# (only once the venv exists; the chain targets re-enter make after `setup` for that reason)
ifneq ($(wildcard $(STAMP)),)
ifneq ($(MAKELEVEL),0)
PATHS := $(shell $(ZPL) paths $(EXP) --zip-task=$(strip $(TASK)) --zip-towers=$(strip $(TOWERS)) \
  $(COMMON) $(call fwd,VOCODER,inputs.vocoder) -- $(ZIPVARS) 2>/dev/null)
path_of = $(patsubst $(1)=%,%,$(filter $(1)=%,$(PATHS)))
comma := ,
# one tower per modality with a pretrain_<modality>.yaml in EXP: DIR_<m> (folder), DONE_<m>
MODALITY_NAMES := $(subst $(comma), ,$(call path_of,MODALITIES))
$(foreach m,$(MODALITY_NAMES),$(eval DIR_$(m) := $(call path_of,DIR_$(m)))$(eval DONE_$(m) := $(call path_of,DONE_$(m))))
TEXT_DIR       := $(DIR_text)
SPEECH_DIR     := $(DIR_speech)
TEXT_DONE      := $(DONE_text)
SPEECH_DONE    := $(DONE_speech)
ZIP_DIR        := $(call path_of,ZIP_DIR)
ZIP_DONE       := $(subst $(comma), ,$(call path_of,ZIP_DONE))
ZIP_INPUTS     := $(subst $(comma), ,$(call path_of,ZIP_INPUTS))
ZIPPER_ASR_DIR := $(call path_of,ZIPPER_ASR_DIR)
ZIPPER_TTS_DIR := $(call path_of,ZIPPER_TTS_DIR)
SINGLE_ASR_DIR := $(call path_of,SINGLE_ASR_DIR)
SINGLE_TTS_DIR := $(call path_of,SINGLE_TTS_DIR)
JUDGE_DIR      := $(call path_of,JUDGE_DIR)
VOCODER_DIR    := $(or $(strip $(VOCODER)),$(call path_of,VOCODER_DIR))
VOCODER_DONE    = $(if $(VOCODER_DIR),$(VOCODER_DIR)/$(W))
EVAL_DIR       := $(call path_of,EVAL_DIR)
endif
endif
W := model.safetensors
ASR_DIR = $(if $(filter single,$(strip $(MODEL))),$(SINGLE_ASR_DIR),$(ZIPPER_ASR_DIR))
TTS_DIR = $(if $(filter single,$(strip $(MODEL))),$(SINGLE_TTS_DIR),$(ZIPPER_TTS_DIR))

.PHONY: help setup lock test test-fast lint format data export-lhotse zip zip-asr zip-tts finetune judge vocoder evaluate demo ablation \
  bench tensorboard clean-runs _check-paths ablation-quick

help: ## list targets and variables
	@echo "zipper_pl: make TARGET [VAR=value ...]"; echo; echo "targets:"
	@grep -E '^[a-z%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/; s/%/<modality>/' | awk -F'\t' '{printf "  %-20s %s\n", $$1, $$2}'
	@echo; echo "variables (default):"
	@grep -E '^[A-Z_]+ +\?=' $(MAKEFILE_LIST) | sed -E 's/ +\?= */\t/; s/# +/\t/' | \
	  awk -F'\t' '{printf "  %-20s %-22s %s\n", $$1, ($$2==""?"(experiment file)":$$2), $$3}'

# requirements.lock: every version and hash `make setup` installs (CPython 3.11, Linux x86_64;
# PyPI's Linux torch wheels are its CUDA builds, so CPU and GPU machines install the same files)
LOCK := requirements.lock
LOCKED_PY := import sys, platform; sys.exit(not (sys.version_info[:2] == (3, 11) and sys.platform == "linux" and platform.machine() == "x86_64"))
$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	@if .venv/bin/python -c '$(LOCKED_PY)'; then \
	  echo ".venv: installing $(LOCK) (exact versions, hash-checked)"; \
	  .venv/bin/pip install --quiet --require-hashes -r $(LOCK) && \
	  .venv/bin/pip install --quiet --no-deps --no-build-isolation -e .; \
	else \
	  echo ".venv: $(LOCK) is for CPython 3.11 on Linux x86_64; this is not it: resolving pyproject.toml's ranges today (not reproducible; 'make lock' pins them for this machine)"; \
	  .venv/bin/pip install --quiet -e ".[dev]"; \
	fi
	touch $@

lock: ## regenerate requirements.lock from pyproject.toml (exact versions + hashes, via uv)
	@test -x .venv/bin/uv || .venv/bin/pip install --quiet uv
	.venv/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple -o $(LOCK)

setup: $(STAMP) ## create .venv and install the project (once)

# a test file's tests stay on one worker (--dist loadfile), so a module's fixtures are built once
XDIST = $(if $(filter-out 0 1,$(strip $(TEST_JOBS))),-n $(strip $(TEST_JOBS)) --dist loadfile)
test: $(STAMP) ## run the test suite (CPU, tiny configs, ~6 min on 2 cores; TEST_JOBS workers)
	$(PY) -m pytest $(XDIST)

test-fast: $(STAMP) ## the edit loop: every test not marked slow (no stages, processes or make; ~1 min)
	$(PY) -m pytest $(XDIST) -m "not slow"

lint: $(STAMP) ## ruff check + format check
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: $(STAMP) ## ruff format + autofix
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

# Each public target re-enters make once the venv exists, so stage paths can be computed.
_check-paths:
	@test -n "$(TEXT_DIR)" || { $(ZPL) paths $(EXP) $(COMMON) $(call fwd,VOCODER,inputs.vocoder) -- $(ZIPVARS); exit 2; }

data: $(STAMP) ## prepare corpus, tokenizers and token caches (DATA, DATA_ROOT, CODEC)
	$(ZPL) data $(EXP)/pretrain_speech.yaml $(COMMON) $(if $(strip $(SHARD)),--shard $(strip $(SHARD)))
export-lhotse: $(STAMP) ## the corpus (DATA, DATA_ROOT) as lhotse CutSets: OUT=<folder>/<pool>.jsonl.gz
	$(ZPL) export-lhotse $(EXP)/pretrain_speech.yaml $(COMMON) out=$(OUT)

pretrain-%: $(STAMP) ## pretrain one tower: pretrain-text, pretrain-speech, pretrain-phonemes (EXP/pretrain_<m>.yaml)
	@$(MAKE) --no-print-directory _check-paths _pretrain-$*
zip: $(STAMP) ## zip TOWERS (default: EXP/zip_TASK.yaml's) and fine-tune on TASK, e.g. TASK=asr_phonemes
	@$(MAKE) --no-print-directory _check-paths _zip
zip-asr: $(STAMP) ## zip the towers, fine-tune on ASR pairs (MODEL=single: the baseline)
	@$(MAKE) --no-print-directory _check-paths _zip-asr
zip-tts: $(STAMP) ## zip the towers, fine-tune on TTS pairs (MODEL=single: the baseline)
	@$(MAKE) --no-print-directory _check-paths _zip-tts
judge: $(STAMP) ## train the judge ASR that scores TTS output
	@$(MAKE) --no-print-directory _check-paths _judge
vocoder: $(STAMP) ## train the unit vocoder of the codec (speech tokens -> audio; EXP/vocoder.yaml)
	@$(MAKE) --no-print-directory _check-paths _vocoder
evaluate: $(STAMP) ## Zipper vs Single Decoder: ASR/TTS WER (TTS from audio), text retention, listen.html
	@$(MAKE) --no-print-directory _check-paths _evaluate
finetune: $(STAMP) ## continue a zipped stage: INIT=<stage folder> (e.g. ARGS="data.task=mix")
	$(ZPL) finetune $(EXP)/zip_asr.yaml $(COMMON) $(ZIPVARS) inputs.init=$(INIT)

.PHONY: _zip _zip-asr _zip-tts _judge _vocoder _evaluate
.SECONDEXPANSION:
_pretrain-%: $$(DONE_$$*)
	@test -n "$(DONE_$*)" || { echo "error: no tower '$*': EXP=$(EXP) has no pretrain_$*.yaml" \
	  "(modalities with one: $(MODALITY_NAMES))" >&2; exit 2; }
_zip: $(ZIP_DIR)/$(W)
_zip-asr: $(ASR_DIR)/$(W)
_zip-tts: $(TTS_DIR)/$(W)
_judge: $(JUDGE_DIR)/$(W)
_vocoder: $(VOCODER_DONE)
	@test -n "$(VOCODER_DONE)" || echo "CODEC=$(CODEC) decodes audio itself (or eval.tts_asr=none): no vocoder needed"
_evaluate: $(EVAL_DIR)/results.json
	@cat $(EVAL_DIR)/results.md

ifneq ($(TEXT_DIR),)
define pretrain_rule
$(DIR_$(1))/$(W):
	$(ZPL) pretrain $(EXP)/pretrain_$(1).yaml $(LANE) $(COMMON) out=$(DIR_$(1))
endef
$(foreach m,$(MODALITY_NAMES),$(eval $(call pretrain_rule,$(m))))
# (a `make zip` stage that is one of the chain's, e.g. TASK=asr, keeps the chain's rule)
ifeq ($(filter $(ZIP_DIR),$(ZIPPER_ASR_DIR) $(ZIPPER_TTS_DIR) $(SINGLE_ASR_DIR) $(SINGLE_TTS_DIR)),)
$(ZIP_DIR)/$(W): $(ZIP_DONE)
	$(ZPL) zip $(EXP)/zip_$(strip $(TASK)).yaml $(LANE) $(COMMON) $(ZIPVARS) data.task=$(strip $(TASK)) \
	  $(if $(strip $(TOWERS)),zip.towers=[$(strip $(TOWERS))]) out=$(@D) $(ZIP_INPUTS)
endif
$(ZIPPER_ASR_DIR)/$(W) $(SINGLE_ASR_DIR)/$(W): $(TEXT_DONE) $(SPEECH_DONE)
	$(ZPL) zip $(EXP)/zip_asr.yaml $(LANE) $(COMMON) $(ZIPVARS) out=$(@D) \
	  arch=$(if $(findstring /single-,$@),single,zipper) inputs.text=$(TEXT_DIR) inputs.speech=$(SPEECH_DIR)
# the vocoder first (order only): a TTS stage beside it puts spoken validation samples in TensorBoard
$(ZIPPER_TTS_DIR)/$(W) $(SINGLE_TTS_DIR)/$(W): $(TEXT_DONE) $(SPEECH_DONE) | $(VOCODER_DONE)
	$(ZPL) zip $(EXP)/zip_tts.yaml $(LANE) $(COMMON) $(ZIPVARS) out=$(@D) \
	  arch=$(if $(findstring /single-,$@),single,zipper) inputs.text=$(TEXT_DIR) inputs.speech=$(SPEECH_DIR)
$(JUDGE_DIR)/$(W): $(SPEECH_DONE)
	$(ZPL) judge $(EXP)/judge.yaml $(LANE) $(COMMON) out=$(JUDGE_DIR) inputs.speech=$(SPEECH_DIR) inputs.text=$(TEXT_DIR)
ifeq ($(strip $(VOCODER))$(if $(VOCODER_DIR),,none),)
$(VOCODER_DIR)/$(W):
	$(ZPL) vocoder $(EXP)/vocoder.yaml $(LANE) $(COMMON) out=$(VOCODER_DIR)
endif
# `make -j2` (the demo's lanes) starts prerequisites in this order, except that a target whose
# order-only prerequisite (the TTS stages' vocoder) was running when make first saw it comes
# later than its place. The vocoder first: it needs no tower but is the longest stage, so it
# trains on one lane while the other runs the towers. Measured with GNU make itself on the demo's
# fits (benchmarks/demo_lanes.py): this order ends the lanes at ~705 s; the one before (the
# single decoder's ASR ahead of the judge) ~749 s; the Zipper TTS right after the Zipper ASR,
# 783 s (make then starts it last, alone: a demo of 14 min 33 s).
$(EVAL_DIR)/results.json: $(VOCODER_DONE) $(ZIPPER_ASR_DIR)/$(W) $(JUDGE_DIR)/$(W) \
  $(SINGLE_ASR_DIR)/$(W) $(ZIPPER_TTS_DIR)/$(W) $(SINGLE_TTS_DIR)/$(W)
	$(ZPL) evaluate $(EXP)/evaluate.yaml $(COMMON) $(ZIPVARS) out=$(EVAL_DIR) \
	  inputs.text=$(TEXT_DIR) inputs.speech=$(SPEECH_DIR) inputs.judge=$(JUDGE_DIR) \
	  $(if $(VOCODER_DIR),inputs.vocoder=$(VOCODER_DIR))
endif

# the corpus and token caches first (one process builds them), then DEMO_JOBS stages at a time
DEMO_LANE_THREADS = $(if $(filter-out 0 1,$(strip $(DEMO_JOBS))),$(shell n=$$(nproc 2>/dev/null || echo 1); \
  t=$$((n / $(strip $(DEMO_JOBS)))); echo $$((t > 0 ? t : 1))))
demo: $(STAMP) ## the whole chain on the embedded corpus at SCALE=demo, ending with the results table
	@$(MAKE) --no-print-directory data SCALE=demo
	@$(if $(DEMO_LANE_THREADS),echo "[demo] $(strip $(DEMO_JOBS)) stages side by side on $(DEMO_LANE_THREADS) torch thread(s) each; progress bars off (DEMO_JOBS=1: one at a time)")
	@$(MAKE) --no-print-directory -j$(or $(strip $(DEMO_JOBS)),1) evaluate SCALE=demo \
	  FT_STEPS=$(or $(strip $(FT_STEPS)),$(strip $(DEMO_FT_STEPS))) LANE_THREADS=$(DEMO_LANE_THREADS)

ablation: $(STAMP) ## a study (STUDY; default the paper's Fig. 3, EXP/ablation.yaml): cells, seeds, lr grid, tests
	@$(MAKE) --no-print-directory _check-paths _ablation

# straight to _ablation: each make level computes the stage paths again (~11 s on 2 cores)
ablation-quick: $(STAMP) ## the study cut to ABLATION_QUICK_FRACS x seeds 0 1, ASR only, at ABLATION_QUICK_LRS (23 min with STUDY_JOBS=2 on a 2-core AMX Xeon)
	@$(MAKE) --no-print-directory _check-paths _ablation ABLATION_FRACS="$(ABLATION_QUICK_FRACS)" ABLATION_SEEDS="0 1" ABLATION_TTS=false \
	  ABLATION_LRS="$(QUICK_LRS)"

QUICK_LRS = $(or $(strip $(ABLATION_QUICK_LRS)),$(if $(filter demo,$(strip $(SCALE))),2e-3,[]))
qfwd = $(if $(strip $($(1))),"$(2)=$(strip $($(1)))")
NO_TTS = $(filter false,$(strip $(ABLATION_TTS)))
STUDY_FILE = $(if $(findstring /,$(STUDY))$(filter %.yaml,$(STUDY)),$(STUDY),$(EXP)/$(strip $(STUDY)).yaml)
.PHONY: _ablation
STUDY_LANES = $(filter-out 0 1,$(strip $(STUDY_JOBS)))
STUDY_CMD = $(ZPL) ablation $(STUDY_FILE) $(COMMON) $(call fwd,FT_STEPS,train.max_steps) $(FT_ARGS) \
	  $(call qfwd,ABLATION_FRACS,ablation.fracs) $(call qfwd,ABLATION_SEEDS,ablation.seeds) \
	  $(call qfwd,ABLATION_FREEZE,ablation.freeze) $(call qfwd,ABLATION_LRS,ablation.lrs) \
	  $(call fwd,ABLATION_TTS,ablation.tts) inputs.text=$(TEXT_DIR) inputs.speech=$(SPEECH_DIR) \
	  $(if $(NO_TTS),,inputs.judge=$(JUDGE_DIR))
_ablation: $(TEXT_DONE) $(SPEECH_DONE) $(if $(NO_TTS),,$(JUDGE_DIR)/$(W))
ifeq ($(STUDY_LANES),)
	$(STUDY_CMD)
else
	scripts/study_shards.sh $(STUDY_LANES) $(STUDY_CMD)
endif

bench: $(STAMP) ## benchmarks: matmul roofline, training, generation, tokenization, data loading
	$(PY) -m benchmarks $(BENCH_ARGS)

tensorboard: $(STAMP) ## serve TensorBoard over $(RUNS) on localhost (TB_BIND_ALL=1: every interface)
	.venv/bin/tensorboard --logdir $(strip $(RUNS)) $(if $(filter 1,$(TB_BIND_ALL)),--bind_all,--host 127.0.0.1)

clean-runs: ## delete $(RUNS) (stage folders; the data caches stay)
	rm -rf $(strip $(RUNS))
