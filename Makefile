# The two commands of the README: `make demo` (set up, then run the demo) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-e2e bench-reports clean mutants

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

# Many small jobs end to end against the emulator (a few minutes; figures, no assertions).
# E.g. make bench-e2e BENCH_E2E_ARGS='--jobs 200 --workers 8'
bench-e2e: $(STAMP)
	$(BIN)/python scripts/bench_e2e.py $(BENCH_E2E_ARGS)

# The reporting views on 5 million results over 90 days (a few minutes; figures, no assertions).
# E.g. make bench-reports BENCH_REPORTS_ARGS='--results 500000'
bench-reports: $(STAMP)
	$(BIN)/python scripts/bench_reports.py $(BENCH_REPORTS_ARGS)

# Each mutation of the README's promises must make a test fail (not part of `make test`;
# several minutes). E.g. make mutants MUTANTS_ARGS='--only fence-no-token --baseline'
mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
