"""A loopback HTTP server that speaks enough of the Kubernetes REST protocol for
the real `kubernetes` Python client to run against it unchanged.

No API server can run on the test machines, and mocking the client would test
our assumptions about the client rather than the client. So this serves the
wire protocol instead: the same URLs, Status error bodies, optimistic
concurrency on resourceVersion, the main-resource/status-subresource split,
merge / strategic-merge / JSON patches, and chunked watch streams with
replay, bookmarks and 410 "too old resource version" errors.

It is deliberately simple where the real server is elaborate: one global
resourceVersion counter, an in-memory event history, strategic merge patch
treated as a JSON merge patch (lists are replaced, not merged by key), no
finalizers (DELETE removes at once), no admission, validation or defaulting.

Everything binds 127.0.0.1 on a free port and stops with bounded timeouts.
"""

from __future__ import annotations

import copy
import json
import select
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client

STOP_TIMEOUT_S = 5.0
DEFAULT_WATCH_TIMEOUT_S = 300.0  # the real server picks 30-60 min; tests want streams to end eventually
LIVENESS_CHECK_S = 0.5  # how often an idle watch looks for a client that went away
MAX_HISTORY = 10_000  # events kept for watch replay; older ones are compacted away

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """One served resource type: where it lives in the URL space and how it behaves."""

    group: str  # "" for the core group (/api/v1)
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """The name the real server uses in messages, e.g. `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def delete_returns_object(self) -> bool:
        """What DELETE answers, which decides what the client deserializes: custom
        resources, pods and services return the deleted object; other built-ins a
        success Status."""
        custom = "." in self.group and not self.group.endswith(".k8s.io")
        return custom or (self.group, self.plural) in (("", "pods"), ("", "services"))


RESOURCES: dict[str, Resource] = {
    r.plural: r
    for r in (
        Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", True, True),
        Resource("serving.kserve.io", "v1alpha1", "servingruntimes", "ServingRuntime", True, True),
        Resource("serving.kserve.io", "v1alpha1", "clusterservingruntimes", "ClusterServingRuntime", False, True),
        Resource("apps", "v1", "deployments", "Deployment", True, True),
        Resource("", "v1", "services", "Service", True, False),
        Resource("", "v1", "pods", "Pod", True, True),
        Resource("", "v1", "configmaps", "ConfigMap", True, False),
        Resource("", "v1", "secrets", "Secret", True, False),
        Resource("", "v1", "events", "Event", True, False),
        Resource("coordination.k8s.io", "v1", "leases", "Lease", True, False),
    )
}


# -- errors ------------------------------------------------------------------------


class ApiError(Exception):
    """A failure the server answers with a Status body and the matching HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str) -> Obj:
    return {"name": name, "group": res.group, "kind": res.plural}


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.group_resource} "{name}" not found', _details(res, name))


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{res.group_resource} "{name}" already exists', _details(res, name))


def conflict(res: Resource, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.group_resource} "{name}": '
                    "the object has been modified; please apply your changes to the latest version and try again",
                    _details(res, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def too_old(requested: int, oldest: int) -> ApiError:
    # the real server says reason "Expired" (metav1.StatusReasonExpired) for a watch from a compacted version
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


# -- patches -------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"json patch path {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, insert: bool) -> int:
    if insert and token == "-":
        return len(container)
    if not token.isdigit() or int(token) > len(container) - (0 if insert else 1):
        raise ApiError(422, "Invalid", f"json patch: array index {token!r} out of range")
    return int(token)


def _parent(doc: Any, tokens: list[str]) -> Any:
    for token in tokens[:-1]:
        doc = _get_child(doc, token)
    return doc


def _get_child(doc: Any, token: str) -> Any:
    if isinstance(doc, dict) and token in doc:
        return doc[token]
    if isinstance(doc, list):
        return doc[_index(doc, token, insert=False)]
    raise ApiError(422, "Invalid", f"json patch: path element {token!r} does not exist")


def _resolve(doc: Any, path: str) -> Any:
    for token in _pointer(path):
        doc = _get_child(doc, token)
    return doc


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, list):
        parent.insert(_index(parent, last, insert=True), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"json patch: cannot add at {path!r}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise ApiError(422, "Invalid", "json patch: cannot remove the whole document")
    parent, last = _parent(doc, tokens), tokens[-1]
    removed = _get_child(parent, last)
    if isinstance(parent, list):
        del parent[_index(parent, last, insert=False)]
    else:
        del parent[last]
    return doc, removed


def _json_patch_op(doc: Any, op: Obj) -> Any:
    kind, path = op.get("op"), op.get("path", "")
    if kind == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if kind == "remove":
        return _remove(doc, path)[0]
    if kind == "replace":
        if not _pointer(path):
            return copy.deepcopy(op["value"])
        return _add(_remove(doc, path)[0], path, copy.deepcopy(op["value"]))  # _remove checks it exists
    if kind == "test":
        if _resolve(doc, path) != op.get("value"):
            raise ApiError(422, "Invalid", f"json patch: test failed at {path!r}")
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(_resolve(doc, op["from"]))
        if kind == "move":
            doc = _remove(doc, op["from"])[0]
        return _add(doc, path, value)
    raise ApiError(422, "Invalid", f"json patch: unsupported op {kind!r}")


def json_patch(target: Obj, ops: Any) -> Obj:
    """RFC 6902 add/remove/replace/move/copy/test, all or nothing."""
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise bad_request("json patch must be a list of operations")
    doc: Any = copy.deepcopy(target)
    try:
        for op in ops:
            doc = _json_patch_op(doc, op)
    except KeyError as exc:
        raise ApiError(422, "Invalid", f"json patch: operation lacks {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "Invalid", "json patch must leave an object")
    return doc


def object_merge_patch(target: Obj, patch: Any) -> Obj:
    """A merge patch of an API object must itself be an object (a JSON patch's list
    of operations sent as a merge patch is the classic mistake)."""
    if not isinstance(patch, dict):
        raise bad_request(f"a merge patch must be a JSON object, not {type(patch).__name__}")
    return merge_patch(target, patch)


PATCHERS: dict[str, Callable[[Obj, Any], Obj]] = {
    "application/merge-patch+json": object_merge_patch,
    "application/strategic-merge-patch+json": object_merge_patch,  # lists are replaced, not merged by key
    "application/json-patch+json": json_patch,
}


# -- selectors -----------------------------------------------------------------------

Predicate = Callable[[Obj], bool]


def _terms(selector: str) -> Iterator[tuple[str, str, str]]:
    """(key, op, value) per comma-separated term; op is =, != or exists/!exists."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            yield key.strip(), "!=", value.strip()
        elif "=" in term:
            key, value = term.replace("==", "=", 1).split("=", 1)
            yield key.strip(), "=", value.strip()
        elif term.startswith("!"):
            yield term[1:].strip(), "!exists", ""
        elif " " in term or "(" in term:
            raise bad_request(f"unsupported label selector term {term!r} (only equality-based terms are served)")
        else:
            yield term, "exists", ""


def _term_matches(values: dict[str, str], key: str, op: str, want: str) -> bool:
    if op == "exists":
        return key in values
    if op == "!exists":
        return key not in values
    return (values.get(key) == want) == (op == "=")


def label_selector(selector: str) -> Predicate:
    terms = list(_terms(selector))
    return lambda obj: all(_term_matches(obj["metadata"].get("labels") or {}, *t) for t in terms)


FIELDS = {"metadata.name": "name", "metadata.namespace": "namespace"}


def field_selector(selector: str) -> Predicate:
    terms = list(_terms(selector))
    for key, op, _ in terms:
        if key not in FIELDS or op not in ("=", "!="):
            raise bad_request(f'field label not supported: "{key}"')
    return lambda obj: all(
        _term_matches({f: obj["metadata"].get(m, "") for f, m in FIELDS.items()}, *t) for t in terms)


# -- the store -----------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@dataclass(frozen=True)
class Event:
    """One committed write. `obj` is the object after it (for DELETED: the last state,
    with the deletion's resourceVersion); `old` the object before it."""

    rv: int
    plural: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)  # identity: a watch is one stream
class Watch:
    """One open watch stream: what it selects, and events waiting to be written."""

    res: Resource
    namespace: str | None
    matches: Predicate
    bookmarks: bool
    deadline: float
    next_bookmark: float
    pending: list[Obj] = field(default_factory=list)
    closed: bool = False

    def selects(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        return (self.namespace is None or obj["metadata"].get("namespace") == self.namespace) and self.matches(obj)

    def translate(self, event: Event) -> Obj | None:
        """What this watcher sees: like the real server, an object that starts or stops
        matching the selectors shows up as ADDED or DELETED."""
        if event.plural != self.res.plural:
            return None
        was, now = self.selects(event.old), self.selects(event.obj)
        if event.type == "DELETED":
            kind = "DELETED" if was else None
        elif was and now:
            kind = "MODIFIED"
        else:
            kind = "ADDED" if now else ("DELETED" if was else None)
        return {"type": kind, "object": event.obj} if kind else None


class Store:
    """Objects, the event history and open watches, all behind one lock.

    Stored object dicts are never mutated after they are committed (writes build
    new dicts), so events can share them with watchers and serialize outside the
    lock; everything handed out to callers is a deep copy.
    """

    def __init__(self, bookmark_interval_s: float) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {plural: {} for plural in RESOURCES}
        self._history: deque[Event] = deque()
        self._compacted_rv = 0  # events up to here are forgotten
        # a real API server never lists at "0" (its etcd has revisions before any
        # object of ours); "0" in a watch means "any, from a snapshot", so an empty
        # store listing "0" would make a watch opened after a change miss it
        self._rv = 1
        self._watches: list[Watch] = []
        self._stopped = False
        self.bookmark_interval_s = bookmark_interval_s

    # reads

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        with self._cond:
            obj = self._objects[res.plural].get((namespace, name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def list(self, res: Resource, namespace: str | None, matches: Predicate) -> tuple[list[Obj], int]:
        with self._cond:
            return copy.deepcopy(self._select(res, namespace, matches)), self._rv

    def _select(self, res: Resource, namespace: str | None, matches: Predicate) -> list[Obj]:
        objects = self._objects[res.plural]
        return [objects[k] for k in sorted(objects)
                if (namespace is None or k[0] == namespace) and matches(objects[k])]

    # writes

    def create(self, res: Resource, namespace: str, body: Obj) -> Obj:
        with self._cond:
            obj = self._new_object(res, namespace, body)
            if _key(obj) in self._objects[res.plural]:
                raise already_exists(res, obj["metadata"]["name"])
            return copy.deepcopy(self._commit(res, "ADDED", None, obj))

    def update(self, res: Resource, namespace: str, name: str, change: Callable[[Obj], Obj], subresource: str) -> Obj:
        """Apply `change` to (a copy of) the stored object under the lock, so a patch
        sees the latest version; a resourceVersion left in the result must be current."""
        with self._cond:
            current = self._objects[res.plural].get((namespace, name))
            if current is None:
                raise not_found(res, name)
            proposed = change(copy.deepcopy(current))
            wanted = (proposed.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            new = _merge_update(res, current, proposed, subresource)
            if _unchanged(current, new):
                return copy.deepcopy(current)  # like the real server: a no-op write is not a new version
            return copy.deepcopy(self._commit(res, "MODIFIED", current, new))

    def delete(self, res: Resource, namespace: str, name: str) -> Obj:
        with self._cond:
            current = self._objects[res.plural].get((namespace, name))
            if current is None:
                raise not_found(res, name)
            return copy.deepcopy(self._commit(res, "DELETED", current, copy.deepcopy(current)))

    def _new_object(self, res: Resource, namespace: str, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required value: name is required")
        if res.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent "
                                  "on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if res.status_subresource:
            obj.pop("status", None)  # status is written through /status only
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("resourceVersion", None)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        return obj

    def _commit(self, res: Resource, kind: str, old: Obj | None, new: Obj) -> Obj:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        objects = self._objects[res.plural]
        if kind == "DELETED":
            del objects[_key(new)]
        else:
            objects[_key(new)] = new
        self._record(Event(self._rv, res.plural, kind, new, old))
        return new

    def _record(self, event: Event) -> None:
        self._history.append(event)
        if len(self._history) > MAX_HISTORY:
            self._compacted_rv = self._history.popleft().rv
        for watch in self._watches:
            seen = watch.translate(event)
            if seen:
                watch.pending.append(seen)
        self._cond.notify_all()

    # history and watches

    @property
    def rv(self) -> int:
        with self._cond:
            return self._rv

    def compact(self) -> None:
        with self._cond:
            self._history.clear()
            self._compacted_rv = self._rv

    def open_watch(self, watch: Watch, since: str) -> ApiError | None:
        """Queue the events the watch starts with and register it, atomically so no
        write falls between; or say why it cannot start (a compacted version)."""
        with self._cond:
            if since in ("", "0"):
                watch.pending = [{"type": "ADDED", "object": obj}
                                 for obj in self._select(watch.res, watch.namespace, watch.matches)]
            else:
                requested = int(since)
                if requested < self._compacted_rv:
                    return too_old(requested, self._compacted_rv + 1)
                replay = (watch.translate(e) for e in self._history if e.rv > requested)
                watch.pending = [seen for seen in replay if seen]
            watch.closed = self._stopped
            self._watches.append(watch)
            return None

    def next_events(self, watch: Watch) -> list[Obj] | None:
        """Block until the watch has something to send: events, a due bookmark, or
        [] after LIVENESS_CHECK_S of quiet. None when the stream should end."""
        with self._cond:
            while True:
                now = time.monotonic()
                if watch.closed or now >= watch.deadline:
                    return None
                if watch.pending:
                    events, watch.pending = watch.pending, []
                    return events
                if watch.bookmarks and now >= watch.next_bookmark:
                    watch.next_bookmark = now + self.bookmark_interval_s
                    return [self._bookmark(watch.res)]
                liveness = now + LIVENESS_CHECK_S
                wake = min(watch.deadline, liveness, watch.next_bookmark if watch.bookmarks else liveness)
                if not self._cond.wait(wake - now) and wake == liveness:
                    return []

    def _bookmark(self, res: Resource) -> Obj:
        # every event up to the current version has been queued to (and so sent before) this
        return {"type": "BOOKMARK", "object": {"apiVersion": res.api_version, "kind": res.kind,
                                               "metadata": {"resourceVersion": str(self._rv)}}}

    def close_watch(self, watch: Watch) -> None:
        with self._cond:
            watch.closed = True
            if watch in self._watches:
                self._watches.remove(watch)

    def drop_watches(self, stop: bool = False) -> None:
        with self._cond:
            self._stopped = self._stopped or stop
            for watch in self._watches:
                watch.closed = True
            self._cond.notify_all()


_SYSTEM_METADATA = ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion")


def _merge_update(res: Resource, current: Obj, proposed: Obj, subresource: str) -> Obj:
    """The object a PUT/PATCH results in: /status changes only status, the main
    resource everything but status (for kinds with a status subresource)."""
    if subresource == "status":
        new = copy.deepcopy(current)
        _set_or_drop(new, "status", proposed.get("status"))
    else:
        new = proposed
        meta = new.setdefault("metadata", {})
        if meta.get("name", current["metadata"]["name"]) != current["metadata"]["name"]:
            raise bad_request(f'the name of the object ({meta["name"]}) does not match the name on the URL '
                              f'({current["metadata"]["name"]})')
        meta.update({k: current["metadata"][k] for k in _SYSTEM_METADATA if k in current["metadata"]})
        if res.status_subresource:
            _set_or_drop(new, "status", current.get("status"))
        if new.get("spec") != current.get("spec"):
            meta["generation"] = current["metadata"]["generation"] + 1
    new["apiVersion"], new["kind"] = res.api_version, res.kind
    return new


def _set_or_drop(obj: Obj, key: str, value: Any) -> None:
    if value is None:
        obj.pop(key, None)
    else:
        obj[key] = copy.deepcopy(value)


def _unchanged(current: Obj, new: Obj) -> bool:
    return {**new, "metadata": {**new["metadata"], "resourceVersion": None}} == \
        {**current, "metadata": {**current["metadata"], "resourceVersion": None}}


# -- routing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    res: Resource
    namespace: str | None  # None: cluster-scoped, or a list across all namespaces
    name: str | None
    subresource: str  # "" or "status"


def route(path: str) -> Route:
    """Map a REST path to a resource, or raise 404 as the real server does."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise _page_not_found(path)
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    res = RESOURCES.get(rest[0]) if rest else None
    if res is None or (res.group, res.version) != (group, version) or len(rest) > 3:
        raise _page_not_found(path)
    name = rest[1] if len(rest) >= 2 else None
    subresource = rest[2] if len(rest) == 3 else ""
    if subresource not in ("", "status") or (subresource and not res.status_subresource) \
            or (namespace is not None and not res.namespaced) \
            or (namespace is None and res.namespaced and name is not None):
        raise _page_not_found(path)
    return Route(res, namespace, name, subresource)


def _page_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")


# -- HTTP ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for the client's pool; chunked watch streams
    server: "_Server"
    watching = False  # stop() lets a watch stream end cleanly before cutting connections

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes; with Nagle on, the body would
        # wait ~40 ms for the client's delayed ACK of the headers on every request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.api.connection_opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.api.connection_closed(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        api = self.server.api
        api.record(method, url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        content_type = self.headers.get("Content-Type", "")
        if method == "PATCH":
            api.record_patch(url.path, content_type)
        body = self._read_body()
        try:
            r = route(url.path)
            if method == "GET" and r.name is None and query.get("watch", "").lower() in ("true", "1"):
                self._watch(r, query)
                return
            code, payload = api.handle(method, r, query, body, content_type)
        except ApiError as err:
            code, payload = err.code, err.status()
        except Exception as exc:  # a bug here should fail the client's call, not hang it
            code, payload = 500, ApiError(500, "InternalError", f"fake kube-apiserver: {exc!r}").status()
        self._send_json(code, payload)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, code: int, payload: Obj) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # watch streams

    def _watch(self, r: Route, query: dict[str, str]) -> None:
        api = self.server.api
        watch = api.new_watch(r, query)
        since = query.get("resourceVersion", "")
        if since not in ("", "0") and not since.isdigit():
            raise bad_request(f"invalid resource version: {since!r}")
        error = api.store.open_watch(watch, since)
        self.watching = True
        self.close_connection = True  # the stream's end is the connection's end
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if error is not None:
                self._write_events([{"type": "ERROR", "object": error.status()}])
            else:
                self._stream(watch)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client went away
        finally:
            api.store.close_watch(watch)

    def _stream(self, watch: Watch) -> None:
        while (events := self.server.api.store.next_events(watch)) is not None:
            if events:
                self._write_events(events)
            elif self._peer_closed():
                return

    def _write_events(self, events: list[Obj]) -> None:
        data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))  # one chunk; wfile is unbuffered
        self.wfile.flush()

    def _peer_closed(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() joins handler threads itself, with timeouts
    allow_reuse_address = True
    api: "FakeKubeApi"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its connection (a watch it stopped) is normal, not a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class FakeKubeApi:
    """The server plus direct store access for tests (direct writes bump the
    resourceVersion and reach watchers exactly like API writes)."""

    def __init__(self, bookmark_interval_s: float = 1.0) -> None:
        self.store = Store(bookmark_interval_s)
        self.requests: list[tuple[str, str]] = []
        self.patches: list[tuple[str, str]] = []  # (path, Content-Type) of every PATCH
        self._lock = threading.Lock()  # requests and connections
        self._connections: dict[_Handler, threading.Thread] = {}
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.api = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-kube-api", daemon=True)
        self._stopped = False

    # lifecycle

    def start(self) -> "FakeKubeApi":
        self._thread.start()
        return self

    def stop(self) -> None:
        """End watch streams (they send their terminating chunk), then cut idle
        keep-alive connections, joining every thread with a timeout. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.store.drop_watches(stop=True)
        if not self._thread.is_alive():  # never started
            self._httpd.server_close()
            return
        stopper = threading.Thread(target=self._httpd.shutdown, daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)
        self._thread.join(STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        self._join_connections(deadline, lambda handler: handler.watching)
        self._join_connections(deadline, lambda handler: True, cut=True)
        self._httpd.server_close()
        assert not self._thread.is_alive(), "fake kube-apiserver did not stop"

    def _join_connections(self, deadline: float, which: Callable[[_Handler], bool], cut: bool = False) -> None:
        with self._lock:
            connections = [(h, t) for h, t in self._connections.items() if which(h)]
        for handler, _ in connections:
            if cut:
                _shutdown(handler.connection)
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "FakeKubeApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # clients

    def configuration(self) -> kubernetes.client.Configuration:
        config = kubernetes.client.Configuration()
        config.host = self.url
        config.verify_ssl = False
        return config

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.client.ApiClient(self.configuration())

    # direct store access

    def get(self, plural: str, name: str, namespace: str | None = None) -> Obj | None:
        res = RESOURCES[plural]
        try:
            return self.store.get(res, _namespace(res, namespace), name)
        except ApiError:
            return None

    def list(self, plural: str, namespace: str | None = None) -> list[Obj]:
        return self.store.list(RESOURCES[plural], namespace, lambda _: True)[0]

    def apply(self, plural: str, obj: Obj) -> Obj:
        """Create, or replace everything but status and system metadata (like kubectl
        apply; no resourceVersion check). Status: see set_status."""
        res = RESOURCES[plural]
        meta = obj.get("metadata") or {}
        namespace = _namespace(res, meta.get("namespace"))
        body = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
        try:
            return self.store.create(res, namespace, body)
        except ApiError as err:
            if err.code != 409:
                raise
        return self.store.update(res, namespace, meta["name"], lambda _: copy.deepcopy(body), "")

    def set_status(self, plural: str, name: str, status: Obj, namespace: str | None = None) -> Obj:
        """Replace the status, as a controller writing /status would."""
        res = RESOURCES[plural]
        subresource = "status" if res.status_subresource else ""
        return self.store.update(res, _namespace(res, namespace), name,
                                 lambda cur: {**cur, "status": copy.deepcopy(status)}, subresource)

    def remove(self, plural: str, name: str, namespace: str | None = None) -> None:
        """Delete if present (no error when it is already gone)."""
        res = RESOURCES[plural]
        try:
            self.store.delete(res, _namespace(res, namespace), name)
        except ApiError as err:
            if err.code != 404:
                raise

    def compact(self) -> None:
        self.store.compact()

    def drop_watches(self) -> None:
        self.store.drop_watches()

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def count(self, method: str, plural: str, subresource: str = "") -> int:
        with self._lock:
            requests = list(self.requests)
        return sum(1 for m, path in requests if m == method and _routes_to(path, plural, subresource))

    # serving (called by the handler)

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def record_patch(self, path: str, content_type: str) -> None:
        with self._lock:
            self.patches.append((path, content_type))

    def connection_opened(self, handler: _Handler) -> None:
        with self._lock:
            self._connections[handler] = threading.current_thread()

    def connection_closed(self, handler: _Handler) -> None:
        with self._lock:
            self._connections.pop(handler, None)

    def new_watch(self, r: Route, query: dict[str, str]) -> Watch:
        now = time.monotonic()
        timeout = float(query.get("timeoutSeconds") or 0) or DEFAULT_WATCH_TIMEOUT_S  # 0: the default, as for real
        return Watch(res=r.res, namespace=r.namespace, matches=_selectors(query),
                     bookmarks=query.get("allowWatchBookmarks", "").lower() in ("true", "1"),
                     deadline=now + timeout, next_bookmark=now + self.store.bookmark_interval_s)

    def handle(self, method: str, r: Route, query: dict[str, str], body: bytes, content_type: str) -> tuple[int, Obj]:
        """Serve one non-watch request: (HTTP code, JSON body)."""
        if method == "GET":
            return 200, self._get(r, query)
        if method == "POST" and r.name is None and not r.subresource and (r.namespace or not r.res.namespaced):
            return 201, self.store.create(r.res, r.namespace or "", _object(body))
        if r.name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
        namespace = r.namespace or ""
        if method == "PUT":
            replacement = _object(body)
            return 200, self.store.update(r.res, namespace, r.name, lambda _: replacement, r.subresource)
        if method == "PATCH":
            patcher, patch = _patcher(content_type), _json(body)
            return 200, self.store.update(r.res, namespace, r.name, lambda cur: patcher(cur, patch), r.subresource)
        if method == "DELETE" and not r.subresource:
            deleted = self.store.delete(r.res, namespace, r.name)
            return 200, deleted if r.res.delete_returns_object else _success(r.res, deleted)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _get(self, r: Route, query: dict[str, str]) -> Obj:
        if r.name is not None:
            return self.store.get(r.res, r.namespace or "", r.name)
        items, rv = self.store.list(r.res, r.namespace, _selectors(query))
        return {"apiVersion": r.res.api_version, "kind": f"{r.res.kind}List",
                "metadata": {"resourceVersion": str(rv)}, "items": items}


def _namespace(res: Resource, namespace: str | None) -> str:
    return (namespace or "default") if res.namespaced else ""


def _routes_to(path: str, plural: str, subresource: str) -> bool:
    try:
        r = route(path)
    except ApiError:
        return False
    return r.res.plural == plural and r.subresource == subresource


def _selectors(query: dict[str, str]) -> Predicate:
    labels = label_selector(query.get("labelSelector", ""))
    fields = field_selector(query.get("fieldSelector", ""))
    return lambda obj: labels(obj) and fields(obj)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


def _object(body: bytes) -> Obj:
    obj = _json(body)
    if not isinstance(obj, dict):
        raise bad_request("the request body must be a JSON object")
    return obj


def _patcher(content_type: str) -> Callable[[Obj, Any], Obj]:
    patcher = PATCHERS.get(content_type.split(";")[0].strip().lower())
    if patcher is None:
        raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                       f"accepted media types include: {', '.join(PATCHERS)}")
    return patcher


def _success(res: Resource, deleted: Obj) -> Obj:
    meta = deleted["metadata"]
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": meta["name"], "group": res.group, "kind": res.plural, "uid": meta["uid"]}}


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
