from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.states import (
    BATCH_TERMINAL,
    BATCH_TRANSITIONS,
    REMOTE_TERMINAL,
    BatchState,
    RemoteStatus,
    can_move,
    remote_terminal,
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
def test_can_move_follows_the_table(src: BatchState, dst: BatchState) -> None:
    assert can_move(src, dst) == (dst in BATCH_TRANSITIONS[src])


def test_the_intent_state_sits_between_upload_and_submission() -> None:
    assert can_move(BatchState.UPLOADED, BatchState.CREATING)
    assert can_move(BatchState.CREATING, BatchState.SUBMITTED)
    assert not can_move(BatchState.UPLOADED, BatchState.SUBMITTED)


def test_remote_terminal_statuses() -> None:
    assert {s.value for s in REMOTE_TERMINAL} == {"failed", "completed", "expired", "cancelled"}
    assert remote_terminal("completed") and remote_terminal(RemoteStatus.EXPIRED)
    assert not remote_terminal("finalizing") and not remote_terminal("cancelling")
    assert not remote_terminal("some_new_status")  # unknown means still running
