"""The one exception the puller raises.

Callers (the runtime adapter, the mesh at registration) need to tell three
things apart without parsing messages: *why* a pull failed (so it can be
mapped to a gRPC status / load-failure reason), *whether trying again could
help* (so back-off decisions are not guessed), and a human message that is
safe to show (it never carries secrets: messages are built from our own
words, object names and server error codes, never from credentials).
"""

from __future__ import annotations

from typing import Literal

Reason = Literal["invalid", "not_found", "denied", "unavailable", "unsupported", "deadline"]

REASONS: frozenset[str] = frozenset({"invalid", "not_found", "denied", "unavailable", "unsupported", "deadline"})


class PullError(Exception):
    """A model could not be pulled.

    reason:
      invalid      the model path / key / storage config is malformed or unsafe
      not_found    the object, prefix, file or storage key does not exist
      denied       the storage refused our credentials
      unavailable  the storage could not be reached or failed (retryable ones are retried)
      unsupported  a storage type or form this build cannot serve
      deadline     the pull deadline passed
    """

    def __init__(self, reason: Reason, message: str, *, retryable: bool = False) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown PullError reason {reason!r}")
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.retryable = retryable

    def __reduce__(self) -> tuple[object, tuple[str, str, bool]]:
        # picklable, e.g. across a process pool (the default reduce would call PullError(message))
        return (_rebuild, (self.reason, self.message, self.retryable))

    def copy(self) -> "PullError":
        """A fresh exception with the same fields, to re-raise in another thread
        (raising one exception object from several threads tangles tracebacks)."""
        return PullError(self.reason, self.message, retryable=self.retryable)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __repr__(self) -> str:
        return f"PullError(reason={self.reason!r}, retryable={self.retryable}, message={self.message!r})"


def _rebuild(reason: Reason, message: str, retryable: bool) -> PullError:
    return PullError(reason, message, retryable=retryable)
