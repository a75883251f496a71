"""Byte sizes and rates as people write them in scenario files and flags.

The sidecar CLI has its own ``_size`` helper, but importing ``mesh.cli`` from
here would make the simulator depend on the sidecar (grpc, protos) and form
an import cycle once ``mesh.cli`` mounts ``sim.cli``; so the simulator keeps
this small, stricter parser (negative and malformed values are errors, not
silently truncated).
"""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_rate", "parse_size"]

_UNITS = {
    "": 1,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50,
}
_SIZE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*([kmgtp]i?)?b?\s*$", re.IGNORECASE)


def parse_size(value: str | int | float) -> int:
    """'4GiB', '512MiB', '1.5G', '1000' (bytes) → bytes; ValueError if malformed or negative."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"not a size: {value!r} (examples: 512MiB, 4GiB, 1.5GB, 1000000)")
        number = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if number < 0:
        raise ValueError(f"size must not be negative, got {value!r}")
    return int(number)


def format_size(n_bytes: float) -> str:
    """Bytes → the shortest binary-unit string ('4GiB', '1.5MiB'), for tables."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.3g}{unit}"
    return f"{int(n_bytes)}B"


def parse_rate(value: str | int | float) -> float:
    """'5/s', '300/min', '2.5' (per second) → events per second; must be >= 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        per = {"/s": 1.0, "/sec": 1.0, "/min": 60.0, "/m": 60.0, "/h": 3600.0}
        divisor = 1.0
        for suffix, seconds in per.items():
            if text.endswith(suffix):
                text, divisor = text[: -len(suffix)], seconds
                break
        try:
            rate = float(text) / divisor
        except ValueError:
            raise ValueError(f"not a rate: {value!r} (examples: 5/s, 300/min, 2.5)") from None
    if rate < 0:
        raise ValueError(f"rate must not be negative, got {value!r}")
    return rate
