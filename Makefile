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

.PHONY: run test venv venv-nt report dry-run lint clean cost

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/.installed

# Optional second reference for the kernel tests: neural-tangents (old jax) in its own venv.
.venv-nt/.installed: envs/neural_tangents.txt
	$(PYTHON) -m venv .venv-nt
	.venv-nt/bin/pip install --quiet -r envs/neural_tangents.txt
	touch $@

venv-nt: .venv-nt/.installed

run: venv
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)
	$(BIN)/snakemake --report results/report.html $(SNAKEMAKE_ARGS)

dry-run: venv
	$(BIN)/snakemake --dry-run $(SNAKEMAKE_ARGS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Planned kernel pairs and projected GPU/CPU-hours of a config (mnk.cost; no venv needed).
cost:
	PYTHONPATH=src $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m mnk.cost $(or $(CONFIG),config/config.yaml)

lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow

clean:
	rm -rf results logs .snakemake
