"""The committed protobuf/gRPC code is exactly what scripts/gen_protos.py makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generated(folder: Path) -> dict[Path, bytes]:
    return {
        path.relative_to(folder): path.read_bytes()
        for path in folder.rglob("*")
        if path.name.endswith(GENERATED)
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _generated(tmp_path), _generated(ROOT / "proto")
    assert fresh.keys() == committed.keys()
    stale = sorted(str(path) for path in fresh if fresh[path] != committed[path])
    assert not stale, f"regenerate with `python scripts/gen_protos.py`: {stale}"


def test_generated_package_does_not_shadow_proto_plus() -> None:
    # `proto` is the import name of proto-plus (google-cloud-* libraries).
    import inlet.v1.events_pb2 as events

    assert events.__name__ == "inlet.v1.events_pb2"
    assert events.DESCRIPTOR.package == "inlet.v1"
