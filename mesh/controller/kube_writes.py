"""The controller's writes to the Kubernetes API, each one blocking call of
the official client run on a worker thread. Responses are not deserialized
into models (`raw_call`): the informers' watches bring the result back anyway."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi

GROUP = "serving.kserve.io"
ISVC_VERSION = "v1beta1"
RUNTIME_VERSION = "v1alpha1"


def raw_call(method: Any, *args: Any, **kwargs: Any) -> bytes:
    """Call an API method (blocking) and return the response body as bytes,
    skipping the client's model deserialization. The body is read whole and
    the connection handed back to the pool: an unread `_preload_content=False`
    response would hold its connection until garbage-collected."""
    response = method(*args, _preload_content=False, **kwargs)
    try:
        return response.data
    finally:
        response.release_conn()


class KubeWriter:
    def __init__(self, api_client: ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = CustomObjectsApi(api_client)
        self.apps = AppsV1Api(api_client)
        self.core = CoreV1Api(api_client)

    async def _call(self, method: Any, *args: Any) -> None:
        await asyncio.to_thread(raw_call, method, *args)

    async def replace_isvc_status(self, isvc: dict[str, Any]) -> None:
        """Replace the status subresource; the body's resourceVersion makes a
        write based on a stale read fail with 409 instead of losing an update."""
        name = isvc["metadata"]["name"]
        await self._call(
            self.custom.replace_namespaced_custom_object_status,
            GROUP, ISVC_VERSION, self.namespace, "inferenceservices", name, isvc,
        )

    async def event(self, obj: dict[str, Any], kind: str, reason: str, message: str, component: str) -> None:
        """A core/v1 Event about `obj` (what `kubectl describe` lists):
        `kind` is Normal or Warning."""
        metadata = obj["metadata"]
        now = datetime.now(tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{metadata['name']}.{time.time_ns():x}", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": metadata["name"],
                "namespace": self.namespace, "uid": metadata.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call(self.core.create_namespaced_event, self.namespace, body)

    async def create_deployment(self, body: dict[str, Any]) -> None:
        await self._call(self.apps.create_namespaced_deployment, self.namespace, body)

    async def replace_deployment(self, body: dict[str, Any]) -> None:
        await self._call(self.apps.replace_namespaced_deployment, body["metadata"]["name"], self.namespace, body)

    async def delete_deployment(self, name: str) -> None:
        await self._call(self.apps.delete_namespaced_deployment, name, self.namespace)

    async def create_service(self, body: dict[str, Any]) -> None:
        await self._call(self.core.create_namespaced_service, self.namespace, body)

    async def replace_service(self, body: dict[str, Any]) -> None:
        await self._call(self.core.replace_namespaced_service, body["metadata"]["name"], self.namespace, body)

    async def delete_service(self, name: str) -> None:
        await self._call(self.core.delete_namespaced_service, name, self.namespace)
