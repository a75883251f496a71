"""placement.copies: the copy-scaling decision the sidecar and the simulator share."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from placement.copies import CopyAction, CopyPolicy, decide_copy, may_act

POLICY = CopyPolicy(interval_s=5, scale_up_rps=10, scale_up_in_flight=4, copy_idle_ms=1000)


def decide(me="b", holders=("a", "b"), *, min_copies=0, uses=0, in_flight=0, last_used_ms=0, now_ms=5000):
    return decide_copy(me, list(holders), min_copies=min_copies, uses=uses, elapsed_s=5.0, in_flight=in_flight,
                       last_used_ms=last_used_ms, now_ms=now_ms, policy=POLICY)


def test_busy_copies_ask_for_another_copy_first_holder_only():
    assert decide("a", uses=50).action is CopyAction.ADD  # 10 req/s
    assert decide("b", uses=50).action is CopyAction.KEEP  # not the first holder
    assert decide("a", in_flight=4).action is CopyAction.ADD
    assert decide("a", uses=49, in_flight=3).action is CopyAction.KEEP


def test_idle_extra_copies_are_dropped_by_the_last_holder_only():
    assert decide("b").action is CopyAction.DROP
    assert decide("a").action is CopyAction.KEEP
    assert decide("b", last_used_ms=4500).action is CopyAction.KEEP  # used 0.5 s ago
    assert decide("b", holders=("b",)).action is CopyAction.KEEP  # never the last copy
    assert decide("b", holders=("a", "b"), min_copies=2).action is CopyAction.KEEP


def test_copies_min_copies_needs_are_pinned():
    assert decide("b", min_copies=2).pin and decide("b", min_copies=3).pin
    assert not decide("b", min_copies=1).pin


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.integers(0, 3), st.integers(0, 100), st.integers(0, 8), st.integers(0, 10_000),
       st.integers(0, 3))
def test_may_act_is_false_only_when_the_answer_is_keep_unpinned(n_holders, min_copies, uses, in_flight, last_used, me):
    holders = [f"pod-{k}" for k in range(n_holders)]
    mine = holders[min(me, n_holders - 1)]
    decision = decide_copy(mine, holders, min_copies=min_copies, uses=uses, elapsed_s=5.0, in_flight=in_flight,
                           last_used_ms=last_used, now_ms=10_000, policy=POLICY)
    if not may_act(n_holders, min_copies=min_copies, uses=uses, elapsed_s=5.0, in_flight=in_flight, policy=POLICY):
        assert decision.action is CopyAction.KEEP and not decision.pin
