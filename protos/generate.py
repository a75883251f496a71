"""Regenerate the Python modules for the `.proto` files in this folder.

Usage: ``python -m protos.generate`` rewrites the generated modules;
``python -m protos.generate --check`` exits 1 when they are stale (the test
suite runs the check, so a proto edit without regeneration fails CI).

The generator is pinned (grpcio-tools in the ``dev`` extra) because its output
changes between releases; the check compares byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generated_names(proto: Path) -> list[str]:
    stem = proto.stem
    return [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]


def generate_into(out_root: Path) -> None:
    """Run protoc so that modules land in ``out_root/protos`` and import as ``protos.x``."""
    from grpc_tools import protoc  # imported lazily: only the dev extra has it

    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(REPO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for module in (out_root / "protos").glob("*_pb2.py"):
        use_private_pool(module)


DEFAULT_POOL_CALL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL_IMPORT = "from protos.descriptor_pool import POOL as _mmesh_pool\n"


def use_private_pool(module: Path) -> None:
    """Point a generated *_pb2.py at `protos.descriptor_pool.POOL` (see there why)."""
    text = module.read_text()
    if DEFAULT_POOL_CALL not in text:
        raise SystemExit(f"{module.name}: generator output changed; cannot isolate its descriptor pool")
    text = text.replace(DEFAULT_POOL_CALL, "_mmesh_pool.AddSerializedFile(")
    text = text.replace("# @@protoc_insertion_point(imports)\n", PRIVATE_POOL_IMPORT + "# @@protoc_insertion_point(imports)\n", 1)
    module.write_text(text)


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate_into(Path(tmp))
        stale = []
        for proto in proto_files():
            for name in generated_names(proto):
                fresh, current = Path(tmp) / "protos" / name, PROTO_DIR / name
                if not current.exists() or not filecmp.cmp(fresh, current, shallow=False):
                    stale.append(name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale modules")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated modules: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate_into(Path(tmp))
        for proto in proto_files():
            for name in generated_names(proto):
                shutil.copyfile(Path(tmp) / "protos" / name, PROTO_DIR / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
