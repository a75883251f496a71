"""Tests for placement.instances: load-target choice and power-of-two copy picking."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.instances import InstanceState, choose_load_target, pick_copy

IDS = [f"i{i}" for i in range(8)]
ZONES = ["za", "zb", "zc"]
LABELS = ["gpu", "cpu", "big"]


@st.composite
def instance_states(draw: st.DrawFn) -> list[InstanceState]:
    ids = draw(st.lists(st.sampled_from(IDS), unique=True, max_size=len(IDS)))
    out = []
    for iid in ids:
        capacity = draw(st.integers(0, 100))
        used = draw(st.integers(0, capacity + 10))  # may overshoot (resize)
        out.append(
            InstanceState(
                instance_id=iid,
                capacity_bytes=capacity,
                used_bytes=used,
                lru_ms=draw(st.none() | st.integers(0, 50)),
                model_count=draw(st.integers(0, 5)),
                loading_count=draw(st.integers(0, 3)),
                zone=draw(st.sampled_from(ZONES)),
                labels=frozenset(draw(st.sets(st.sampled_from(LABELS)))),
                shutting_down=draw(st.booleans()),
            )
        )
    return out


def _lru_key(inst: InstanceState) -> tuple[bool, int]:
    return (inst.lru_ms is not None, inst.lru_ms or 0)


@settings(max_examples=300, deadline=None)
@given(
    instances=instance_states(),
    size=st.integers(0, 110),
    receiving=st.none() | st.sampled_from(IDS),
    exclude=st.sets(st.sampled_from(IDS), max_size=3),
    required=st.frozensets(st.sampled_from(LABELS), max_size=2),
    avoid=st.sets(st.sampled_from(ZONES), max_size=2),
    seed=st.integers(0, 2**16),
)
def test_choose_load_target_invariants(
    instances: list[InstanceState],
    size: int,
    receiving: str | None,
    exclude: set[str],
    required: frozenset[str],
    avoid: set[str],
    seed: int,
) -> None:
    result = choose_load_target(
        size,
        instances,
        receiving_id=receiving,
        exclude=exclude,
        required_labels=required,
        prefer_zones_other_than=avoid,
    )
    candidates = [
        i
        for i in instances
        if not i.shutting_down
        and i.instance_id not in exclude
        and required <= i.labels
        and i.capacity_bytes >= size
    ]
    if not candidates:
        assert result is None
        return
    assert result is not None
    chosen = next(i for i in instances if i.instance_id == result)
    assert chosen in candidates  # never excluded/shutting down/mismatched/too small

    with_room = [i for i in candidates if i.free_bytes >= size]
    receiving_state = next((i for i in with_room if i.instance_id == receiving), None)
    if receiving_state is not None:
        assert result == receiving
    elif with_room:
        assert chosen.free_bytes >= size
        preferred = [i for i in with_room if i.zone not in avoid]
        if preferred:
            assert chosen.zone not in avoid
            tier = preferred
        else:
            tier = with_room
        assert chosen.loading_count == min(i.loading_count for i in tier)
    else:
        preferred = [i for i in candidates if i.zone not in avoid]
        tier = preferred or candidates
        assert chosen in tier
        assert _lru_key(chosen) == min(_lru_key(i) for i in tier)
        if not avoid:
            assert _lru_key(chosen) == min(_lru_key(i) for i in candidates)

    # Deterministic regardless of input order (the simulator relies on this).
    shuffled = list(instances)
    random.Random(seed).shuffle(shuffled)
    again = choose_load_target(
        size,
        shuffled,
        receiving_id=receiving,
        exclude=list(exclude),
        required_labels=required,
        prefer_zones_other_than=tuple(avoid),
    )
    assert again == result


def _inst(iid: str, cap: int, used: int, lru: int | None, **kw: object) -> InstanceState:
    return InstanceState(iid, cap, used, lru, **kw)  # type: ignore[arg-type]


def test_receiving_instance_preferred_when_it_has_room() -> None:
    insts = [_inst("a", 100, 0, None), _inst("b", 100, 50, 5)]
    assert choose_load_target(40, insts, receiving_id="b") == "b"
    # Without room on the receiver, the roomiest idle instance wins.
    assert choose_load_target(60, insts, receiving_id="b") == "a"


def test_room_ties_break_on_loading_then_free_then_id() -> None:
    insts = [
        _inst("c", 100, 0, None, loading_count=1),
        _inst("b", 100, 30, 1),
        _inst("a", 100, 30, 1),
    ]
    assert choose_load_target(10, insts, receiving_id=None) == "a"
    insts.append(_inst("d", 100, 10, 1))
    assert choose_load_target(10, insts, receiving_id=None) == "d"


def test_zone_preference_among_instances_with_room() -> None:
    insts = [_inst("a", 100, 0, None, zone="z1"), _inst("b", 100, 90, 3, zone="z2")]
    assert choose_load_target(10, insts, receiving_id=None, prefer_zones_other_than={"z1"}) == "b"
    assert choose_load_target(10, insts, receiving_id=None) == "a"


def test_cluster_wide_lru_when_nobody_has_room() -> None:
    insts = [
        _inst("a", 100, 100, 50),
        _inst("b", 100, 95, 10),
        _inst("c", 100, 100, 30),
        _inst("small", 20, 0, None),  # too small in total: never a candidate
    ]
    assert choose_load_target(30, insts, receiving_id="a") == "b"
    assert choose_load_target(30, insts, receiving_id="a", exclude={"b"}) == "c"
    assert choose_load_target(30, insts, receiving_id=None, prefer_zones_other_than={""}) == "b"


def test_labels_shutdown_and_no_candidate() -> None:
    insts = [
        _inst("gpu", 100, 0, None, labels=frozenset({"gpu", "big"})),
        _inst("cpu", 100, 0, None, labels=frozenset({"cpu"})),
        _inst("gpu2", 100, 0, None, labels=frozenset({"gpu"}), shutting_down=True),
    ]
    assert choose_load_target(10, insts, receiving_id="cpu", required_labels=frozenset({"gpu"})) == "gpu"
    assert choose_load_target(10, insts, receiving_id=None, required_labels=frozenset({"tpu"})) is None
    assert choose_load_target(101, insts, receiving_id=None) is None
    assert choose_load_target(10, [], receiving_id=None) is None


def test_free_bytes_never_negative() -> None:
    assert _inst("a", 10, 15, 1).free_bytes == 0
    assert _inst("a", 10, 4, 1).free_bytes == 6


# ------------------------------------------------------------------ pick_copy


def test_pick_copy_edge_cases() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError):
        pick_copy([], rng)
    state = rng.getstate()
    assert pick_copy([("only", 99)], rng) == "only"
    assert rng.getstate() == state  # a single copy consumes no randomness


def test_pick_copy_two_copies_always_the_less_loaded() -> None:
    rng = random.Random(1)
    picks = Counter(pick_copy([("busy", 9), ("idle", 1)], rng) for _ in range(2000))
    assert picks == Counter({"idle": 2000})


def test_pick_copy_tie_is_random_not_positional() -> None:
    rng = random.Random(2)
    picks = Counter(pick_copy([("a", 3), ("b", 3), ("c", 3)], rng) for _ in range(6000))
    for name in "abc":
        assert 1700 < picks[name] < 2300, picks


def test_pick_copy_less_loaded_wins_large_majority() -> None:
    rng = random.Random(3)
    copies = [("idle", 0), ("busy1", 8), ("busy2", 8)]
    picks = Counter(pick_copy(copies, rng) for _ in range(6000))
    # idle is picked whenever it is sampled: probability 2/3 with three copies.
    assert 0.62 < picks["idle"] / 6000 < 0.71, picks
    # Ten copies with loads 0..9: E[min of two distinct] = 120/45 ~= 2.67 vs 4.5 uniform.
    ten = [(f"c{k}", k) for k in range(10)]
    loads = dict(ten)
    mean = sum(loads[pick_copy(ten, rng)] for _ in range(6000)) / 6000
    assert 2.4 < mean < 2.95, mean


@settings(max_examples=300, deadline=None)
@given(
    loads=st.lists(st.integers(0, 20), min_size=2, max_size=10),
    seed=st.integers(0, 2**32 - 1),
)
def test_pick_copy_never_picks_unique_maximum(loads: list[int], seed: int) -> None:
    copies = [(f"c{k}", load) for k, load in enumerate(loads)]
    picked = pick_copy(copies, random.Random(seed))
    assert picked in {c for c, _ in copies}
    top = max(loads)
    if loads.count(top) == 1:
        assert dict(copies)[picked] < top
