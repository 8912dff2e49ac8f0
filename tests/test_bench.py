"""The benchmark still runs (for a couple of seconds); its numbers are not judged here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_benchmark_script_runs_and_checks_integrity(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--duration",
            "1",
            "--warmup",
            "1",
            "--connections",
            "8",
            "--loadgen",
            "python",
            "--grpc-seconds",
            "1",
            "--overload-connections",
            "64",
            "--overload-seconds",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
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


def test_profiles_mix_has_the_issue_shape() -> None:
    """Per 20 requests: 12 track, 2 page, 3 identify, 1 alias, 1 group, 1 delete, each
    for a user picked per request."""
    from events import EventSource, profile_templates

    bodies = [json.loads(t.replace(b"__MID__", b"m")) for t in profile_templates()]
    types = sorted(body["type"] for body in bodies)
    assert types == sorted(
        ["track"] * 12 + ["page"] * 2 + ["identify"] * 3 + ["alias", "group", "delete"]
    )
    source = EventSource("p", redeliver=0.0, mix="profiles", users=500)
    users = {json.loads(source.next())["userId"] for _ in range(400)}
    assert len(users) > 100 and all(u.startswith("user-") and int(u[5:]) < 500 for u in users)


def test_the_mixes_compared_differ_only_where_they_should() -> None:
    """`profiles-no-deletes` is `profiles` with a track in the delete's slot (the same
    number of requests); `track` is one track event."""
    from events import MIXES

    def types(mix: str) -> list[str]:
        make, _ = MIXES[mix]
        return [json.loads(t.replace(b"__MID__", b"m"))["type"] for t in make()]

    with_deletes, without = types("profiles"), types("profiles-no-deletes")
    assert len(with_deletes) == len(without)
    changed = [(a, b) for a, b in zip(with_deletes, without, strict=True) if a != b]
    assert changed == [("delete", "track")]
    assert types("track") == ["track"] and MIXES["track"][1] == 0


def test_plan_measures_each_setup_once_and_adds_the_bases_figures_need() -> None:
    from mix import plan

    both = [
        s.label
        for s in plan(["deletes", "connections", "grpc"], ["sqlite", "postgresql"], [1, 2], 32, 256)
    ]
    assert both == [
        "sqlite profiles-no-deletes c32",
        "sqlite profiles c32",
        "postgresql profiles c32",
        "postgresql profiles-no-deletes c32",
        "postgresql profiles c256",
        "postgresql profiles c32 x1",
        "postgresql profiles c32 x2",
        "postgresql grpc",
        "postgresql ceiling",
    ]
    # Without a PostgreSQL server, its phases are left out rather than failed.
    sqlite = [
        s.label
        for s in plan(["profiles", "track", "connections", "grpc"], ["sqlite"], [1, 2], 32, 256)
    ]
    assert sqlite == ["sqlite profiles c32", "sqlite track c32"]


def _phase(label: str, round_: int, rate: float, **fields: Any) -> dict[str, Any]:
    from figures import MIX

    store, kind = label.split()[:2]
    http = kind not in ("grpc", "ceiling")
    phase: dict[str, Any] = {
        "label": label,
        "round": round_,
        "store": store,
        "kind": "http" if http else kind,
        "mix": kind if http else MIX,
        "events_per_s": rate,
        "cpu_us_per_event": {"inlet": 100.0, "postgres_backends": 50.0},
        "integrity": {"ok": True},
        "exit_codes": [0],
    }
    if http:
        phase.update(
            p50_ms=10.0, p99_ms=20.0, shed_share=0.0, no_retry_after=0, statuses={200: 100}
        )
    phase.update(fields)
    return phase


def test_figures_are_medians_of_ratios_taken_within_a_round() -> None:
    from figures import checks, figures

    phases = [
        _phase("sqlite profiles c32", 0, 1000),
        _phase("postgresql profiles c32", 0, 500),
        _phase("sqlite profiles c32", 1, 2000),
        _phase("postgresql profiles c32", 1, 1800),
        _phase("sqlite profiles c32", 2, 100),
        _phase("postgresql profiles c32", 2, 80),
        _phase("sqlite profiles-no-deletes c32", 0, 1250),
        _phase(
            "postgresql profiles c256",
            0,
            450,
            shed_share=0.25,
            no_retry_after=3,
            statuses={200: 90, 503: 30},
        ),
        _phase("postgresql profiles c32 x1", 1, 1800),
        _phase(
            "postgresql profiles c32 x2",
            1,
            2700,
            p99_ms=30.0,
            backends={
                "busy_backends_mean": 1.2,
                "states": {
                    "on CPU": {"share": 0.5},
                    "Lock: row lock (transactionid)": {"share": 0.3},
                    "Lock: NOTIFY's commit lock (object of pg_database)": {"share": 0.1},
                },
            },
        ),
        _phase("postgresql grpc", 0, 20_000),
        _phase("postgresql ceiling", 0, 50_000, load={"statement_ms": {"p50": 9.0}}),
    ]
    figs = figures(phases, connections=32, many=256, cores=[1, 2])
    mix = figs["webhook_pg_to_sqlite_profiles"]
    # per round 0.5, 0.9, 0.8: the median of the ratios, not the ratio of the medians
    assert mix["rounds"] == [0.5, 0.9, 0.8] and mix["ratio"] == 0.8 and mix["met"] is True
    assert mix["postgresql"]["events_per_s"] == 500 and mix["p99_met"] is True
    assert figs["webhook_pg_to_sqlite_track"] is None and figs["deletes_postgresql"] is None
    deletes = figs["deletes_sqlite"]  # only round 0 has both: 1000 with, 1250 without
    assert deletes["rounds"] == [0.8] and deletes["with_deletes"]["events_per_s"] == 1000
    many = figs["many_connections_pg"]
    assert many["ratio"] == 0.9 and many["met"] is False and many["no_retry_after"] == 3
    assert many["measured"]["shed_share"] == 0.25
    grpc = figs["grpc_to_pg_ceiling"]
    assert grpc["ratio"] == 0.4 and grpc["met"] is False
    assert grpc["ceiling_statement_ms_p50"] == 9.0
    # two pairs of `serve core` + `serve bridge` against one pair, and against one
    # `inlet serve` (no gRPC hop), both in round 1 (1800/s each)
    two = figs["cores_pg"]["2"]
    assert two["to_1_core"]["rounds"] == [1.5] and two["to_1_core"]["met"] is True
    assert two["to_one_process"] == {"ratio": 1.5, "rounds": [1.5]}
    assert figs["cores_pg"]["1"]["to_one_process"]["ratio"] == 1.0
    assert "to_1_core" not in figs["cores_pg"]["1"]
    assert two["backends"]["lock_wait_share"] == 0.4
    assert two["cpu_us_per_event"] == {"inlet": 100.0, "postgres_backends": 50.0}
    assert checks(phases)["unexpected_statuses"] == {}
    assert checks(phases)["shed_without_retry_after"] == 3


def test_checks_name_statuses_other_than_stored_or_shed() -> None:
    from figures import checks

    bad = _phase("sqlite track c32", 0, 10, statuses={200: 5, 500: 1}, exit_codes=[0, -9])
    found = checks([bad, _phase("sqlite profiles c32", 0, 10)])
    assert found["unexpected_statuses"] == {"sqlite track c32": {500: 1}}
    assert found["exits_clean"] is False


def test_a_lock_wait_gone_from_pg_locks_is_named_by_its_wait_event() -> None:
    from pg_activity import wait_category

    assert wait_category(("active", "Lock", "transactionid", None, None, None, None)) == (
        "Lock: row lock (transactionid)"
    )
    assert (
        wait_category(("active", "Lock", "object", "object", "AccessExclusiveLock", 1262, None))
        == "Lock: NOTIFY's commit lock (object of pg_database)"
    )
    assert wait_category(("idle", None, None, None, None, None, None)) is None


def _run_mix(out: Path, *flags: str) -> dict[str, Any]:
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "mix.py"),
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--rounds",
            "1",
            "--connections",
            "4",
            "--loadgen",
            "python",
            "--out",
            str(out),
            *flags,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_mix_script_runs_the_sqlite_phases(tmp_path: Path) -> None:
    report = _run_mix(tmp_path / "mix.json")
    assert [p["label"] for p in report["phases"]] == [
        "sqlite profiles-no-deletes c4",
        "sqlite profiles c4",
        "sqlite track c4",
    ]
    for phase in report["phases"]:
        assert phase["events_per_s"] > 0 and set(phase["statuses"]) == {"200"}
        assert phase["integrity"]["ok"] is True and phase["exit_codes"] == [0]
    # without deletes, every acknowledged event was counted in the store
    assert report["phases"][0]["integrity"]["stored_events"] > 0
    figs = report["figures"]
    assert figs["deletes_sqlite"]["ratio"] > 0
    assert figs["webhook_pg_to_sqlite_profiles"] is None and figs["cores_pg"] is None
    assert report["checks"]["failed_phases"] == []


def test_mix_script_runs_the_postgresql_phases(tmp_path: Path) -> None:
    """Every PostgreSQL-only phase, briefly: many connections, gRPC against the bare
    asyncpg ceiling, two cores with the wait sampler."""
    dsn = os.environ.get("INLET_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.skip("set INLET_TEST_POSTGRES_DSN=postgresql://... to run it")
    report = _run_mix(
        tmp_path / "mix.json",
        "--postgres",
        dsn,
        "--no-sqlite",
        "--phases",
        "connections,grpc",
        "--cores",
        "1",
        "2",
        "--many-connections",
        "16",
        "--batch",
        "50",
        "--inflight",
        "2",
        "--sample-waits",
    )
    figs = report["figures"]
    assert figs["many_connections_pg"]["measured"]["events_per_s"] > 0
    grpc = figs["grpc_to_pg_ceiling"]
    assert grpc["grpc"]["events_per_s"] > 0 and grpc["ceiling"]["events_per_s"] > 0
    two = figs["cores_pg"]["2"]
    assert two["to_1_core"]["ratio"] > 0 and two["cpu_us_per_event"]["postgres_backends"] > 0
    assert two["backends"]["busy_backends_mean"] > 0
    assert report["checks"]["integrity_ok"] is True and report["checks"]["exits_clean"] is True
    assert report["environment"]["postgres"]["synchronous_commit"] == "on"


def test_the_pg_ceiling_table_is_inlets_events_table(pg_dsn: str) -> None:
    """The ceiling inserts into a table with the columns and indexes of Inlet's `events`
    as its migrations leave it (names aside): a schema change shows here first."""
    import asyncpg
    from pg_ceiling import _SCHEMA

    from service.store.postgres.schema import migrate
    from tests.pg import in_thread

    async def shapes() -> tuple[list[tuple[Any, ...]], ...]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await migrate(conn)
            await conn.execute(_SCHEMA)
            found = []
            for table in ("events", "ceiling_events"):
                columns = await conn.fetch(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                    " WHERE table_name = $1 AND table_schema = current_schema()"
                    " ORDER BY ordinal_position",
                    table,
                )
                indexes = await conn.fetch(
                    "SELECT replace(replace(indexdef, 'ceiling_', ''), $1, '') FROM pg_indexes"
                    " WHERE tablename = $2 AND schemaname = current_schema() ORDER BY 1",
                    f"{table.removeprefix('ceiling_')}_",
                    table,
                )
                found += [[tuple(r) for r in columns], [tuple(r) for r in indexes]]
            return tuple(found)
        finally:
            await conn.close()

    events_columns, events_indexes, ceiling_columns, ceiling_indexes = in_thread(shapes)
    assert ceiling_columns == events_columns
    assert ceiling_indexes == events_indexes and len(events_indexes) == 4


def test_the_workers_comparison_runs_and_checks_integrity(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--workers",
            "2",
            "--pin-workers",
            "--duration",
            "1",
            "--warmup",
            "1",
            "--connections",
            "8",
            "--loadgen",
            "python",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["integrity_ok"] is True and summary["workers"] == 2
    assert summary["workers_1"]["events_per_s"] > 0 and summary["workers_2"]["events_per_s"] > 0
    assert summary["speedup"] > 0 and summary["ceiling_events_per_s"] > 0
    assert summary["workers_2_pinned"]["events_per_s"] > 0 and summary["speedup_pinned"] > 0
    (round_,) = report["rounds"]
    for label in ("workers_2", "workers_2_pinned"):
        assert round_[label]["exit_code"] == 0 and round_[label]["processes"] == 3
    assert round_["order"] == ["workers_1", "workers_2", "workers_2_pinned"]


def test_a_server_that_exits_before_it_is_up_is_reported_at_once() -> None:
    """Not after the 30 s readiness wait, and with its exit code (a port taken since
    free_port() chose it, a bad flag)."""
    from run import free_port, wait_until_up

    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match=r"exited with \[3\]"):
        wait_until_up(f"http://127.0.0.1:{free_port()}/readyz", timeout=600, servers=[dead])


def test_the_erase_stall_script_runs_and_the_deleted_history_leaves_the_file() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "erase_stall.py"), "2000"],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["history"] == 2000 and report["other_writes"] > 0
    assert report["erased_after_s"] >= 0 and report["other_max_ms"] >= report["other_p99_ms"]
