# Two commands for a newcomer: `make run` (the study) and `make test` (the test suite).
# Both create the local virtual environment .venv from requirements.txt when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE_ARGS ?=
# Offline machines: use the Omniglot mirror beside the checkout when there is one.
ifeq ($(origin OMNIGLOT_MIRROR), undefined)
ifneq ($(wildcard ../shared/omniglot/MD5SUMS),)
export OMNIGLOT_MIRROR := $(abspath ../shared/omniglot)
endif
endif

.PHONY: run test venv venv-nt report dry-run lint clean cost verify readme-tables

# torch comes first, as one explicit build: the CPU one by default (no CUDA libraries), from a
# local wheel when pip finds one offline (find-links), else from the PyTorch index of that build.
# GPU machines: `make venv CUDA=12` (torch +cu126 and CuPy for CUDA 12, drivers >= 525) or
# `make venv CUDA=13` (+cu130, drivers >= 580); rm -rf .venv first to switch. docs/routes.md.
CUDA ?=
TORCH_VERSION := 2.13.0
TORCH_BUILD := $(if $(filter 12,$(CUDA)),cu126,$(if $(filter 13,$(CUDA)),cu130,cpu))
TORCH_INDEX ?= https://download.pytorch.org/whl/$(TORCH_BUILD)
TORCH_SPEC := torch==$(TORCH_VERSION)+$(TORCH_BUILD)

$(BIN)/.installed: requirements.txt pyproject.toml $(if $(CUDA),requirements-cuda$(CUDA).txt)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps --no-index "$(TORCH_SPEC)" 2>/dev/null \
	  || $(BIN)/pip install --quiet --no-deps --index-url $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -r requirements.txt $(if $(CUDA),-r requirements-cuda$(CUDA).txt)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

# Optional second reference for the kernel tests: neural-tangents (old jax) in its own venv.
.venv-nt/.installed: envs/neural_tangents.txt
	$(PYTHON) -m venv .venv-nt
	.venv-nt/bin/pip install --quiet -r envs/neural_tangents.txt
	touch $@

venv-nt: .venv-nt/.installed

# CONFIG=config/<name>.yaml runs another study (merged into config/config.yaml, as --configfile).
run: venv
	$(BIN)/snakemake --cores $(CORES) $(if $(CONFIG),--configfile $(CONFIG)) $(SNAKEMAKE_ARGS)
	$(BIN)/snakemake --report results/report.html $(if $(CONFIG),--configfile $(CONFIG)) $(SNAKEMAKE_ARGS)

# Reproduction check: the tiny config in a scratch copy (.verify/), its per-task accuracies
# against the committed reference, to the bit (docs/reproducibility.md).
VERIFY_REFERENCE := docs/results/tiny_per_task.csv
verify: venv
	rm -rf .verify && mkdir .verify
	cp -r workflow scripts src config envs profiles .verify/
	cp config/test.yaml .verify/config/config.yaml
	cd .verify && $(abspath $(BIN))/snakemake --cores $(CORES) --quiet rules
	PYTHONPATH=src $(BIN)/python -m mnk.study.verify per-task .verify/results/per_task.csv $(VERIFY_REFERENCE)

# The README's results table, generated from the committed docs/results/default_summary.csv.
readme-tables: venv
	PYTHONPATH=src $(BIN)/python -m mnk.study.verify readme README.md --sinusoid docs/results/sinusoid_summary.csv --write

dry-run: venv
	$(BIN)/snakemake --dry-run $(SNAKEMAKE_ARGS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Planned kernel pairs and projected GPU/CPU-hours of a config (mnk.study.cost; no venv needed).
cost:
	PYTHONPATH=src $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m mnk.study.cost $(or $(CONFIG),config/config.yaml)

lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow

clean:
	rm -rf results logs .snakemake .verify
