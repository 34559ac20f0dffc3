"""The lifecycle model (``tests/model/lifecycle.py``): a short run of random interleavings in
every ``make test``; ``make soak`` runs thousands."""

from __future__ import annotations

import os

import pytest

from tests.model import lifecycle

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "12"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", lifecycle.seeds(EXAMPLES))
def test_the_lifecycle_keeps_every_promise(seed: int, pg_server: str, template_db: str) -> None:
    outcome = lifecycle.run(seed, pg_server, template_db)
    print(f"model seed {seed}: {outcome.figures.seconds:.1f}s, {dict(outcome.figures.acts)}")
    assert not outcome.broken, outcome.explain()
