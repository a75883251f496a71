"""The informer (list + watch into a cache) against the loopback Kubernetes
REST server: it follows changes, resumes from its resourceVersion, and after
`410 Gone` lists again and reports what it missed — deletions included."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi

from mesh.controller.informer import Informer
from tests.helpers import wait_for
from tests.kube_api import FakeKubeApi

NS = "ns"


def runtime(name: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": {"name": name, "namespace": NS}, "spec": {"multiModel": True, "replicas": replicas}}


class Gate:
    """Holds watch calls (not lists) while closed, so a test can change the
    server between two watches deterministically."""

    def __init__(self, call) -> None:
        self.call = call
        self.open = threading.Event()
        self.open.set()
        self.watch_calls = 0

    def __call__(self, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self.watch_calls += 1
            assert self.open.wait(10), "gate never opened"
        return self.call(**kwargs)


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval_s=0.1) as api:
        yield api


@pytest.fixture
def informer(kube, loop_thread):
    seen: list[tuple[str, int | None]] = []
    custom = CustomObjectsApi(kube.api_client())
    gate = Gate(functools.partial(custom.list_namespaced_custom_object, "serving.kserve.io", "v1alpha1", NS, "servingruntimes"))

    def on_change(key: str, obj: dict[str, Any] | None) -> None:
        seen.append((key, None if obj is None else obj["spec"]["replicas"]))

    informer = Informer("servingruntimes", gate, on_change, watch_timeout_s=3)

    async def start() -> None:
        informer.start(asyncio.get_running_loop())

    loop_thread.run(start())
    informer.gate, informer.seen = gate, seen  # type: ignore[attr-defined]
    yield informer
    gate.open.set()
    informer.stop(5)


def test_follows_adds_updates_and_deletes(kube, informer):
    assert informer.synced.wait(5)
    kube.apply("servingruntimes", runtime("a"))
    kube.apply("servingruntimes", runtime("a", replicas=2))
    kube.apply("servingruntimes", runtime("b"))
    kube.remove("servingruntimes", "b", NS)
    wait_for(lambda: informer.seen[-1:] == [(f"{NS}/b", None)], what="delete seen")
    assert informer.seen == [(f"{NS}/a", 1), (f"{NS}/a", 2), (f"{NS}/b", 1), (f"{NS}/b", None)]
    assert informer.keys() == [f"{NS}/a"] and informer.get(f"{NS}/a")["spec"]["replicas"] == 2


def test_a_dropped_watch_resumes_without_listing_again(kube, informer):
    assert informer.synced.wait(5)
    kube.apply("servingruntimes", runtime("a"))
    wait_for(lambda: informer.get(f"{NS}/a") is not None, what="a")
    informer.gate.open.clear()
    kube.drop_watches()
    wait_for(lambda: informer.gate.watch_calls >= 2, what="second watch call")
    kube.apply("servingruntimes", runtime("a", replicas=5))  # happens between the two watches
    informer.gate.open.set()
    wait_for(lambda: (informer.get(f"{NS}/a") or {}).get("spec", {}).get("replicas") == 5, what="missed update replayed")
    assert informer.relists == 1


def test_410_gone_lists_again_and_reports_deletions_it_missed(kube, informer):
    kube.apply("servingruntimes", runtime("kept"))
    kube.apply("servingruntimes", runtime("lost"))
    assert informer.synced.wait(5)
    wait_for(lambda: len(informer.keys()) == 2, what="both listed")
    informer.gate.open.clear()
    kube.drop_watches()
    wait_for(lambda: informer.gate.watch_calls >= 2, what="second watch call")
    kube.remove("servingruntimes", "lost", NS)
    kube.apply("servingruntimes", runtime("kept", replicas=3))
    kube.compact()  # the history the informer would resume from is gone
    informer.gate.open.set()
    wait_for(lambda: informer.relists == 2, what="re-list after 410")
    wait_for(lambda: informer.keys() == [f"{NS}/kept"], what="deletion noticed")
    assert (f"{NS}/lost", None) in informer.seen and (f"{NS}/kept", 3) in informer.seen
