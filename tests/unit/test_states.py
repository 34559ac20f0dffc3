"""The batch state table. ``db.ledger`` enforces it on every state write (``sources_of``); the
database test ``tests/db/test_claim.py::test_a_state_write_the_table_does_not_allow_is_refused``
shows the enforcement, these the table's own shape."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.states import (
    BATCH_TERMINAL,
    BATCH_TRANSITIONS,
    REMOTE_TERMINAL,
    BatchState,
    RemoteStatus,
    remote_terminal,
    sources_of,
)


def test_terminal_states_have_no_way_out() -> None:
    for state in BATCH_TERMINAL:
        assert BATCH_TRANSITIONS[state] == frozenset()


def test_every_state_can_reach_a_terminal_one() -> None:
    for start in BatchState:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in BATCH_TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & BATCH_TERMINAL, start


@given(st.sampled_from(list(BatchState)), st.sampled_from(list(BatchState)))
def test_sources_of_is_the_table_read_backwards(src: BatchState, dst: BatchState) -> None:
    assert (src in sources_of(dst)) == (dst in BATCH_TRANSITIONS[src])


def test_the_intent_state_sits_between_upload_and_submission() -> None:
    # a remote batch is recorded only from 'creating', whose intent was committed first
    assert sources_of(BatchState.SUBMITTED) == {BatchState.CREATING}
    assert sources_of(BatchState.CREATING) == {BatchState.UPLOADED}
    # and nothing leaves a terminal state
    assert not any(sources_of(dst) & BATCH_TERMINAL for dst in BatchState)


def test_remote_terminal_statuses() -> None:
    assert {s.value for s in REMOTE_TERMINAL} == {"failed", "completed", "expired", "cancelled"}
    assert remote_terminal("completed") and remote_terminal(RemoteStatus.EXPIRED)
    assert not remote_terminal("finalizing") and not remote_terminal("cancelling")
    assert not remote_terminal("some_new_status")  # unknown means still running
