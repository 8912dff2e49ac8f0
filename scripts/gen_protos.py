"""Regenerate the committed protobuf/gRPC code under proto/inlet/ from its .proto files.

This is the only way generated code enters the repository. The tool versions are
pinned (in pyproject's `test` extra) so that the output is byte-identical on any
machine; tests/test_generated_code.py runs this script into a temporary folder and
fails when the committed files differ.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: proto/, in place)
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
# `protoc.main` (unlike `python -m grpc_tools.protoc`) does not add the
# well-known types (google/protobuf/*.proto) to the include path by itself.
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"
# protoc-gen-mypy / protoc-gen-mypy_grpc are installed next to this interpreter.
BIN = Path(sys.executable).parent

PINNED = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}


def _check_versions() -> None:
    from importlib.metadata import version

    wrong = {name: version(name) for name, want in PINNED.items() if version(name) != want}
    if wrong:
        raise SystemExit(f"generate with the pinned tools {PINNED}, not {wrong}")


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc over every .proto under proto/; return the .proto files used."""
    _check_versions()
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{WELL_KNOWN}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return protos


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    target.mkdir(parents=True, exist_ok=True)
    for proto in generate(target):
        print(f"generated from {proto.relative_to(ROOT)}")
