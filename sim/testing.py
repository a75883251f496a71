"""Small hand-made scenarios for tests and experiments (like ``numpy.testing``).

A hand-made case spells out its requests with ``sim.workload.sequence_workload``
and needs a scenario only for the pods, load times and mesh settings; this
builds one without a YAML file.
"""

from __future__ import annotations

from typing import Any

from sim.scenario import Scenario, parse_scenario

__all__ = ["tiny_scenario"]


def tiny_scenario(
    pods: int | list[int] = 1,
    *,
    load_ms: float = 10.0,
    copies: bool | dict[str, Any] = False,
    seed: int = 0,
    **sections: Any,
) -> Scenario:
    """``pods`` pods (or one pod per capacity in a list, in bytes); every model
    loads in ``load_ms`` (fixed, size-independent); copy scaling off unless
    ``copies`` (True, or a dict of copy-scaling settings).  Extra keyword arguments are merged as scenario sections, e.g.
    ``mesh={"concurrency": True}`` or ``failures=[...]``."""
    capacities = pods if isinstance(pods, list) else [1000] * pods
    copy_settings = {"enabled": True, **copies} if isinstance(copies, dict) else {"enabled": copies}
    mesh = {"copies": copy_settings, **sections.pop("mesh", {})}
    doc: dict[str, Any] = {
        "seed": seed,
        "pods": [{"count": 1, "memory": c} for c in capacities],
        "runtimes": {"_default": {"load_fixed_ms": load_ms, "bandwidth": 1 << 60}},
        "models": [{"count": 1, "size": 1}],  # unused: the workload is given
        "traffic": {"rate": 1, "duration_s": 1},
        "mesh": mesh,
        **sections,
    }
    return parse_scenario(doc, source="tiny_scenario")
