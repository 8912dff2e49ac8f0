"""SQLite against PostgreSQL, in the same rounds: the figures of scale-out (issue 18).

    python bench/mix.py --postgres DSN [--quick] [--sample-waits]
        [--phases profiles,track,deletes,connections,grpc] [--cores 1 2] [--no-sqlite]
        [--duration 10] [--warmup 3] [--rounds 2] [--connections 32]
        [--many-connections 256] [--batch 500] [--inflight 4] [--pin] [--out FILE]
        [-- extra flags for `inlet serve`]

Each phase starts Inlet on a store of its own (SQLite in a temporary folder, or a new
PostgreSQL database on the server of `--postgres`, dropped afterwards), creates a key,
warms up, then measures. Every phase runs once per round and the order flips every
round, so that the setups compared share the same minutes of a noisy machine; the
figures are ratios taken within a round, then the median over rounds. The phases:

* `profiles`: POST /segment with the `profiles` mix of bench/events.py (500 users;
  per 20 requests 12 track, 2 page, 3 identify, 1 alias, 1 group, 1 delete) at
  `--connections`, on each store;
* `track`: the same with one track event (unique messageIds), on each store;
* `deletes`: the `profiles-no-deletes` mix (a track in the delete's slot), on each store;
* `connections`: the profiles mix with `--many-connections` on PostgreSQL;
* `grpc`: IngestBatch on PostgreSQL (bench/grpc_load.py: `--batch` events a call,
  `--inflight` calls at once), and a PostgreSQL ceiling (bench/pg_ceiling.py: bare
  asyncpg inserts of the same rows, `--batch` a transaction, `--inflight` connections);
* `--cores N …`: the profiles mix on PostgreSQL with N `serve core` + N `serve bridge`
  processes (the connections split evenly across the bridges) instead of one
  `inlet serve`, for each N; N pairs are compared with 1 pair (what more cores add)
  and with one `inlet serve` (what the gRPC hop between the halves costs).

Per HTTP phase: stored requests/s, p50/p99 (the worst bridge's with N > 1), statuses
(503s shed, and any 503 without Retry-After), CPU per stored event in the Inlet processes
and in the database's backends (those of the phase's database, pools and LISTEN
connections alike), integrity (nothing stored twice; without deletes, every 2xx
stored) and, with `--sample-waits`, what those backends were doing, sampled every
20 ms from pg_stat_activity and pg_locks: on CPU, waiting for Inlet's next statement
inside a transaction, or waiting on a lock (which one) or on I/O. The sampler is one
more client of the server. `--quick`: 2 s phases after 1 s of warm-up, one round.
The report (printed, and written as JSON to bench/results/) has `figures`, each with the
issue's target beside it, then every phase as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import run  # the benchmark's process, pinning and load helpers
from figures import MIX, NO_DELETES, TRACK, checks, figures, label, readable, setups_summary
from pg_activity import WaitSampler, backend_pids

PHASES = ("profiles", "track", "deletes", "connections", "grpc")


class CpuMeter:
    """CPU seconds a changing set of processes used since the meter was made: processes
    that appear later (a pool opening a connection) count from their start."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._start = {pid: run.cpu_seconds([pid]) for pid in pids()}

    def seconds(self) -> float:
        now = {pid: run.cpu_seconds([pid]) for pid in self._pids()}
        return sum(max(0.0, cpu - self._start.get(pid, 0.0)) for pid, cpu in now.items())


# -- what one phase measures -----------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    store: str  # sqlite | postgresql
    kind: str = "http"  # http | grpc | ceiling
    mix: str = MIX
    connections: int = 32
    cores: int = 0  # 0: one `inlet serve`; N: N `serve core` + N `serve bridge`

    @property
    def label(self) -> str:
        return label(self.store, self.kind, self.mix, self.connections, self.cores)


def plan(
    phases: list[str], stores: list[str], cores: list[int], connections: int, many: int
) -> list[Setup]:
    """The setups of one round, in order: the two setups of a figure next to each other
    where they can be (with both stores: no deletes and deletes on SQLite, SQLite and
    PostgreSQL, deletes and no deletes on PostgreSQL); a figure's base setup is added
    when a phase needs it."""
    pg = "postgresql" in stores
    setups: list[Setup] = []
    if "deletes" in phases:
        setups.append(Setup(stores[0], mix=NO_DELETES, connections=connections))
    if "profiles" in phases or "deletes" in phases:
        setups += [Setup(store, connections=connections) for store in stores]
    if "deletes" in phases:
        setups += [Setup(store, mix=NO_DELETES, connections=connections) for store in stores[1:]]
    if pg and ("connections" in phases or cores):
        setups.append(Setup("postgresql", connections=connections))
    if pg and "connections" in phases and many:
        setups.append(Setup("postgresql", connections=many))
    if pg:
        setups += [Setup("postgresql", connections=connections, cores=n) for n in cores]
    if "track" in phases:
        setups += [Setup(store, mix=TRACK, connections=connections) for store in stores]
    if pg and "grpc" in phases:
        setups += [Setup("postgresql", kind="grpc"), Setup("postgresql", kind="ceiling")]
    return list(dict.fromkeys(setups))  # once each, first place kept


@contextlib.contextmanager
def phase_store(
    store: str, args: argparse.Namespace, work: Path
) -> Iterator[tuple[Path, str, str | None]]:
    """A folder and a new database for one phase: (folder, database, PostgreSQL name)."""
    data = work / f"{store}-{time.time_ns()}"
    data.mkdir()
    if store == "sqlite":
        yield data, str(data / "inlet.db"), None
        return
    name = f"inlet_mix_{time.time_ns()}"
    run.postgres(args.postgres, f'CREATE DATABASE "{name}"')
    try:
        yield (
            data,
            urllib.parse.urlunsplit(urllib.parse.urlsplit(args.postgres)._replace(path="/" + name)),
            name,
        )
    finally:
        run.postgres(args.postgres, f'DROP DATABASE "{name}" WITH (FORCE)')


def start_servers(
    database: str, cores: int, data: Path, serve_args: list[str]
) -> tuple[list[subprocess.Popen[bytes]], list[str], list[str]]:
    """`inlet serve` (cores 0) or N `serve core` + N `serve bridge`: processes, bridge
    URLs, the cores' gRPC addresses."""
    python = [*run.pinned(run.SERVER_CPUS), sys.executable, "-m", "inlet_app.cli", "serve"]
    processes: list[subprocess.Popen[bytes]] = []
    urls, targets = [], []
    for _ in range(max(cores, 1)):
        port, grpc_port = run.free_port(), run.free_port()
        targets.append(f"127.0.0.1:{grpc_port}")
        urls.append(f"http://127.0.0.1:{port}")
        if cores == 0:
            processes.append(
                subprocess.Popen(
                    [
                        *run.pinned(run.SERVER_CPUS),
                        *run.serve_command(database, port, grpc_port, *serve_args),
                    ],
                    cwd=data,
                    stderr=subprocess.DEVNULL,
                )
            )
            continue
        processes.append(
            subprocess.Popen(
                [*python, "core", "--database", database, "--grpc", targets[-1], *serve_args],
                cwd=data,
                stderr=subprocess.DEVNULL,
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    *python,
                    "bridge",
                    "--core",
                    targets[-1],
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=data,
                stderr=subprocess.DEVNULL,
            )
        )
    for url in urls:
        run.wait_until_up(f"{url}/readyz", servers=processes)
    return processes, urls, targets


def stop(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM each, then their exit codes (0: a clean drain under load)."""
    for process in processes:
        process.terminate()
    return [process.wait(timeout=60) for process in processes]


def drive_all(
    urls: list[str],
    key: str,
    seconds: float,
    connections: int,
    mix: str,
    args: argparse.Namespace,
    work: Path,
) -> list[dict[str, Any]]:
    """The load split over the bridges, all at once."""
    share = max(1, connections // len(urls))
    prefix = f"m{time.time_ns()}"
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(
            pool.map(
                lambda n: run.drive(
                    urls[n], key, seconds, share, args.loadgen, f"{prefix}b{n}", work, mix
                ),
                range(len(urls)),
            )
        )


def http_phase(setup: Setup, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with phase_store(setup.store, args, work) as (data, database, pg_name):
        key = run.inlet("keys", "create", "--database", database, "--account", "bench", cwd=data)
        processes, urls, _ = start_servers(database, setup.cores, data, args.serve_args)
        try:
            warm = drive_all(urls, key, args.warmup, setup.connections, setup.mix, args, work)
            inlet = CpuMeter(lambda: [p for pr in processes for p in run.process_tree(pr.pid)])
            pg = CpuMeter(lambda: backend_pids(args.postgres, pg_name)) if pg_name else None
            sampler = WaitSampler(args.postgres, pg_name) if pg_name and args.sample_waits else None
            if sampler is not None:
                sampler.start()
            try:
                runs = drive_all(urls, key, args.duration, setup.connections, setup.mix, args, work)
            finally:
                if sampler is not None:
                    sampler.stop()
            cpu_inlet = inlet.seconds()
            cpu_pg = pg.seconds() if pg is not None else None
        finally:
            exit_codes = stop(processes)
        rows, distinct = run.count_events(database)
    statuses = sum((Counter(r["statuses"]) for r in runs), Counter())
    stored = statuses.get(200, 0)
    seconds = max(r["seconds"] for r in runs)
    acknowledged = sum(r["statuses"].get(200, 0) - r["duplicates"] for r in warm + runs)
    integrity: dict[str, Any] = {"stored_twice": rows - distinct}
    if setup.mix == MIX:  # deletes erase events: only "never twice" can be checked
        integrity["ok"] = rows == distinct
    else:
        # wrk abandons the requests in flight when its time is up (twice: warm-up, run):
        # those may be stored without anyone seeing the 200.
        integrity.update(
            acknowledged_new_events=acknowledged,
            stored_events=rows,
            ok=rows == distinct and 0 <= rows - acknowledged <= 2 * setup.connections,
        )
    result: dict[str, Any] = {
        "events_per_s": stored / seconds,
        "statuses": dict(statuses),
        "no_retry_after": sum(r.get("no_retry_after", 0) for r in runs),
        "shed_share": statuses.get(503, 0) / max(sum(statuses.values()), 1),
        "p50_ms": max(r["latency_ms"]["p50"] for r in runs),
        "p99_ms": max(r["latency_ms"]["p99"] for r in runs),
        "per_bridge": [r["latency_ms"] for r in runs],
        "errors": [r["errors"] for r in runs if "errors" in r],
        "cpu_us_per_event": {
            "inlet": 1e6 * cpu_inlet / max(stored, 1),
            "postgres_backends": None if cpu_pg is None else 1e6 * cpu_pg / max(stored, 1),
        },
        "integrity": integrity,
        "exit_codes": exit_codes,
    }
    if sampler is not None:
        result["backends"] = sampler.summary()
    return result


def grpc_load(target: str, key: str, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    output = subprocess.run(
        [
            *run.pinned(run.LOAD_CPUS),
            sys.executable,
            str(HERE / "grpc_load.py"),
            target,
            key,
            str(seconds),
            str(args.batch),
            str(args.inflight),
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def grpc_phase(setup: Setup, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """IngestBatch against one `inlet serve`: a warm-up call of the load, then the measured
    one, with the CPU of Inlet and of the database's backends in between."""
    with phase_store(setup.store, args, work) as (data, database, pg_name):
        key = run.inlet("keys", "create", "--database", database, "--account", "bench", cwd=data)
        processes, _, (target,) = start_servers(database, 0, data, args.serve_args)
        try:
            warm = grpc_load(target, key, args.warmup, args)
            inlet = CpuMeter(lambda: [p for pr in processes for p in run.process_tree(pr.pid)])
            pg = CpuMeter(lambda: backend_pids(args.postgres, pg_name)) if pg_name else None
            load = grpc_load(target, key, args.duration, args)
            cpu_inlet = inlet.seconds()
            cpu_pg = pg.seconds() if pg is not None else None
        finally:
            exit_codes = stop(processes)
        rows, distinct = run.count_events(database)
    stored = max(load["stored"], 1)
    sent = warm["stored"] + warm["warmup_stored"] + load["stored"] + load["warmup_stored"]
    return {
        "events_per_s": load["events_per_s"],
        "load": load,
        "cpu_us_per_event": {
            "inlet": 1e6 * cpu_inlet / stored,
            "postgres_backends": None if cpu_pg is None else 1e6 * cpu_pg / stored,
        },
        "integrity": {
            "stored_events": rows,
            "acknowledged_new_events": sent,
            "ok": rows == distinct == sent,
        },
        "exit_codes": exit_codes,
    }


def ceiling_phase(setup: Setup, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with phase_store(setup.store, args, work) as (_, database, _):
        output = subprocess.run(
            [
                *run.pinned(run.LOAD_CPUS),
                sys.executable,
                str(HERE / "pg_ceiling.py"),
                database,
                str(args.duration),
                str(args.batch),
                str(args.inflight),
                str(args.warmup),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    load: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return {
        "events_per_s": load["events_per_s"],
        "load": load,
        "cpu_us_per_event": load["cpu_us_per_event"],
        "integrity": {"ok": load["integrity_ok"]},
    }


def measure(setup: Setup, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if setup.kind == "http":
        described = {"mix": setup.mix, "connections": setup.connections, "cores": setup.cores}
        result = http_phase(setup, args, work)
    else:
        described = {"batch": args.batch, "inflight": args.inflight}
        result = (grpc_phase if setup.kind == "grpc" else ceiling_phase)(setup, args, work)
    return {"label": setup.label, "store": setup.store, "kind": setup.kind, **described, **result}


# -- the run ---------------------------------------------------------------------------------


def environment(dsn: str | None) -> dict[str, Any]:
    """What the figures depend on besides the code: Inlet's settings from the environment
    (nothing secret), the server's version and commit setting, the machine's load."""
    secretive = ("DSN", "URL", "KEY", "SECRET", "TOKEN", "PASSWORD", "CERT")
    out: dict[str, Any] = {
        "inlet_settings": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith("INLET_") and not any(s in k for s in secretive)
        },
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
    }
    if dsn:
        row = run.postgres(
            dsn, "SELECT current_setting('server_version'), current_setting('synchronous_commit')"
        )
        assert row is not None
        out["postgres"] = {"version": row[0], "synchronous_commit": row[1]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--postgres", help="a DSN: each phase gets a new database on its server")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL phases only")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}"
    )
    parser.add_argument(
        "--cores",
        type=int,
        nargs="*",
        default=[1, 2],
        help="PostgreSQL: the profiles mix on N `serve core` + N `serve bridge`, for each N "
        "(none: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="2 s phases, 1 s warm-up, 1 round")
    parser.add_argument("--duration", type=float, help="measured seconds per phase (10)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each (3)")
    parser.add_argument("--rounds", type=int, help="repeat, report medians (2)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--many-connections", type=int, default=256, help="the connections phase's count"
    )
    parser.add_argument("--batch", type=int, default=500, help="events per IngestBatch call")
    parser.add_argument("--inflight", type=int, default=4, help="IngestBatch calls at once")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--sample-waits", action="store_true")
    parser.add_argument(
        "--pin", action="store_true", help="servers on the last CPU, load on the rest"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("serve_args", nargs="*", help="extra flags for `inlet serve` (after --)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (2 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.rounds = args.rounds or (1 if quick else 2)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    stores = ([] if args.no_sqlite else ["sqlite"]) + (["postgresql"] if args.postgres else [])
    setups = plan(phases, stores, args.cores, args.connections, args.many_connections)
    if not setups:
        parser.error("nothing to measure: give --postgres, or drop --no-sqlite")
    run.pin(args.pin)
    env = environment(args.postgres)
    work = Path(tempfile.mkdtemp(prefix="inlet-mix-"))
    measured: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    try:
        for number in range(args.rounds):
            # Alternate the order, so that no setup always gets the fresher minute.
            for setup in setups if number % 2 == 0 else setups[::-1]:
                try:
                    result = measure(setup, args, work)
                except (subprocess.SubprocessError, OSError, RuntimeError) as error:
                    # One broken phase should not cost the figures of all the others.
                    stderr = getattr(error, "stderr", None) or ""
                    failed.append(
                        {
                            "label": setup.label,
                            "round": number,
                            "error": f"{error} {stderr[-2000:]}".strip(),
                        }
                    )
                    print(
                        f"round {number + 1} {setup.label}: FAILED {failed[-1]['error']}",
                        flush=True,
                    )
                    continue
                result["round"] = number
                measured.append(result)
                cpu = result["cpu_us_per_event"]
                print(
                    f"round {number + 1} {setup.label}: "
                    + json.dumps(
                        {
                            "ev_s": round(result["events_per_s"]),
                            **{k: round(result[k], 1) for k in ("p50_ms", "p99_ms") if k in result},
                            "cpu_us": {k: v and round(v) for k, v in cpu.items()},
                            "integrity": result["integrity"]["ok"],
                        }
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["load_average_end"] = os.getloadavg()
    figs = figures(measured, args.connections, args.many_connections, args.cores)
    report = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "loadgen": args.loadgen,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "environment": env,
        "figures": figs,
        "checks": {**checks(measured), "failed_phases": failed},
        "setups": setups_summary(measured),
        "phases": measured,
    }
    out = args.out or ROOT / "bench" / "results" / time.strftime("mix-%Y%m%dT%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("\n".join(readable(figs)))
    print(json.dumps(report["checks"]))
    print(f"written to {out}")
    ok = report["checks"]
    good = ok["integrity_ok"] and ok["exits_clean"] and not ok["unexpected_statuses"]
    return 0 if good and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
