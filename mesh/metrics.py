"""Prometheus metrics under ModelMesh's names, so existing dashboards and
alerts keep working. Each sidecar has its own registry (tests run several in
one process). Per-model labels are off: with tens of thousands of models they
would explode the series count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mesh.errors import MeshError
from mesh.logs import log_request

MS_BUCKETS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000)
BYTES_BUCKETS = tuple(float(1 << s) for s in range(6, 36, 2))


@dataclass
class MeshMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    log_requests: bool = False  # logging: one line per external request (MM_LOG_EACH_INVOKE)

    def __post_init__(self) -> None:
        r = self.registry
        self.api_request_ms = Histogram(
            "modelmesh_api_request_milliseconds", "External requests to the mesh", ["method", "code"], buckets=MS_BUCKETS, registry=r
        )
        self.invoke_model_ms = Histogram(
            "modelmesh_invoke_model_milliseconds", "Calls from the mesh to a runtime", ["method", "code"], buckets=MS_BUCKETS, registry=r
        )
        self.cache_miss_ms = Histogram(
            "modelmesh_cache_miss_milliseconds", "Requests delayed by loading their model", buckets=MS_BUCKETS, registry=r
        )
        self.load_ms = Histogram("modelmesh_loadmodel_milliseconds", "Model load times", buckets=MS_BUCKETS, registry=r)
        self.load_failures = Counter("modelmesh_loadmodel_failure", "Failed model loads", registry=r)
        self.unload_ms = Histogram("modelmesh_unloadmodel_milliseconds", "Model unload times", buckets=MS_BUCKETS, registry=r)
        self.evictions = Counter("modelmesh_model_evicted", "Models evicted by LRU", registry=r)
        self.age_at_eviction_ms = Histogram(
            "modelmesh_age_at_eviction_milliseconds", "Time a model was loaded before eviction",
            buckets=MS_BUCKETS + (600000, 3600000), registry=r,
        )
        self.loaded_model_size = Histogram(
            "modelmesh_loaded_model_size_bytes", "Sizes of loaded models", buckets=BYTES_BUCKETS, registry=r
        )
        self.models_loaded = Gauge("modelmesh_models_loaded_total", "Models loaded on this instance", registry=r)
        self.models_managed = Gauge("modelmesh_models_managed_total", "Models registered in the mesh", registry=r)
        self.instance_capacity = Gauge("modelmesh_instance_capacity_bytes", "Model capacity of this instance", registry=r)
        self.instance_used = Gauge("modelmesh_instance_used_bytes", "Model memory in use on this instance", registry=r)
        self.waiting_for_load = Gauge(
            "mmesh_requests_waiting_for_load", "Requests waiting for their model to load here", registry=r
        )
        self.forwarded = Counter(
            "mmesh_forwarded_requests", "Requests this instance forwarded to a peer", ["result"], registry=r
        )
        self.request_size = Histogram(
            "modelmesh_request_size_bytes", "Inference request payload sizes", buckets=BYTES_BUCKETS, registry=r
        )
        self.response_size = Histogram(
            "modelmesh_response_size_bytes", "Inference response payload sizes", buckets=BYTES_BUCKETS, registry=r
        )
        # payload logging: sampled payloads a processor did not deliver (mesh/payloads.py)
        self.payloads_dropped = Counter(
            "mmesh_payloads_dropped", "Payloads not delivered to a payload processor", ["processor", "reason"], registry=r
        )

    @contextmanager
    def api_call(self, method: str) -> Iterator[None]:
        """Time one external request under `modelmesh_api_request_milliseconds`,
        labelled with the status it ended with (a MeshError's gRPC code, so a
        REST call and a gRPC call of one outcome count alike)."""
        started = time.perf_counter()
        code = "OK"
        try:
            yield
        except MeshError as exc:
            code = exc.code.name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1e3
            self.api_request_ms.labels(method, code).observe(elapsed_ms)
            if self.log_requests:
                log_request(method, code, elapsed_ms)
