"""List + watch one Kubernetes resource kind into a local cache.

As client-go's reflector: list (remembering the list's resourceVersion), then
watch from that version with bookmarks, so a reconnect resumes where it left
off without a re-list; a `410 Gone` (the server no longer has that history)
means re-list and diff against the cache, so no deletion is missed. Other
errors back off and retry. The official client is blocking, so the loop runs
on its own thread and hands every change to the event loop with
`call_soon_threadsafe`; the cache is read under a lock."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from mesh.controller.kube_writes import raw_call

log = logging.getLogger(__name__)

GONE = 410
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)
OnChange = Callable[[str, "dict[str, Any] | None"], None]


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    return f"{namespace}/{metadata['name']}" if namespace else str(metadata["name"])


class Informer:
    """`list_call(**kwargs)`: an API list method with its positional arguments
    bound (functools.partial), e.g. CustomObjectsApi.list_namespaced_custom_object
    for one group/version/namespace/plural."""

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        on_change: OnChange,
        *,
        watch_timeout_s: int = 60,
        label_selector: str = "",
    ) -> None:
        self.name = name
        self._list_call = list_call
        self._on_change = on_change
        self._watch_timeout_s = watch_timeout_s
        self._label_selector = label_selector
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.synced = threading.Event()
        self.relists = 0

    # ---- reads ------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get(key)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._cache.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    # ---- life cycle ----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching: closes the open stream so the thread ends promptly."""
        self._stopping.set()
        current = self._watch
        if current is not None:
            current.stop()
            response = getattr(current, "_resp", None)
            if response is not None:
                try:
                    response.shutdown() if hasattr(response, "shutdown") else response.close()
                except Exception:  # closing a stream another thread reads: best effort
                    pass
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---- the loop (its own thread) ---------------------------------------------------

    def _run(self) -> None:
        version: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._relist()
                version = self._watch_from(version)
                failures = 0
            except ApiException as exc:
                if exc.status == GONE:
                    log.info("%s: watch history expired (410 Gone); listing again", self.name)
                    version = None
                    continue
                failures = self._pause(failures, exc)
            except Exception as exc:  # connection resets, timeouts: retry with back-off
                failures = self._pause(failures, exc)

    def _pause(self, failures: int, exc: BaseException) -> int:
        if not self._stopping.is_set():
            log.warning("%s: list/watch failed (%s); retrying", self.name, exc)
            self._stopping.wait(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)])
        return failures + 1

    def _selector(self) -> dict[str, Any]:
        return {"label_selector": self._label_selector} if self._label_selector else {}

    def _relist(self) -> str:
        doc = json.loads(raw_call(self._list_call, **self._selector()))
        fresh = {object_key(item): item for item in doc.get("items") or []}
        with self._lock:
            gone = [key for key in self._cache if key not in fresh]
            changed = [key for key, item in fresh.items() if self._cache.get(key) != item]
            self._cache = fresh
        self.relists += 1
        for key in gone:
            self._emit(key, None)
        for key in changed:
            self._emit(key, fresh[key])
        self.synced.set()
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_from(self, version: str) -> str:
        """Watch until the server ends the stream; returns the version to resume from."""
        # "object": events stay plain dicts for every kind (and the client's
        # ERROR/410 handling needs its deserializing path)
        self._watch = current = watch.Watch(return_type="object")
        try:
            for event in current.stream(
                self._list_call,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout_s,
                _request_timeout=self._watch_timeout_s + 30,
                **self._selector(),
            ):
                if self._stopping.is_set():
                    break
                obj = event.get("raw_object") or {}
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                kind = event.get("type")
                if kind == "BOOKMARK":
                    continue
                self._apply(kind, obj)
        finally:
            self._watch = None
        return version

    def _apply(self, kind: str | None, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        with self._lock:
            if kind == "DELETED":
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
        self._emit(key, None if kind == "DELETED" else obj)

    def _emit(self, key: str, obj: dict[str, Any] | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._on_change, key, obj)
            except RuntimeError:  # the loop closed in between: nobody to tell
                pass
