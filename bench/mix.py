"""The profile-building mix on SQLite and PostgreSQL, in the same run.

    python bench/mix.py [--postgres DSN] [--no-sqlite] [--mix profiles] [--cores 1 [2 ...]]
                        [--duration 10] [--warmup 3] [--connections 32] [--rounds 2]
                        [--sample-waits] [--pin] [--out FILE]

Drives `POST /segment` with a mix of events.MIXES (`profiles` by default: over 500
users, per 20 requests 12 track, 2 page, 3 identify, 1 alias, 1 group, 1 delete; unique
messageIds, a few percent redelivered) against `inlet serve` on SQLite and, with
`--postgres`, on a new PostgreSQL database per phase; the stores alternate within each
round so that both see the same minute of a noisy machine. `--cores 1 2` measures
PostgreSQL once per count in each round: N > 1 runs N `serve core` and N `serve bridge`
processes instead of one `inlet serve`, the connections split evenly across the bridges.

Per phase: stored requests/s, p50/p99 latency (the worst bridge's with N > 1), CPU
per stored event in the Inlet processes and in the database's backends (those of the
phase's database: with --cores 1 that is the pool and the LISTEN connection) and, with
`--sample-waits`, what those backends were doing, sampled every 20 ms from
pg_stat_activity and pg_locks: on CPU, waiting for Inlet's next statement inside a
transaction, or waiting on a lock (which one) or on I/O. The sampler is one more
client of the server: compare phases measured with it to each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import run  # the benchmark's process, pinning and load helpers
from events import MIXES

# -- what the database's backends are doing -------------------------------------------------

_SAMPLE = """
    SELECT a.state, a.wait_event_type, a.wait_event, l.locktype, l.mode, l.classid,
           l.relation::regclass::text
    FROM pg_stat_activity a
    LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
    WHERE a.datname = $1 AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
"""


def wait_category(row: tuple[Any, ...]) -> str | None:
    """What one backend is doing, as a short label; None when it is idle (no transaction)."""
    state, kind, event, locktype, mode, classid, relation = row
    if state == "idle":
        return None
    if state and state.startswith("idle in transaction"):
        return "in transaction, waiting for the client's next statement"
    if kind is None:
        return "on CPU"
    if kind == "Lock":
        if locktype == "object" and classid == 1262:
            return "Lock: NOTIFY's commit lock (object of pg_database)"
        if locktype in ("transactionid", "tuple"):
            return f"Lock: row lock ({locktype}, {mode})"
        return f"Lock: {locktype} {mode} {relation or ''}".rstrip()
    return f"{kind}: {event}"


class WaitSampler:
    """Samples pg_stat_activity/pg_locks for one database on a thread of its own."""

    def __init__(self, dsn: str, database: str, interval_s: float = 0.02) -> None:
        self._dsn, self._database, self._interval = dsn, database, interval_s
        self._stop = threading.Event()
        self.samples = 0
        self.busy: Counter[str] = Counter()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    async def _run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(_SAMPLE, self._database)
                self.samples += 1
                for row in rows:
                    label = wait_category(tuple(row))
                    if label is not None:
                        self.busy[label] += 1
                await asyncio.sleep(self._interval)
        finally:
            await conn.close()

    def summary(self) -> dict[str, Any]:
        """Per label: the mean number of backends in that state (over all samples) and its
        share of all non-idle backend time."""
        total = sum(self.busy.values()) or 1
        return {
            "samples": self.samples,
            "busy_backends_mean": sum(self.busy.values()) / max(self.samples, 1),
            "states": {
                label: {
                    "backends_mean": round(count / max(self.samples, 1), 3),
                    "share": round(count / total, 3),
                }
                for label, count in self.busy.most_common()
            },
        }


def backend_pids(dsn: str, database: str) -> list[int]:
    import asyncpg

    async def fetch() -> list[int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            return [int(row[0]) for row in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())


# -- one phase: one store, N cores ------------------------------------------------------------


def start_servers(database: str, cores: int, data: Path, serve_args: list[str]) -> tuple[
    list[subprocess.Popen[bytes]], list[str]
]:  # fmt: skip
    """`inlet serve` (one core) or N `serve core` + N `serve bridge`: processes, bridge URLs."""
    python = [*run.pinned(run.SERVER_CPUS), sys.executable, "-m", "service.cli", "serve"]
    processes: list[subprocess.Popen[bytes]] = []
    urls = []
    if cores == 1:
        port, grpc_port = run.free_port(), run.free_port()
        processes.append(subprocess.Popen(
            [*python, "--database", database, "--host", "127.0.0.1", "--port", str(port),
             "--grpc", f"127.0.0.1:{grpc_port}", *serve_args],
            cwd=data, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
    else:
        for _ in range(cores):
            port, grpc_port = run.free_port(), run.free_port()
            processes.append(subprocess.Popen(
                [*python, "core", "--database", database, "--grpc", f"127.0.0.1:{grpc_port}",
                 *serve_args],
                cwd=data, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            processes.append(subprocess.Popen(
                [*python, "bridge", "--core", f"127.0.0.1:{grpc_port}", "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=data, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        run.wait_until_up(f"{url}/readyz")
    return processes, urls


def drive_all(
    urls: list[str], key: str, seconds: float, connections: int, args: argparse.Namespace,
    work: Path,
) -> list[dict[str, Any]]:  # fmt: skip
    """The load split over the bridges, all at once."""
    share = max(1, connections // len(urls))
    prefix = f"m{time.time_ns()}"
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(
            lambda n: run.drive(urls[n], key, seconds, share, args.loadgen, f"{prefix}b{n}",
                                work, args.mix),
            range(len(urls)),
        ))  # fmt: skip


def phase(store: str, cores: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = work / f"{store}-{time.time_ns()}"
    data.mkdir()
    if store == "sqlite":
        database, pg_name = str(data / "inlet.db"), None
    else:
        pg_name = f"inlet_mix_{time.time_ns()}"
        run.postgres(args.postgres, f'CREATE DATABASE "{pg_name}"')
        database = urllib.parse.urlunsplit(
            urllib.parse.urlsplit(args.postgres)._replace(path="/" + pg_name)
        )
    try:
        key = run.inlet("keys", "create", "--database", database, "--account", "bench", cwd=data)
        processes, urls = start_servers(database, cores, data, args.serve_args)
        try:
            drive_all(urls, key, args.warmup, args.connections, args, work)
            inlet_pids = [p for process in processes for p in run.process_tree(process.pid)]
            pg_pids = backend_pids(args.postgres, pg_name) if pg_name else []
            cpu_inlet = run.cpu_seconds(inlet_pids)
            cpu_pg = run.cpu_seconds(pg_pids)
            sampler = WaitSampler(args.postgres, pg_name) if pg_name and args.sample_waits else None
            if sampler is not None:
                sampler.start()
            try:
                runs = drive_all(urls, key, args.duration, args.connections, args, work)
            finally:
                if sampler is not None:
                    sampler.stop()
            cpu_inlet = run.cpu_seconds(inlet_pids) - cpu_inlet
            cpu_pg = run.cpu_seconds(pg_pids) - cpu_pg
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
        stored = sum(r["statuses"].get(200, 0) for r in runs)
        seconds = max(r["seconds"] for r in runs)
        result: dict[str, Any] = {
            "store": store,
            "cores": cores,
            "requests_per_s": stored / seconds,
            "statuses": dict(sum((Counter(r["statuses"]) for r in runs), Counter())),
            "p50_ms": max(r["latency_ms"]["p50"] for r in runs),
            "p99_ms": max(r["latency_ms"]["p99"] for r in runs),
            "per_bridge": [r["latency_ms"] for r in runs],
            "cpu_us_per_event": {
                "inlet": 1e6 * cpu_inlet / max(stored, 1),
                "postgres_backends": 1e6 * cpu_pg / max(stored, 1) if pg_name else None,
            },
        }
        if sampler is not None:
            result["backends"] = sampler.summary()
        return result
    finally:
        if pg_name:
            run.postgres(args.postgres, f'DROP DATABASE "{pg_name}" WITH (FORCE)')


def label(store: str, cores: int) -> str:
    return store if cores == 1 else f"{store} x{cores}"


def summarise(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per setup; each PostgreSQL setup's rate over SQLite's of the same round."""
    summary: dict[str, Any] = {}
    by_setup: dict[str, list[dict[str, Any]]] = {}
    for p in phases:
        by_setup.setdefault(label(p["store"], p["cores"]), []).append(p)
    sqlite = {p["round"]: p["requests_per_s"] for p in by_setup.get("sqlite", [])}
    for name, mine in by_setup.items():
        summary[name] = {
            key: statistics.median(p[key] for p in mine)
            for key in ("requests_per_s", "p50_ms", "p99_ms")
        }
        ratios = [p["requests_per_s"] / sqlite[p["round"]] for p in mine if p["round"] in sqlite]
        if name != "sqlite" and ratios:
            summary[name]["to_sqlite"] = {"median": statistics.median(ratios), "rounds": ratios}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--postgres", help="a DSN: each phase gets a new database on its server")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL phases only")
    parser.add_argument("--mix", choices=sorted(MIXES), default="profiles")
    parser.add_argument(
        "--cores", type=int, nargs="+", default=[1], help="PostgreSQL: cores and bridges, per phase"
    )
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="repeat, report medians")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--sample-waits", action="store_true")
    parser.add_argument(
        "--pin", action="store_true", help="servers on the last CPU, load on the rest"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("serve_args", nargs="*", help="extra flags for `inlet serve` (after --)")
    args = parser.parse_args(argv)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    setups = [] if args.no_sqlite else [("sqlite", 1)]
    if args.postgres:
        setups += [("postgresql", cores) for cores in args.cores]
    if not setups:
        parser.error("nothing to measure: give --postgres, or drop --no-sqlite")
    run.pin(args.pin)
    work = Path(tempfile.mkdtemp(prefix="inlet-mix-"))
    phases: list[dict[str, Any]] = []
    try:
        for number in range(args.rounds):
            # Alternate the order, so that no setup always gets the fresher minute.
            for store, cores in setups if number % 2 == 0 else setups[::-1]:
                result = phase(store, cores, args, work)
                result["round"] = number
                phases.append(result)
                print(f"round {number + 1} {label(store, cores)}: " + json.dumps({
                    "req_s": round(result["requests_per_s"]), "p50_ms": round(result["p50_ms"], 1),
                    "p99_ms": round(result["p99_ms"], 1),
                    "cpu_us": {k: v and round(v) for k, v in result["cpu_us_per_event"].items()},
                }), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"mix": args.mix, "connections": args.connections, "loadgen": args.loadgen,
              "summary": summarise(phases), "phases": phases}  # fmt: skip
    out = args.out or ROOT / "bench" / "results" / time.strftime("mix-%Y%m%dT%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
