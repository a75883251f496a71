"""Custom CA certificates from the storage config (`certificate`: PEM text).

As in ModelMesh, a configured CA replaces the system trust store for that
storage (a private MinIO with its own CA should not also trust the world).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from pathlib import Path

from ..errors import PullError


def ssl_context(pem: str, *, where: str) -> ssl.SSLContext:
    """A client context trusting exactly the CA(s) in `pem`."""
    try:
        return ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise PullError("invalid", f"'certificate' of {where} is not a valid PEM CA certificate") from None


def ca_bundle_file(pem: str, directory: Path, *, where: str) -> str:
    """The path of a file holding `pem` (for clients such as botocore that want a
    file). Named by content hash, written atomically; CA certificates are public."""
    ssl_context(pem, where=where)  # validate first, for a clear error
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha256(pem.encode()).hexdigest()}.pem"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(pem)
        os.replace(tmp, path)
    return str(path)
