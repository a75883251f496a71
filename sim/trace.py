"""Recorded request traces: read (CSV or JSON lines) and write (CSV).

Kept apart from workload generation so a later live-mesh replay
(``sim.replay``) can read the very same files the simulator replays.

Accepted formats (by extension ``.csv``; ``.jsonl``/``.ndjson``/``.json``/
``.log``; otherwise sniffed from the first non-blank character):

* CSV with a header row.  Columns: a time column (``time``, ``time_s``,
  ``time_ms``, ``ts`` or ``timestamp``), a model column (``model_id``,
  ``modelId``, ``model`` or ``model_name``) and optionally ``size_bytes``
  (or ``size``).  Other columns are ignored.
* JSON lines: one object per line with a timestamp field (``ts``,
  ``time``, ``timestamp``, ``@timestamp``, ``time_s`` or ``time_ms``) and a
  model field (``model_id``, ``modelId``, ``model`` or ``model_name``);
  optionally ``size_bytes``/``sizeInBytes``.  Lines that are not JSON
  objects or lack either field are skipped and counted.
* A live mesh's JSON log (``--log-format json`` with per-request logging,
  ``MM_LOG_EACH_INVOKE``; see ``mesh/logs.py``) is such a file, but every
  line of a request's context carries its ``model_id``: so when any line has
  ``"event": "request"``, only those lines are requests.  The others (``load``,
  ``evict``, ...) still supply ``size_bytes``, the model's measured size.

Timestamps are numbers, numeric strings or ISO-8601 strings.  Units: a
``*_ms`` field is milliseconds, ``*_s`` seconds, ISO strings are absolute;
for ``time``/``ts``/``timestamp`` numbers, ``time_unit`` decides, and
``auto`` reads values above 1e11 as epoch milliseconds (1e11 s would be the
year 5138) and anything else as seconds — so a *relative* millisecond trace
needs ``time_unit: ms``.  Times are rebased to start at 0 and requests are
stably sorted by time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["MODEL_FIELDS", "TIME_FIELDS", "RecordedTrace", "TraceError", "read_trace", "write_trace"]

TimeUnit = Literal["auto", "s", "ms"]
TIME_FIELDS = ("ts", "time", "timestamp", "@timestamp", "time_s", "time_ms")
MODEL_FIELDS = ("model_id", "modelId", "model", "model_name")
SIZE_FIELDS = ("size_bytes", "sizeInBytes", "size")
_EPOCH_MS_ABOVE = 1e11


class TraceError(ValueError):
    """The file is not a trace we can read (named file and line)."""


@dataclass
class RecordedTrace:
    """Requests as arrays: the shape the workload and the engine consume."""

    times_s: np.ndarray  # float64, sorted, first request at 0
    model_index: np.ndarray  # int32 index into model_ids, one per request
    model_ids: list[str]  # distinct models in order of first appearance
    sizes: dict[str, int] = field(default_factory=dict)  # sizes the trace gave
    skipped: int = 0  # lines without a usable timestamp and model id

    def __len__(self) -> int:
        return len(self.times_s)


def read_trace(path: str | Path, *, time_unit: TimeUnit = "auto", limit: int | None = None) -> RecordedTrace:
    """Read a CSV or JSON-lines trace (see the module docstring for the fields)."""
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    times: list[float] = []
    models: list[str] = []
    is_request: list[bool] = []  # the line says "event": "request"
    sizes: dict[str, int] = {}
    skipped = 0
    unit_of_field: dict[str, float] = {}
    with handle:
        rows = _csv_rows(handle, path) if _is_csv(path, handle) else _json_rows(handle)
        for row in rows:
            if row is None:
                skipped += 1
                continue
            time_field, raw_time, model_id, size, request_event = row
            if size is not None and model_id not in sizes:
                sizes[model_id] = size
            seconds = _seconds(raw_time, time_field, time_unit, unit_of_field)
            if seconds is None:
                skipped += 1
                continue
            times.append(seconds)
            models.append(model_id)
            is_request.append(request_event)
    if any(is_request):  # a mesh log: only request lines are requests
        skipped += is_request.count(False)
        times = [t for t, r in zip(times, is_request) if r]
        models = [m for m, r in zip(models, is_request) if r]
    if not times:
        raise TraceError(
            f"{path}: no requests found; each record needs a time ({', '.join(TIME_FIELDS)}) "
            f"and a model ({', '.join(MODEL_FIELDS)})"
        )
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")[:limit]
    index: dict[str, int] = {}
    model_index = np.fromiter((index.setdefault(models[k], len(index)) for k in order.tolist()), dtype=np.int32, count=len(order))
    t = t[order]
    return RecordedTrace(
        times_s=t - t[0],
        model_index=model_index,
        model_ids=list(index),
        sizes={m: sizes[m] for m in index if m in sizes},
        skipped=skipped,
    )


def write_trace(path: str | Path, times_s: Iterable[float], model_ids: Iterable[str], sizes: dict[str, int] | None = None) -> None:
    """Write a CSV trace (``time`` in seconds, ``model_id``, ``size_bytes`` if known)."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "model_id", "size_bytes"] if sizes else ["time", "model_id"])
        for t, m in zip(times_s, model_ids):
            writer.writerow([f"{t:.6f}", m, sizes[m]] if sizes else [f"{t:.6f}", m])


# ------------------------------------------------------------------ parsing

Row = tuple[str, object, str, "int | None", bool] | None  # time field, raw time, model, size, request event


def _is_csv(path: Path, handle) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return True
    if suffix in (".jsonl", ".ndjson", ".json", ".log"):
        return False
    for line in handle:
        if line.strip():
            handle.seek(0)
            return not line.lstrip().startswith("{")
    handle.seek(0)
    return True


def _first(keys: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    present = set(keys)
    return next((c for c in candidates if c in present), None)


def _csv_rows(handle, path: Path) -> Iterator[Row]:
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    time_col = _first(header, TIME_FIELDS)
    model_col = _first(header, MODEL_FIELDS)
    size_col = _first(header, SIZE_FIELDS)
    if time_col is None or model_col is None:
        raise TraceError(
            f"{path}: CSV header {header} needs a time column ({', '.join(TIME_FIELDS)}) "
            f"and a model column ({', '.join(MODEL_FIELDS)})"
        )
    for record in reader:
        model_id = record.get(model_col)
        if not model_id:
            yield None
            continue
        yield time_col, record.get(time_col), model_id, _size(record.get(size_col) if size_col else None), False


def _json_rows(handle) -> Iterator[Row]:
    for line in handle:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            yield None
            continue
        if not isinstance(record, dict):
            yield None
            continue
        time_field = _first(record, TIME_FIELDS)
        model_field = _first(record, MODEL_FIELDS)
        if time_field is None or model_field is None or not record[model_field]:
            yield None
            continue
        size_field = _first(record, SIZE_FIELDS)
        yield (time_field, record[time_field], str(record[model_field]),
               _size(record[size_field] if size_field else None), record.get("event") == "request")


def _size(value: object) -> int | None:
    if value in (None, ""):
        return None
    try:
        size = int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return size if size >= 0 else None


def _seconds(value: object, field_name: str, unit: TimeUnit, units: dict[str, float]) -> float | None:
    """One timestamp in seconds; ``units`` remembers each field's scale after the first value."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    scale = units.get(field_name)
    if scale is None:
        if field_name.endswith("_ms"):
            scale = 1e-3
        elif field_name.endswith("_s") or unit == "s":
            scale = 1.0
        elif unit == "ms":
            scale = 1e-3
        else:
            scale = 1e-3 if abs(value) > _EPOCH_MS_ABOVE else 1.0
        units[field_name] = scale
    return float(value) * scale
