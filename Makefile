# The two commands of the README: `make demo` (set up, then run the demo) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean mutants

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/orchestrator demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check orchestrator tests scripts migrations
	$(BIN)/ruff format --check orchestrator tests scripts migrations
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python scripts/bench_ingest.py

# Each mutation of the README's promises must make a test fail (not part of `make test`;
# several minutes). E.g. make mutants MUTANTS_ARGS='--only fence-no-token --baseline'
mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
