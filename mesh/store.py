"""etcd access for the registry: create, compare-and-swap update, delete,
list and watch of model records under `<prefix>/registry/`.

Writes are optimistic: read the record with its mod_revision, change a copy,
commit only if nobody wrote in between, else retry on the fresh value. Two
sidecars updating one record therefore never lose each other's change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aetcd
from aetcd import exceptions as etcd_errors

from mesh.errors import RegistryUnavailable
from mesh.records import ModelRecord

log = logging.getLogger(__name__)

CAS_RETRIES = 50
ETCD_CALL_TIMEOUT_S = 5


@dataclass(frozen=True)
class RegistryEvent:
    """A change seen on the watch: `record` is None for a deletion."""

    model_id: str
    record: ModelRecord | None
    revision: int


def _parse_endpoint(endpoints: str) -> tuple[str, int]:
    first = endpoints.split(",")[0].strip().removeprefix("http://")
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port or 2379)


class RegistryStore:
    def __init__(self, endpoints: str, prefix: str) -> None:
        host, port = _parse_endpoint(endpoints)
        self._client = aetcd.Client(host=host, port=port, timeout=ETCD_CALL_TIMEOUT_S)
        self.prefix = prefix.rstrip("/")
        self._registry = f"{self.prefix}/registry/".encode()

    async def connect(self) -> None:
        await self._client.connect()

    async def close(self) -> None:
        await self._client.close()

    def _key(self, model_id: str) -> bytes:
        return self._registry + model_id.encode()

    def _id_of(self, key: bytes) -> str:
        return key[len(self._registry):].decode()

    async def get(self, model_id: str) -> ModelRecord | None:
        async with _unavailable_on_error("read a model record"):
            got = await self._client.get(self._key(model_id))
        if got is None:
            return None
        return ModelRecord.from_json(model_id, got.value, got.mod_revision)

    async def create(self, record: ModelRecord) -> tuple[bool, ModelRecord]:
        """Put the record if its id is free. Returns (created, stored record)."""
        key = self._key(record.model_id)
        tx = self._client.transactions
        async with _unavailable_on_error("register a model"):
            ok, responses = await self._client.transaction(
                compare=[tx.version(key) == 0],
                success=[tx.put(key, record.to_json())],
                failure=[tx.get(key)],
            )
        if ok:
            stored = record.copy()
            stored.mod_revision = responses[0].response_put.header.revision
            return True, stored
        (value, meta), = responses[0]
        return False, ModelRecord.from_json(record.model_id, value, meta.mod_revision)

    async def update(
        self,
        model_id: str,
        mutate: Callable[[ModelRecord], ModelRecord | None],
        current: ModelRecord | None = None,
    ) -> ModelRecord | None:
        """Apply `mutate` (given a private copy; returns the new record, or None
        for "no change") by CAS. Starts from `current` when the caller has a
        recent one (saves a read), re-reads on conflict. Returns the stored
        record, or None when the model does not exist."""
        key = self._key(model_id)
        tx = self._client.transactions
        record = current
        for _ in range(CAS_RETRIES):
            if record is None:
                record = await self.get(model_id)
                if record is None:
                    return None
            changed = mutate(record.copy())
            if changed is None:
                return record
            async with _unavailable_on_error("update a model record"):
                ok, responses = await self._client.transaction(
                    compare=[tx.mod(key) == record.mod_revision],
                    success=[tx.put(key, changed.to_json())],
                    failure=[tx.get(key)],
                )
            if ok:
                changed.mod_revision = responses[0].response_put.header.revision
                return changed
            if not responses[0]:
                return None  # deleted meanwhile
            (value, meta), = responses[0]
            record = ModelRecord.from_json(model_id, value, meta.mod_revision)
        raise RegistryUnavailable(f"record of {model_id!r} kept changing; gave up after {CAS_RETRIES} tries")

    async def delete(self, model_id: str) -> int | None:
        """Delete the record; returns the deletion's revision, None if absent."""
        key = self._key(model_id)
        tx = self._client.transactions
        async with _unavailable_on_error("unregister a model"):
            ok, responses = await self._client.transaction(
                compare=[tx.version(key) > 0], success=[tx.delete(key)], failure=[]
            )
        if not ok:
            return None
        return responses[0].response_delete_range.header.revision

    async def list(self) -> tuple[list[ModelRecord], int]:
        """All records and the revision they were read at (the watch resumes after it)."""
        async with _unavailable_on_error("list the registry"):
            got = await self._client.get_prefix(self._registry)
        records = [ModelRecord.from_json(self._id_of(kv.key), kv.value, kv.mod_revision) for kv in got.kvs]
        return records, got.header.revision

    async def watch(self, start_revision: int) -> AsyncIterator[RegistryEvent]:
        """Registry changes from `start_revision` on. Raises
        `etcd_errors.RevisionCompactedError` when that revision is gone (the
        caller re-lists) and connection errors when etcd goes away."""
        watch = await self._client.watch_prefix(self._registry, start_revision=start_revision)
        try:
            async for event in watch:
                model_id = self._id_of(event.kv.key)
                if event.kind == aetcd.EventKind.DELETE:
                    yield RegistryEvent(model_id, None, event.kv.mod_revision)
                else:
                    yield RegistryEvent(
                        model_id, ModelRecord.from_json(model_id, event.kv.value, event.kv.mod_revision), event.kv.mod_revision
                    )
        finally:
            await watch.cancel()


@contextlib.asynccontextmanager
async def _unavailable_on_error(doing: str) -> AsyncIterator[None]:
    """Turns etcd client failures into RegistryUnavailable (gRPC UNAVAILABLE)."""
    try:
        yield
    except (etcd_errors.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise RegistryUnavailable(f"could not {doing}: etcd is unreachable ({exc})") from exc
