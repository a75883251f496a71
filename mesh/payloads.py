"""Payload processors: sampled copies of inference requests and responses,
handed off the request path to sinks — ModelMesh's `MM_PAYLOAD_PROCESSORS`.

Configured, as in ModelMesh, by a whitespace-separated list of URIs (setting
`payload_processors`): the scheme picks the sink, the query names the one
model to observe and the fragment the one method (empty or `*`: all):

    logger://*                                   every payload, one log line each
    logger:///*?my-model#ModelInfer              only my-model's ModelInfer payloads
    http://collector:8080/consumer/kserve/v2     POST every payload there
    http://collector:8080/v2?my-model            only my-model's

A log line (logger `mesh.payloads`, INFO, `event=payload`) carries the model
id, request id, method, kind, size and the tensors' names, datatypes and
shapes; the payload itself (base64) only with `payload_log_data`. An HTTP
sink POSTs the serialized protobuf request or response as a binary-mode
CloudEvent, the way KServe's inference logger does: `ce-id` is the request
id (request and response share it; `ce-type` tells them apart), plus
`ce-specversion`, `ce-source`, `ce-time` and the extensions `ce-modelid`,
`ce-inferenceservicename`, `ce-method` and, on responses, `ce-status`.
(ModelMesh's own http processor posts a JSON envelope instead; a consumer of
KServe's logger reads these as they are.)

Why it can never slow a request: the data plane only decides sampling and
calls `submit`, a `put_nowait` on a bounded queue per processor; a full queue
drops the payload and counts it in `mmesh_payloads_dropped_total{reason=
"queue_full"}`. Each processor's own task serializes (large messages on a
worker thread) and sends; a POST has a timeout and is never retried (a failed
one counts as `reason="send_failed"`). Payloads are recorded where a request
enters the mesh, not again on the peer it may be forwarded to. With no
processor configured the data plane holds None and pays one `is None` check.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from google.protobuf.message import Message
from prometheus_client import Counter

from mesh.errors import MeshError
from mesh.logs import current_request_id

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST, RESPONSE = "request", "response"
CE_TYPES = {REQUEST: "org.kubeflow.serving.inference.request", RESPONSE: "org.kubeflow.serving.inference.response"}
INFER_METHOD = "inference.GRPCInferenceService/ModelInfer"
POST_TIMEOUT_S = 5.0
SERIALIZE_INLINE_BYTES = 64 << 10  # larger messages are serialized on a worker thread
FAILURE_LOG_INTERVAL_S = 60.0
CLOSE_FLUSH_S = 1.0  # at shutdown, how long queued payloads may still go out


@dataclass(frozen=True, slots=True)
class Payload:
    """One request or response. `message` is the v2 protobuf message (or the
    raw bytes of a pass-through call); None on a failed response."""

    request_id: str
    model_id: str
    method: str
    kind: str  # REQUEST or RESPONSE
    message: Message | bytes | None
    name: str = ""  # the name the client used (a vModel / InferenceService name)
    status: str = ""  # responses: the gRPC status name
    at: float = field(default_factory=time.time)

    @property
    def size_bytes(self) -> int:
        if self.message is None:
            return 0
        return len(self.message) if isinstance(self.message, bytes) else self.message.ByteSize()

    async def body(self) -> bytes:
        """The serialized message; large ones off the event loop."""
        message = self.message
        if message is None:
            return b""
        if isinstance(message, bytes):
            return message
        if message.ByteSize() <= SERIALIZE_INLINE_BYTES:
            return message.SerializeToString()
        return await asyncio.to_thread(message.SerializeToString)

    def tensors(self) -> list[dict[str, object]]:
        """Name, datatype and shape of each tensor of a v2 message (inputs of
        a request, outputs of a response); empty for anything else."""
        message = self.message
        if message is None or isinstance(message, bytes):
            return []
        found = getattr(message, "inputs", None) if self.kind == REQUEST else getattr(message, "outputs", None)
        if found is None:
            return []
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in found]


@dataclass(frozen=True)
class Match:
    """ModelMesh's model-id and method filters (None = any)."""

    model_id: str | None = None
    method: str | None = None

    @classmethod
    def parse(cls, query: str, fragment: str) -> "Match":
        model_id = query.lstrip("/")
        return cls(model_id if model_id not in ("", "*") else None, fragment if fragment not in ("", "*") else None)

    def __call__(self, payload: Payload) -> bool:
        if self.model_id is not None and payload.model_id != self.model_id:
            return False
        if self.method is None:
            return True
        # "ModelInfer" or the full "inference.GRPCInferenceService/ModelInfer"
        return self.method == payload.method or self.method == payload.method.rpartition("/")[2]


class Sink(Protocol):
    name: str

    async def send(self, payload: Payload) -> None: ...

    async def close(self) -> None: ...


class LogSink:
    """`logger://`: one structured INFO line per payload."""

    name = "logger"

    def __init__(self, include_data: bool = False) -> None:
        self.include_data = include_data

    async def send(self, payload: Payload) -> None:
        tensors = payload.tensors()
        fields: dict[str, object] = {
            "event": "payload", "kind": payload.kind, "model_id": payload.model_id,
            "request_id": payload.request_id, "method": payload.method, "model_name": payload.name,
            "size_bytes": payload.size_bytes, "tensors": tensors,
        }
        if payload.status:
            fields["status"] = payload.status
        if self.include_data:
            fields["data_b64"] = base64.b64encode(await payload.body()).decode("ascii")
        shapes = ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in tensors)
        log.info(
            "%s payload of %s (request %s, %d bytes%s%s)", payload.kind, payload.model_id, payload.request_id,
            payload.size_bytes, f", {payload.status}" if payload.status else "", f": {shapes}" if shapes else "",
            extra=fields,
        )

    async def close(self) -> None:
        pass


class HttpSink:
    """`http(s)://`: POST each payload as a binary-mode CloudEvent."""

    name = "http"

    def __init__(self, url: str, source: str, timeout_s: float = POST_TIMEOUT_S) -> None:
        self.url = url
        self.source = source
        self._client = httpx.AsyncClient(timeout=timeout_s)

    def headers(self, payload: Payload) -> dict[str, str]:
        headers = {
            "content-type": "application/x-protobuf" if isinstance(payload.message, Message) else "application/octet-stream",
            "ce-specversion": "1.0",
            "ce-id": payload.request_id,
            "ce-type": CE_TYPES[payload.kind],
            "ce-source": self.source,
            "ce-time": datetime.fromtimestamp(payload.at, timezone.utc).isoformat(timespec="milliseconds"),
            "ce-modelid": payload.model_id,
            "ce-inferenceservicename": payload.name or payload.model_id,
            "ce-method": payload.method,
        }
        if payload.status:
            headers["ce-status"] = payload.status
        return headers

    async def send(self, payload: Payload) -> None:
        response = await self._client.post(self.url, content=await payload.body(), headers=self.headers(payload))
        if response.status_code >= 300:
            raise httpx.HTTPStatusError(f"{self.url} answered {response.status_code}", request=response.request, response=response)

    async def close(self) -> None:
        await self._client.aclose()


class Processor:
    """One sink behind a filter and a bounded queue, drained by its own task."""

    def __init__(self, sink: Sink, match: Match, queue_size: int, dropped: Counter) -> None:
        self.sink = sink
        self.match = match
        self._queue: asyncio.Queue[Payload] = asyncio.Queue(maxsize=max(1, queue_size))
        self._dropped = dropped
        self._task: asyncio.Task[None] | None = None
        self._last_failure_log = float("-inf")
        self.sent = 0

    def offer(self, payload: Payload) -> None:
        if not self.match(payload):
            return
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._dropped.labels(self.sink.name, "queue_full").inc()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"payloads-{self.sink.name}")

    async def close(self, flush_s: float = CLOSE_FLUSH_S) -> None:
        """Give queued payloads a moment (bounded) to go out, then stop."""
        loop = asyncio.get_running_loop()
        until = loop.time() + flush_s
        while self._task is not None and not self._queue.empty() and loop.time() < until:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.sink.close()

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self.sink.send(payload)
                self.sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no retries: a payload is dropped, not the request
                self._dropped.labels(self.sink.name, "send_failed").inc()
                now = time.monotonic()
                if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
                    self._last_failure_log = now
                    log.warning("payload processor %s failed (%s); dropping payloads until it recovers", self.sink.name, exc)


def parse_processors(spec: str, *, source: str, include_data: bool = False) -> list[tuple[Sink, Match]]:
    """Sinks and filters from ModelMesh's URI list; raises ValueError on an
    unknown scheme, so a typo fails at start rather than logging nothing."""
    parsed: list[tuple[Sink, Match]] = []
    for uri in spec.split():
        parts = urlsplit(uri)
        match = Match.parse(parts.query, parts.fragment)
        if parts.scheme == "logger":
            parsed.append((LogSink(include_data), match))
        elif parts.scheme in ("http", "https"):
            if not parts.netloc:
                raise ValueError(f"payload processor {uri!r}: no host")
            url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))  # query/fragment are filters
            parsed.append((HttpSink(url, source), match))
        else:
            raise ValueError(f"payload processor {uri!r}: scheme must be logger, http or https")
    return parsed


class PayloadProcessors:
    """Every configured processor, with one sampling decision per request."""

    def __init__(self, processors: list[Processor], sample_rate: float = 1.0, rng: Callable[[], float] = random.random) -> None:
        self.processors = processors
        self.sample_rate = sample_rate
        self._rng = rng

    @classmethod
    def build(
        cls, spec: str, *, sample_rate: float, queue_size: int, dropped: Counter, source: str, include_data: bool = False
    ) -> "PayloadProcessors | None":
        """None when nothing is configured (or nothing sampled): the data
        plane then skips payloads entirely."""
        sinks = parse_processors(spec, source=source, include_data=include_data)
        if not sinks or sample_rate <= 0:
            return None
        return cls([Processor(sink, match, queue_size, dropped) for sink, match in sinks], sample_rate)

    def start(self) -> None:
        for processor in self.processors:
            processor.start()

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.processors), return_exceptions=True)

    def sampled(self) -> bool:
        return self.sample_rate >= 1 or self._rng() < self.sample_rate

    def submit(self, payload: Payload) -> None:
        for processor in self.processors:
            processor.offer(payload)

    async def observe(
        self, model_id: str, method: str, name: str, request: Message | bytes, call: Callable[[], Awaitable[T]]
    ) -> T:
        """Run `call`; when sampled, submit its request before and its
        response (or failure status) after, both under the request's id."""
        if not self.sampled():
            return await call()
        request_id = current_request_id() or getattr(request, "id", "") or uuid.uuid4().hex
        self.submit(Payload(request_id, model_id, method, REQUEST, request, name))
        try:
            response = await call()
        except MeshError as exc:
            self.submit(Payload(request_id, model_id, method, RESPONSE, None, name, exc.code.name))
            raise
        self.submit(Payload(request_id, model_id, method, RESPONSE, response, name, "OK"))
        return response
