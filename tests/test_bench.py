"""The benchmark still runs (for a couple of seconds); its numbers are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script_runs_and_checks_integrity(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--duration", "1", "--warmup", "1",
         "--connections", "8", "--loadgen", "python", "--grpc-seconds", "1", "--overload-connections", "64", "--overload-seconds", "1",
         "--out", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["integrity_ok"] is True
    assert summary["inlet_events_per_s"] > 0 and summary["ceiling_events_per_s"] > 0
    assert summary["grpc_ingest_batch_events_per_s"] > 0
    assert 0 < summary["ratio_to_ceiling"]
    (round_,) = report["rounds"]
    assert round_["inlet"]["exit_code"] == 0  # SIGTERM under load: clean exit
    assert round_["integrity"]["stored_twice"] == 0
    overload = round_["overload"]
    assert overload["connections"] == 64 and sum(overload["statuses"].values()) > 0
    # only stored (200) or shed (503): never an error for the client's side
    assert set(overload["statuses"]) <= {"200", "503"}


def test_the_workers_comparison_runs_and_checks_integrity(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--workers", "2", "--duration", "1",
         "--warmup", "1", "--connections", "8", "--loadgen", "python", "--out", str(out)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["integrity_ok"] is True and summary["workers"] == 2
    assert summary["workers_1"]["events_per_s"] > 0 and summary["workers_2"]["events_per_s"] > 0
    assert summary["speedup"] > 0 and summary["ceiling_events_per_s"] > 0
    (round_,) = report["rounds"]
    assert round_["workers_2"]["exit_code"] == 0 and round_["workers_2"]["processes"] == 3
