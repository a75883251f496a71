"""Writes a model id into a serialized protobuf message without knowing its
schema, at a path of field numbers (ModelMesh's `idInjectionPath`): all but
the last name embedded-message fields, the last a string field.

Used for methods the mesh passes through as opaque bytes (TF-Serving-style or
custom runtime APIs), so a runtime that reads the model name from its request
gets the concrete model id the mesh resolved.
"""

from __future__ import annotations

from collections.abc import Sequence

LENGTH_DELIMITED = 2


class SpliceError(ValueError):
    """The bytes are not a protobuf message of the shape the path says."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise SpliceError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise SpliceError("varint too long")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _read_varint(data, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise SpliceError(f"unsupported wire type {wire_type}")


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | LENGTH_DELIMITED) + _varint(len(payload)) + payload


def splice_string(message: bytes, path: Sequence[int], value: str) -> bytes:
    """`message` with the string at `path` set to `value` (created if absent).
    Every occurrence of the path's fields is rewritten, as a parser keeps the
    last one for scalars and merges repeated embedded messages."""
    if not path:
        raise SpliceError("empty injection path")
    head, rest = path[0], path[1:]
    out = bytearray()
    pos = 0
    found = False
    while pos < len(message):
        start = pos
        tag, pos = _read_varint(message, pos)
        number, wire_type = tag >> 3, tag & 7
        end = _skip(message, pos, wire_type)
        if end > len(message):
            raise SpliceError("field runs past the end of the message")
        if number != head:
            out += message[start:end]
        else:
            if wire_type != LENGTH_DELIMITED:
                raise SpliceError(f"field {number} is not a string or message")
            found = True
            if rest:
                length, body_start = _read_varint(message, pos)
                out += _field(number, splice_string(message[body_start:end], rest, value))
            else:
                out += _field(number, value.encode("utf-8"))
        pos = end
    if not found:
        inner = value.encode("utf-8") if not rest else splice_string(b"", rest, value)
        out += _field(head, inner)
    return bytes(out)
