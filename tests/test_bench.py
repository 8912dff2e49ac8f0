"""The benchmark still runs (for a couple of seconds); its numbers are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_profiles_mix_has_the_issue_shape() -> None:
    """Per 20 requests: 12 track, 2 page, 3 identify, 1 alias, 1 group, 1 delete, each
    for a user picked per request."""
    sys.path.insert(0, str(ROOT / "bench"))
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
    sys.path.insert(0, str(ROOT / "bench"))
    from events import MIXES

    def types(mix: str) -> list[str]:
        make, _ = MIXES[mix]
        return [json.loads(t.replace(b"__MID__", b"m"))["type"] for t in make()]

    with_deletes, without = types("profiles"), types("profiles-no-deletes")
    assert len(with_deletes) == len(without)
    changed = [(a, b) for a, b in zip(with_deletes, without, strict=True) if a != b]
    assert changed == [("delete", "track")]
    assert types("track") == ["track"] and MIXES["track"][1] == 0


def test_mix_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "mix.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "mix.py"), "--duration", "1", "--warmup", "1",
         "--rounds", "1", "--connections", "4", "--loadgen", "python", "--out", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())
    (phase,) = report["phases"]
    assert phase["store"] == "sqlite" and phase["requests_per_s"] > 0
    assert set(phase["statuses"]) == {"200"}


def test_the_pg_ceiling_table_is_inlets_events_table(pg_dsn: str) -> None:
    """The ceiling inserts into a table with the columns and indexes of Inlet's `events`
    as its migrations leave it (names aside): a schema change shows here first."""
    import asyncpg

    sys.path.insert(0, str(ROOT / "bench"))
    from pg_ceiling import _SCHEMA

    from service.store.pg_schema import migrate
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
                    " ORDER BY ordinal_position", table)  # fmt: skip
                indexes = await conn.fetch(
                    "SELECT replace(replace(indexdef, 'ceiling_', ''), $1, '') FROM pg_indexes"
                    " WHERE tablename = $2 AND schemaname = current_schema() ORDER BY 1",
                    f"{table.removeprefix('ceiling_')}_", table)  # fmt: skip
                found += [[tuple(r) for r in columns], [tuple(r) for r in indexes]]
            return tuple(found)
        finally:
            await conn.close()

    events_columns, events_indexes, ceiling_columns, ceiling_indexes = in_thread(shapes)
    assert ceiling_columns == events_columns
    assert ceiling_indexes == events_indexes and len(events_indexes) == 4
