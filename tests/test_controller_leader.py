"""Lease election rounds against the loopback Kubernetes API: one holder at a
time, takeover only after expiry, exactly one winner of a race."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes.client import CoordinationV1Api

from mesh.controller.leader import LeaseElector
from tests.kube_api import FakeKubeApi

NS = "ns"


@pytest.fixture
def api():
    with FakeKubeApi() as kube:
        yield kube, CoordinationV1Api(kube.api_client())


def elector(coordination, identity: str, lease_s: int = 15) -> LeaseElector:
    return LeaseElector(coordination, NS, "lock", identity, lease_s=lease_s)


def test_a_held_lease_is_not_taken_until_it_expires(api):
    kube, coordination = api
    a, b = elector(coordination, "a", lease_s=1), elector(coordination, "b", lease_s=1)
    assert a.try_acquire_or_renew() and a.try_acquire_or_renew()  # acquire, renew
    assert not b.try_acquire_or_renew() and b.observed_holder == "a"
    time.sleep(1.2)  # a stops renewing: its lease runs out
    assert b.try_acquire_or_renew()
    assert kube.get("leases", "lock", NS)["spec"]["holderIdentity"] == "b"
    assert not a.try_acquire_or_renew() and a.observed_holder == "b"


def test_release_lets_the_next_candidate_in_at_once(api):
    _, coordination = api
    a, b = elector(coordination, "a"), elector(coordination, "b")
    assert a.try_acquire_or_renew()
    b.release()  # not the holder: changes nothing
    assert not b.try_acquire_or_renew()
    a.release()
    assert b.try_acquire_or_renew()


def test_of_candidates_racing_for_a_free_lease_exactly_one_wins(api):
    kube, coordination = api
    for round_no in range(5):
        candidates = [elector(coordination, f"c{round_no}-{i}") for i in range(6)]
        start = threading.Barrier(len(candidates))
        won: list[str] = []

        def campaign(candidate: LeaseElector) -> None:
            start.wait(5)
            if candidate.try_acquire_or_renew():
                won.append(candidate.identity)

        threads = [threading.Thread(target=campaign, args=(c,)) for c in candidates]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(won) == 1, won
        assert kube.get("leases", "lock", NS)["spec"]["holderIdentity"] == won[0]
        next(c for c in candidates if c.identity == won[0]).release()
