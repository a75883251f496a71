"""Triton Inference Server behind the SPI (model types onnx, pytorch,
tensorflow, tensorrt, keras, and `triton` for a directory with its own
`config.pbtxt`).

Triton runs with `--model-repository=<models_dir>/_triton_models
--model-control-mode=explicit`. It names a model after its directory, so the
name it knows is our safe directory name for the mesh id. Two layouts, as in
ModelMesh's Triton adapter:

* native (the model dir has `config.pbtxt`): every entry symlinked, and
  `config.pbtxt` rewritten without its top-level `name` (Triton rejects a
  name that differs from the directory's);
* generated: the model file symlinked as version 1 under Triton's default
  file name for its backend (`1/model.onnx`, `1/model.pt`, …) next to a minimal
  `config.pbtxt` (backend, `max_batch_size: 0`, and the tensors of
  `_schema.json` when there is one; without it Triton's auto-complete fills
  them in where the backend can, e.g. ONNX).

Keras `.h5` files are not converted (ModelMesh shells out to a TF script);
a Keras model must come as a SavedModel directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from runtime_adapter.errors import AdapterError
from runtime_adapter.external.base import ExternalServer
from runtime_adapter.external.layout import link_contents
from runtime_adapter.schema import ModelSchema, read_schema
from runtime_adapter.runtimes.base import TensorSpec, resolve_model_file

CONFIG_FILE = "config.pbtxt"
NATIVE_TYPE = "triton"
VERSION = "1"
SAVED_MODEL_FILE = "saved_model.pb"

DATATYPE_TO_TRITON = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BF16": "TYPE_BF16",
    "BYTES": "TYPE_STRING",
}


@dataclass(frozen=True)
class Backend:
    """How Triton serves one model type: backend, the file name it expects in
    a version directory, and the suffixes of a model file (none: the model is
    a TensorFlow SavedModel directory)."""

    backend: str
    file_name: str
    suffixes: tuple[str, ...] = ()
    platform: str = ""

    def locate(self, source: Path) -> Path:
        """The model file (or SavedModel directory) inside `source`."""
        if self.suffixes:
            return resolve_model_file(source, self.suffixes, self.file_name)
        for candidate in (source, source / self.file_name):
            if (candidate / SAVED_MODEL_FILE).is_file():
                return candidate
        raise AdapterError.failed_precondition(
            f"no TensorFlow SavedModel ({SAVED_MODEL_FILE}) in {str(source)!r}; Keras .h5 files must be "
            "converted to a SavedModel first"
        )


_SAVED_MODEL = Backend("tensorflow", "model.savedmodel", platform="tensorflow_savedmodel")
BACKENDS: dict[str, Backend] = {
    "onnx": Backend("onnxruntime", "model.onnx", (".onnx",)),
    "pytorch": Backend("pytorch", "model.pt", (".pt", ".pth")),
    "tensorrt": Backend("tensorrt", "model.plan", (".plan", ".engine")),
    "tensorflow": _SAVED_MODEL,
    "keras": _SAVED_MODEL,
}


# ---- config.pbtxt ----------------------------------------------------------------

_NAME_FIELD = re.compile(r"""name\s*:\s*("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')[ \t]*[,;]?""")
_OPEN, _CLOSE = "{[<", "}]>"


def _string_end(text: str, start: int) -> int:
    """Index just past the quoted string opening at `start`."""
    quote, i = text[start], start + 1
    while i < len(text) and text[i] not in (quote, "\n"):
        i += 2 if text[i] == "\\" else 1
    return min(i + 1, len(text))


def strip_model_name(config: str) -> str:
    """`config` (protobuf text format) without its top-level `name` field.

    Scans rather than matching lines: input/output blocks have `name`s of
    their own that must stay, and comments or strings may contain anything.
    """
    out: list[str] = []
    depth, i = 0, 0
    while i < len(config):
        c = config[i]
        if c == "#":
            end = config.find("\n", i)
            end = len(config) if end < 0 else end
            out.append(config[i:end])
            i = end
            continue
        if c in "\"'":
            end = _string_end(config, i)
            out.append(config[i:end])
            i = end
            continue
        if depth == 0 and c == "n" and (i == 0 or not (config[i - 1].isalnum() or config[i - 1] == "_")):
            match = _NAME_FIELD.match(config, i)
            if match:
                i = match.end()
                continue
        depth += c in _OPEN
        depth -= c in _CLOSE
        out.append(c)
        i += 1
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_blocks(field: str, specs: Sequence[TensorSpec]) -> list[str]:
    if not specs:
        return []
    blocks = []
    for spec in specs:
        lines = [f"    name: {_quote(spec.name)}", f"    data_type: {DATATYPE_TO_TRITON[spec.datatype]}"]
        if spec.shape:
            lines.append(f"    dims: [ {', '.join(str(d) for d in spec.shape)} ]")
        else:  # a scalar: Triton wants at least one dim, reshaped away
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return [f"{field} [\n" + ",\n".join(blocks) + "\n]"]


def generated_config(backend: Backend, schema: ModelSchema | None) -> str:
    """A minimal config.pbtxt; `max_batch_size: 0` because a schema's shapes
    are full shapes, batch dimension included."""
    lines = [f"backend: {_quote(backend.backend)}"]
    if backend.platform:
        lines.append(f"platform: {_quote(backend.platform)}")
    lines.append("max_batch_size: 0")
    if schema is not None:
        lines += _tensor_blocks("input", schema.inputs)
        lines += _tensor_blocks("output", schema.outputs)
    return "\n".join(lines) + "\n"


def latest_version_dir(source: Path) -> Path:
    """A Triton-style model dir's highest numeric version dir, else `source`."""
    if not source.is_dir():
        return source
    versions = [p for p in source.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) if versions else source


class Triton(ExternalServer):
    kind = "triton"
    layout_dir_name = "_triton_models"
    model_types = (*BACKENDS, NATIVE_TYPE)

    def write_layout(self, model_id: str, model_type: str, source: Path, target: Path) -> str:
        native = source / CONFIG_FILE
        if native.is_file():
            try:
                config = native.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise AdapterError.failed_precondition(f"cannot read {str(native)!r}: {exc}") from exc
            link_contents(source, target, skip=frozenset({CONFIG_FILE}))
            (target / CONFIG_FILE).write_text(strip_model_name(config))
            return target.name
        backend = BACKENDS.get(model_type)
        if backend is None:
            raise AdapterError.failed_precondition(f"model type {model_type!r} needs a {CONFIG_FILE} in {str(source)!r}")
        model = backend.locate(latest_version_dir(source))
        (target / VERSION).mkdir()
        (target / VERSION / backend.file_name).symlink_to(model.absolute())
        (target / CONFIG_FILE).write_text(generated_config(backend, read_schema(source)))
        return target.name
