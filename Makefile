# zipper_pl: pretrain -> zip -> finetune -> evaluate.   `make help` lists targets and variables.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# ---- variables (forwarded to the config as key=value overrides) -------------------------------
SCALE        ?= demo#      tower + corpus size preset: tiny | demo | s | l
DATA         ?= embedded#  corpus: embedded | librispeech | libritts | librilight | jsonl | textfile
DATA_ROOT    ?= data#      corpus root (generated corpora are written here)
CODEC        ?= units#     audio tokenizer: units (offline k-means) | encodec (pretrained weights)
ALIGNED_FRAC ?= 0.1#       share of aligned pairs for fine-tuning, in (0, 1]
MODEL        ?= zipper#    fine-tuned model: zipper | single (the single-decoder baseline)
FREEZE       ?= text#      frozen towers when zipping: text | speech | none | both
DEVICES      ?= 1#         devices per node (a count, auto, or 0,1)
NUM_NODES    ?= 1#         nodes
ACCELERATOR  ?= auto#      auto | cpu | gpu
STRATEGY     ?= auto#      auto | ddp | fsdp
PRECISION    ?= auto#      auto (bf16-mixed on GPU, fp32 on CPU) | 32-true | bf16-mixed
MAX_STEPS    ?=#           optimizer steps (empty = the experiment file's)
SEED         ?= 0#         seed for data order, init and subsets
RUNS         ?= runs#      root of all stage folders
ARGS         ?=#           any extra key=value overrides, e.g. ARGS="train.lr=5e-4"
EXP          ?= experiments/$(strip $(SCALE))#  folder of the experiment YAML files

PY    := .venv/bin/python
STAMP := .venv/.installed
ZPL   := $(PY) -m zipper_pl
COMMON = scale=$(strip $(SCALE)) seed=$(strip $(SEED)) runs=$(strip $(RUNS)) \
  data.corpus=$(strip $(DATA)) data.root=$(strip $(DATA_ROOT)) audio.codec=$(strip $(CODEC)) \
  train.devices=$(strip $(DEVICES)) train.num_nodes=$(strip $(NUM_NODES)) \
  train.accelerator=$(strip $(ACCELERATOR)) train.strategy=$(strip $(STRATEGY)) \
  train.precision=$(strip $(PRECISION)) $(if $(strip $(MAX_STEPS)),train.max_steps=$(strip $(MAX_STEPS))) \
  $(ARGS)

.PHONY: help setup test lint format pretrain-text pretrain-speech tensorboard clean-runs

help: ## list targets and variables
	@echo "zipper_pl: make TARGET [VAR=value ...]"; echo; echo "targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'
	@echo; echo "variables (default):"
	@grep -E '^[A-Z_]+ +\?=' $(MAKEFILE_LIST) | sed -E 's/ +\?= */\t/; s/# +/\t/' | \
	  awk -F'\t' '{printf "  %-13s %-12s %s\n", $$1, ($$2==""?"(empty)":$$2), $$3}'

$(STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --upgrade --quiet pip
	.venv/bin/pip install --quiet -e ".[dev]"
	touch $@

setup: $(STAMP) ## create .venv and install the project (once)

test: $(STAMP) ## run the test suite (CPU, tiny configs)
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff check + format check
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: $(STAMP) ## ruff format + autofix
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

pretrain-text: $(STAMP) ## pretrain the text tower (next-token LM)
	$(ZPL) pretrain $(EXP)/pretrain_text.yaml $(COMMON)

pretrain-speech: $(STAMP) ## pretrain the speech-token tower
	$(ZPL) pretrain $(EXP)/pretrain_speech.yaml $(COMMON)

tensorboard: $(STAMP) ## serve TensorBoard over $(RUNS)
	.venv/bin/tensorboard --logdir $(strip $(RUNS)) --bind_all
