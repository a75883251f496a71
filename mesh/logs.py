"""Structured logging: text for people, JSON lines for log pipelines, and
the request context every line carries.

Why context variables: a request's model, instance and request id are known
in the front end, but the lines that matter (a load, an eviction, a failed
forward) are written deep in the loader and router, often from tasks the
request started. asyncio copies the context into every task it creates, so
fields set once per request reach all of them without threading ids through
every call. A field given explicitly with ``extra=`` wins over the context.

Lines with an ``event`` field are the machine-readable ones: ``load``,
``load_failed``, ``unload``, ``evict`` (with ``size_bytes`` and
``duration_ms``), ``request`` (with ``MM_LOG_EACH_INVOKE``), ``drain_*`` and
``payload``.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, Literal

REQUEST_ID_HEADER = "x-request-id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

LogFormat = Literal["text", "json"]

request_id_var: ContextVar[str | None] = ContextVar("mmesh_request_id", default=None)
model_id_var: ContextVar[str | None] = ContextVar("mmesh_model_id", default=None)
instance_id_var: ContextVar[str | None] = ContextVar("mmesh_instance_id", default=None)

_CONTEXT = (("request_id", request_id_var), ("model_id", model_id_var), ("instance_id", instance_id_var))
# attributes every LogRecord has: anything else on a record came from `extra=`
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def bind_instance(instance_id: str) -> None:
    """Tag everything this task (and the tasks it starts) logs with the instance."""
    instance_id_var.set(instance_id)


def bind_model(model_id: str) -> None:
    model_id_var.set(model_id)


def bind_request(request_id: str = "", headers: Mapping[str, str | bytes] | None = None, instance_id: str = "") -> str:
    """Start a request's log context and return its id: the protocol's own id
    (the v2 request `id`), else the `x-request-id` header, else a new one.
    Called by each front end once per request, in the request's own task."""
    if not request_id and headers:
        value = headers.get(REQUEST_ID_HEADER)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        request_id = value or ""
    request_id = request_id or uuid.uuid4().hex
    request_id_var.set(request_id)
    model_id_var.set(None)
    if instance_id:
        instance_id_var.set(instance_id)
    return request_id


def current_request_id() -> str | None:
    return request_id_var.get()


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record that does not set them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            if getattr(record, name, None) is None:
                value = var.get()
                if value is not None:
                    setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, the
    context fields, and whatever the call passed with `extra=`."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def make_handler(fmt: LogFormat = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing `fmt`, with the context filter."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    return handler


def configure(level: str | int = "INFO", fmt: LogFormat = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one of `fmt` (for `mmesh up`;
    an embedding application keeps its own logging and may add a handler
    from `make_handler`)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler = make_handler(fmt, stream)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


_requests_log = logging.getLogger("mesh.requests")


def log_request(method: str, code: str, duration_ms: float) -> None:
    """The per-request line (`log_requests` / MM_LOG_EACH_INVOKE): model and
    request id come from the request's context."""
    _requests_log.info(
        "%s %s %s %.1f ms", method, model_id_var.get() or "-", code, duration_ms,
        extra={"event": "request", "method": method, "code": code, "duration_ms": round(duration_ms, 3)},
    )
