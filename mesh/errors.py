"""The one exception family of the data and management planes.

Every refusal is a `MeshError` subclass carrying its gRPC status (and the HTTP
status the REST front end will use), so the mapping to the wire lives here and
nowhere else.
"""

from __future__ import annotations

import grpc


class MeshError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(MeshError):
    code, http_status = grpc.StatusCode.NOT_FOUND, 404


class InvalidInput(MeshError):
    code, http_status = grpc.StatusCode.INVALID_ARGUMENT, 400


class AlreadyExists(MeshError):
    code, http_status = grpc.StatusCode.ALREADY_EXISTS, 409


class CapacityExhausted(MeshError):
    """Nothing fits: the model is larger than the capacity, or the space is held
    by models that are loading or serving requests."""

    code, http_status = grpc.StatusCode.RESOURCE_EXHAUSTED, 503


class ModelLoadFailed(MeshError):
    """The model's last load failed and it is inside its retry back-off; the
    caller should fix the model (file, path, type) rather than retry at once."""

    code, http_status = grpc.StatusCode.FAILED_PRECONDITION, 422


class PreconditionFailed(MeshError):
    """The registry is not in the state the call needs (a model still referenced
    by a vModel, an expectedTargetModelId that no longer matches)."""

    code, http_status = grpc.StatusCode.FAILED_PRECONDITION, 409


class RuntimeUnavailable(MeshError):
    code, http_status = grpc.StatusCode.UNAVAILABLE, 503


class RegistryUnavailable(MeshError):
    code, http_status = grpc.StatusCode.UNAVAILABLE, 503


class Draining(RuntimeUnavailable):
    """This instance is shutting down and starts no new loads; the router
    takes it as "try another instance", like any UNAVAILABLE."""


class DeadlineExceeded(MeshError):
    code, http_status = grpc.StatusCode.DEADLINE_EXCEEDED, 504


class RuntimeCallError(MeshError):
    """A runtime answered with a status of its own; passed through as is."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityExhausted,
    grpc.StatusCode.UNAVAILABLE: RuntimeUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: ModelLoadFailed,
}


def error_from_status(code: grpc.StatusCode, message: str) -> MeshError:
    """The mesh error for a status reported by a runtime or a peer."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else RuntimeCallError(code, message)
