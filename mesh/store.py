"""etcd tables: records of one kind under `<prefix>/<table>/<id>` with create,
compare-and-swap update, put (optionally under a lease), delete, list and
watch. The registry (`registry/`), the instance table (`instances/`) and the
vModel table (`vmodels/`) are all such tables.

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
from typing import Generic, Protocol, TypeVar

import aetcd
import grpc
from aetcd import exceptions as etcd_errors
from aetcd import rpc as etcd_rpc
from aetcd import utils as etcd_utils

from mesh.errors import RegistryUnavailable
from mesh.records import ModelRecord

log = logging.getLogger(__name__)

CAS_RETRIES = 50
ETCD_CALL_TIMEOUT_S = 5
LIST_PAGE_SIZE = 5000
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # one watch response may carry a burst of registrations


class Record(Protocol):
    """What a table stores: JSON with its id in the key, plus etcd's mod_revision."""

    mod_revision: int

    @property
    def record_id(self) -> str: ...

    def to_json(self) -> bytes: ...

    def copy(self) -> "Record": ...


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class TableEvent(Generic[R]):
    """A change seen on the watch: `record` is None for a deletion."""

    record_id: str
    record: R | None
    revision: int


def _parse_endpoint(endpoints: str) -> tuple[str, int]:
    first = endpoints.split(",")[0].strip().removeprefix("http://")
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port or 2379)


def connect_client(endpoints: str) -> aetcd.Client:
    """An etcd client for the first endpoint (calls time out rather than hang)."""
    host, port = _parse_endpoint(endpoints)
    options = {"grpc.max_receive_message_length": MAX_MESSAGE_BYTES, "grpc.max_send_message_length": MAX_MESSAGE_BYTES}
    return aetcd.Client(host=host, port=port, timeout=ETCD_CALL_TIMEOUT_S, options=options)


class EtcdTable(Generic[R]):
    def __init__(
        self,
        client: aetcd.Client,
        prefix: str,
        table: str,
        decode: Callable[[str, bytes, int], R],
        *,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self.prefix = prefix.rstrip("/")
        self.table = table
        self._decode = decode
        self._root = f"{self.prefix}/{table}/".encode()

    @property
    def client(self) -> aetcd.Client:
        return self._client

    async def connect(self) -> None:
        await self._client.connect()

    async def close(self) -> None:
        if self._owns_client:
            await self._client.close()

    def key(self, record_id: str) -> bytes:
        return self._root + record_id.encode()

    def _id_of(self, key: bytes) -> str:
        return key[len(self._root):].decode()

    async def get(self, record_id: str) -> R | None:
        async with _unavailable_on_error(f"read {self.table}/{record_id}"):
            got = await self._client.get(self.key(record_id))
        if got is None:
            return None
        return self._decode(record_id, got.value, got.mod_revision)

    async def create(self, record: R) -> tuple[bool, R]:
        """Put the record if its id is free. Returns (created, stored record)."""
        key = self.key(record.record_id)
        tx = self._client.transactions
        async with _unavailable_on_error(f"create {self.table}/{record.record_id}"):
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
        return False, self._decode(record.record_id, value, meta.mod_revision)

    async def put(self, record: R, lease: object | None = None) -> R:
        """Unconditional write (instance records: only their owner writes them)."""
        async with _unavailable_on_error(f"write {self.table}/{record.record_id}"):
            response = await self._client.put(self.key(record.record_id), record.to_json(), lease=lease)
        stored = record.copy()
        stored.mod_revision = response.header.revision
        return stored

    async def update(
        self,
        record_id: str,
        mutate: Callable[[R], R | None],
        current: R | None = None,
    ) -> R | None:
        """Apply `mutate` (given a private copy; returns the new record, or None
        for "no change") by CAS. Starts from `current` when the caller has a
        recent one (saves a read), re-reads on conflict. Returns the stored
        record, or None when it does not exist."""
        key = self.key(record_id)
        tx = self._client.transactions
        record = current
        for _ in range(CAS_RETRIES):
            if record is None:
                record = await self.get(record_id)
                if record is None:
                    return None
            changed = mutate(record.copy())
            if changed is None:
                return record
            async with _unavailable_on_error(f"update {self.table}/{record_id}"):
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
            record = self._decode(record_id, value, meta.mod_revision)
        raise RegistryUnavailable(f"{self.table}/{record_id} kept changing; gave up after {CAS_RETRIES} tries")

    async def delete(self, record_id: str) -> int | None:
        """Delete the record; returns the deletion's revision, None if absent."""
        key = self.key(record_id)
        tx = self._client.transactions
        async with _unavailable_on_error(f"delete {self.table}/{record_id}"):
            ok, responses = await self._client.transaction(
                compare=[tx.version(key) > 0], success=[tx.delete(key)], failure=[]
            )
        if not ok:
            return None
        return responses[0].response_delete_range.header.revision

    async def delete_if_unchanged(self, record_id: str, mod_revision: int) -> int | None:
        """Delete only the version the caller checked; None if it changed or went."""
        key = self.key(record_id)
        tx = self._client.transactions
        async with _unavailable_on_error(f"delete {self.table}/{record_id}"):
            ok, responses = await self._client.transaction(
                compare=[tx.mod(key) == mod_revision], success=[tx.delete(key)], failure=[]
            )
        return responses[0].response_delete_range.header.revision if ok else None

    async def list(self, page_size: int = LIST_PAGE_SIZE) -> tuple[list[R], int]:
        """All records and the revision they were read at (the watch resumes
        after it). Read in pages, all at that one revision, so a registry of
        any size never needs a single oversized response."""
        await self._client.connect()
        end = etcd_utils.prefix_range_end(self._root)
        key, revision, records = self._root, 0, []
        while True:
            request = etcd_rpc.RangeRequest(key=key, range_end=end, limit=page_size, revision=revision)
            async with _unavailable_on_error(f"list {self.table}"):
                got = await self._client.kvstub.Range(request, timeout=ETCD_CALL_TIMEOUT_S * 6, metadata=self._client.metadata)
            revision = revision or got.header.revision
            records.extend(self._decode(self._id_of(kv.key), kv.value, kv.mod_revision) for kv in got.kvs)
            if not got.more or not got.kvs:
                return records, revision
            key = got.kvs[-1].key + b"\0"

    async def watch(self, start_revision: int) -> AsyncIterator[TableEvent[R]]:
        """Registry changes from `start_revision` on. Raises
        `etcd_errors.RevisionCompactedError` when that revision is gone (the
        caller re-lists) and connection errors when etcd goes away."""
        watch = await self._client.watch_prefix(self._root, start_revision=start_revision)
        try:
            async for event in watch:
                record_id = self._id_of(event.kv.key)
                revision = event.kv.mod_revision
                if event.kind == aetcd.EventKind.DELETE:
                    yield TableEvent(record_id, None, revision)
                else:
                    yield TableEvent(record_id, self._decode(record_id, event.kv.value, revision), revision)
        finally:
            await watch.cancel()


@dataclass(frozen=True)
class Write:
    """One part of an atomic multi-record commit: put `record` (or delete when
    None) if the key is still at `expected_revision` (0 = must not exist)."""

    table: EtcdTable
    record_id: str
    record: Record | None
    expected_revision: int


async def commit(client: aetcd.Client, writes: list[Write]) -> int | None:
    """All writes or none, in one etcd transaction; returns its revision, or
    None when some record changed meanwhile (the caller re-reads and retries)."""
    tx = client.transactions
    compare, success = [], []
    for w in writes:
        key = w.table.key(w.record_id)
        compare.append(tx.version(key) == 0 if w.expected_revision == 0 else tx.mod(key) == w.expected_revision)
        success.append(tx.delete(key) if w.record is None else tx.put(key, w.record.to_json()))
    async with _unavailable_on_error("commit a multi-record change"):
        ok, responses = await client.transaction(compare=compare, success=success, failure=[])
    if not ok:
        return None
    first = responses[0]
    header = first.response_put.header if first.HasField("response_put") else first.response_delete_range.header
    return header.revision


class RegistryStore(EtcdTable[ModelRecord]):
    """The model registry, `<prefix>/registry/<modelId>`."""

    def __init__(self, endpoints: str | aetcd.Client, prefix: str) -> None:
        owns = isinstance(endpoints, str)
        client = connect_client(endpoints) if isinstance(endpoints, str) else endpoints
        super().__init__(client, prefix, "registry", ModelRecord.from_json, owns_client=owns)


@contextlib.asynccontextmanager
async def _unavailable_on_error(doing: str) -> AsyncIterator[None]:
    """Turns etcd client failures into RegistryUnavailable (gRPC UNAVAILABLE)."""
    try:
        yield
    except (etcd_errors.ClientError, grpc.RpcError, OSError, asyncio.TimeoutError) as exc:
        raise RegistryUnavailable(f"could not {doing}: etcd is unreachable ({exc})") from exc
