"""Reads started ahead: taken once, bounded in number and age, and a failed one is just absent."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from orchestrator import prefetch
from orchestrator.prefetch import Prefetch


@pytest.fixture
def ahead() -> Iterator[Prefetch]:
    p = Prefetch()
    yield p
    p.close()


def test_a_read_is_taken_once_and_waited_for_while_under_way(ahead: Prefetch) -> None:
    release = threading.Event()
    ahead.start("k", lambda: (release.wait(5), [1, 2, 3])[1])
    threading.Timer(0.05, release.set).start()
    assert ahead.take("k") == [1, 2, 3]  # waited for
    assert ahead.take("k") is None  # once
    assert ahead.take("other") is None
    assert ahead.hits == 1


def test_a_failed_read_is_absent_and_the_step_reads_for_itself(ahead: Prefetch) -> None:
    def broken() -> None:
        raise OSError("connection refused")

    ahead.start("k", broken)
    assert ahead.take("k") is None
    assert ahead.hits == 0


def test_at_most_a_few_reads_are_kept_and_none_for_long(
    ahead: Prefetch, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(prefetch.time, "monotonic", lambda: now[0])
    for key in ("a", "b", "c"):  # another daemon uploaded "a": it goes when a third comes
        ahead.start(key, lambda key=key: key)
    assert len(ahead) == prefetch.MAX_ENTRIES == 2
    assert ahead.take("a") is None and ahead.take("c") == "c"
    now[0] += prefetch.MAX_AGE_SECONDS + 1
    ahead.start("d", lambda: "d")  # "b" is too old by now
    assert ahead.take("b") is None and ahead.take("d") == "d"
    assert len(ahead) == 0
