"""One exception type for everything the adapter refuses, carrying the gRPC
status it maps to, so the gRPC servicer and the in-process caller report the
same code for the same failure."""

from __future__ import annotations

import grpc


class AdapterError(Exception):
    """A failure with a definite gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def not_found(cls, message: str) -> "AdapterError":
        return cls(grpc.StatusCode.NOT_FOUND, message)

    @classmethod
    def invalid_argument(cls, message: str) -> "AdapterError":
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)

    @classmethod
    def failed_precondition(cls, message: str) -> "AdapterError":
        return cls(grpc.StatusCode.FAILED_PRECONDITION, message)

    @classmethod
    def internal(cls, message: str) -> "AdapterError":
        return cls(grpc.StatusCode.INTERNAL, message)
