"""Inlet's benchmark: the webhook path against a bare-aiohttp ceiling, in the same run.

    python bench/run.py [--duration 10] [--warmup 3] [--connections 32] [--rounds 1]
                        [--postgres postgresql://USER@HOST:PORT/DB] [--workers N]

Starts `inlet serve` on its embedded default (SQLite, fsync on) in a temporary
folder, creates a key, drives `POST /segment` with realistic Segment events from
wrk (or the built-in asyncio client where wrk is missing), measures the ceiling
(bench/ceiling.py: read + parse + Basic check, nothing else) driven the same way,
just before and just after Inlet (the ratio is to the mean of the two),
drives gRPC IngestBatch directly, checks integrity (every 2xx is in the store,
nothing twice), and prints and writes everything as JSON (bench/results/).
The machines are noisy: compare ratios from the same run, and medians of rounds.
SQLite against PostgreSQL in the same run, and the scale-out figures: bench/mix.py
(bench/README.md says which benchmark measures what).

With `--workers N` each round instead measures `inlet serve --workers N` against
`--workers 1` and a ceiling of N bare-aiohttp processes sharing the port, unpinned
(the HTTP phase only; each Inlet run on a new database, integrity checked); with
`--pin-workers` also `inlet serve --workers N --pin-workers` (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from events import MIXES, SETTINGS_HEADER

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


_PORTS_GIVEN: set[int] = set()


def serve_command(database: str, port: int, grpc_port: int, *extra: str) -> list[str]:
    """`inlet serve` on `database`, HTTP on 127.0.0.1:`port`, gRPC on `grpc_port`."""
    return [
        *(sys.executable, "-m", "inlet_app.cli", "serve", "--database", database),
        *("--host", "127.0.0.1", "--port", str(port), "--grpc", f"127.0.0.1:{grpc_port}"),
        *extra,
    ]


def free_port() -> int:
    """A port nothing listens on now and not handed out before in this run: two calls in
    a row may otherwise get the same port back from the kernel."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def wait_until_up(
    url: str,
    post: bool = False,
    timeout: float = 30,
    servers: Sequence[subprocess.Popen[bytes]] = (),
) -> None:
    """Until `url` answers at all (any HTTP status); at once an error if one of `servers`
    has exited meanwhile (a port taken since free_port() chose it, a bad flag)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, data=b"{}" if post else None)
    while time.monotonic() < deadline:
        if exited := [p.returncode for p in servers if p.poll() is not None]:
            raise RuntimeError(f"{url}: the server exited with {exited} before it was up")
        try:
            with urllib.request.urlopen(request, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# -- process statistics from /proc ---------------------------------------------------------


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLOCK_TICKS


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of one process, in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- where each process runs --------------------------------------------------------------

# With --pin (the default on two or more CPUs) each server, the ceiling as Inlet, runs on
# the last CPU and the load generators on the others: both servers are one process, and
# sharing cores with wrk made rounds of one commit differ by ±30 %.
SERVER_CPUS: set[int] | None = None
LOAD_CPUS: set[int] | None = None


def pin(enabled: bool) -> None:
    global SERVER_CPUS, LOAD_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    if enabled and len(cpus) >= 2 and shutil.which("taskset"):
        SERVER_CPUS, LOAD_CPUS = {cpus[-1]}, set(cpus[:-1])
    else:
        SERVER_CPUS = LOAD_CPUS = None


def pinned(cpus: set[int] | None) -> list[str]:
    """A command prefix putting a process (and every thread it starts) on `cpus`."""
    if cpus is None:
        return []
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))]


# -- load generation -----------------------------------------------------------------------


def lua_script(key: str, prefix: str, out: Path, mix: str = "bench") -> Path:
    def long_string(body: bytes) -> str:
        return "[==[" + body.decode() + "]==]"

    make, users = MIXES[mix]
    text = (HERE / "wrk.lua.tmpl").read_text()
    text = text.replace("__TEMPLATES__", ",\n".join(long_string(t) for t in make()))
    text = text.replace("__USERS__", str(users))
    text = text.replace("__AUTH__", "Basic " + base64.b64encode(f"{key}:".encode()).decode())
    text = text.replace("__PREFIX__", prefix).replace("__REDELIVER__", "0.03")
    text = text.replace("__SETTINGS__", SETTINGS_HEADER)
    out.write_text(text)
    return out


def drive(
    url: str,
    key: str,
    seconds: float,
    connections: int,
    loadgen: str,
    prefix: str,
    work: Path,
    mix: str = "bench",
) -> dict[str, Any]:
    """Run the load generator against url/segment (events of `mix`, events.MIXES); return
    its JSON summary."""
    if loadgen == "wrk":
        script = lua_script(key, prefix, work / f"{prefix}.lua", mix)
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url + "/segment",
        ]
    else:
        command = [
            sys.executable,
            str(HERE / "http_load.py"),
            url + "/segment",
            key,
            str(connections),
            str(seconds),
            prefix,
            mix,
        ]
    output = subprocess.run(
        [*pinned(LOAD_CPUS), *command], capture_output=True, text=True, check=True
    ).stdout
    line = next(
        line for line in output.splitlines() if line.lstrip().startswith(("BENCH_JSON", "{"))
    )
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON").strip())
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    return result


def measure(
    pid: int, url: str, key: str, args: argparse.Namespace, work: Path, loadgen: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Warm up, then measure; return the summary and the raw load-generator results."""
    warm = drive(url, key, args.warmup, args.connections, loadgen, f"w{time.time_ns()}", work)
    pids = process_tree(pid)
    cpu_before = cpu_seconds(pids)
    rss_start = sum(memory_kb(p, "VmRSS") for p in pids)
    run = drive(url, key, args.duration, args.connections, loadgen, f"r{time.time_ns()}", work)
    pids = process_tree(pid)
    cpu = cpu_seconds(pids) - cpu_before
    ok = run["statuses"].get(200, 0)
    summary = {
        "requests": run["requests"],
        "events_per_s": ok / run["seconds"],
        "statuses": run["statuses"],
        "latency_ms": run["latency_ms"],
        "cpu_us_per_event": 1e6 * cpu / max(ok, 1),
        "rss_mb": {
            "start": rss_start / 1024,
            "end": sum(memory_kb(p, "VmRSS") for p in pids) / 1024,
            "peak_per_process": [memory_kb(p, "VmHWM") / 1024 for p in pids],
        },
        "processes": len(pids),
    }
    return summary, [warm, run]


def bracketed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The ceiling measured before and after Inlet: their mean, and both as measured."""
    return {
        "events_per_s": (before["events_per_s"] + after["events_per_s"]) / 2,
        "cpu_us_per_event": (before["cpu_us_per_event"] + after["cpu_us_per_event"]) / 2,
        "before": before,
        "after": after,
    }


def wait_until_idle(pid: int, timeout: float = 30) -> float:
    """Seconds until the processes under `pid` use at most one clock tick of CPU (~5 %)
    in 0.2 s; says so on stderr if they never do within `timeout`."""
    started = time.monotonic()
    pids = process_tree(pid)
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pids)
        time.sleep(0.2)
        if (cpu_seconds(pids) - before) * CLOCK_TICKS < 1.5:  # whole ticks: 0 or 1
            return round(time.monotonic() - started, 2)
    print(f"bench: process {pid} still busy after {timeout:g} s", file=sys.stderr)
    return round(time.monotonic() - started, 2)


def overload(
    pid: int, url: str, key: str, args: argparse.Namespace, work: Path, loadgen: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Far more connections than Inlet can serve at once: how it sheds (503 + Retry-After)
    and what latency the answers see; RSS under that load."""
    run = drive(
        url,
        key,
        args.overload_seconds,
        args.overload_connections,
        loadgen,
        f"o{time.time_ns()}",
        work,
    )
    statuses = run["statuses"]
    # The load generator has quit, but Inlet still answers what it had queued (up to
    # INLET_MAX_QUEUE_DELAY_S of it): the next phase starts once that is done.
    drained_in = wait_until_idle(pid)
    return {
        "connections": args.overload_connections,
        "drained_after_s": drained_in,
        "answers_per_s": run["requests"] / run["seconds"],
        "stored_per_s": statuses.get(200, 0) / run["seconds"],
        "statuses": statuses,
        "shed_share": statuses.get(503, 0) / max(run["requests"], 1),
        "latency_ms": run["latency_ms"],
        "errors": run.get("errors", {}),
        "peak_rss_mb": [memory_kb(p, "VmHWM") / 1024 for p in process_tree(pid)],
    }, run


# -- the run -------------------------------------------------------------------------------


def inlet(*args: str, cwd: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "inlet_app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def postgres(dsn: str, *sql: str) -> tuple[Any, ...] | None:
    """Run `sql` statements on `dsn`; the last one's first row."""
    import asyncio

    import asyncpg

    async def run() -> tuple[Any, ...] | None:
        conn = await asyncpg.connect(dsn)
        try:
            row = None
            for statement in sql:
                row = await conn.fetchrow(statement)
            return None if row is None else tuple(row)
        finally:
            await conn.close()

    return asyncio.run(run())


def round_database(args: argparse.Namespace, data: Path) -> str:
    """SQLite in the round's folder, or a new PostgreSQL database for the round."""
    if not args.postgres:
        return str(data / "inlet.db")
    name = f"inlet_bench_{time.time_ns()}"
    postgres(args.postgres, f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(args.postgres)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def count_events(database: str) -> tuple[int, int]:
    sql = "SELECT count(*), count(DISTINCT message_id) FROM events"
    if database.startswith("postgresql://"):
        row = postgres(database, sql)
        assert row is not None
        return int(row[0]), int(row[1])
    db = sqlite3.connect(database)
    rows, distinct = db.execute(sql).fetchone()
    db.close()
    return int(rows), int(distinct)


def one_round(args: argparse.Namespace, work: Path, loadgen: str) -> dict[str, Any]:
    data = work / f"round-{time.time_ns()}"
    data.mkdir()
    database = round_database(args, data)
    key = inlet("keys", "create", "--database", database, "--account", "bench", cwd=data)
    out: dict[str, Any] = {}

    port = free_port()
    ceiling = subprocess.Popen(
        [*pinned(SERVER_CPUS), sys.executable, str(HERE / "ceiling.py"), str(port), key]
    )
    ceiling_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{ceiling_url}/segment", post=True)
        before, _ = measure(ceiling.pid, ceiling_url, key, args, work, loadgen)

        port, grpc_port = free_port(), free_port()
        server = subprocess.Popen(
            [*pinned(SERVER_CPUS), *serve_command(database, port, grpc_port, *args.serve_args)],
            cwd=data,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}/readyz", servers=[server])
            url = f"http://127.0.0.1:{port}"
            if args.prefill:  # a database in service for a while, not an empty one
                filled = subprocess.run(
                    [
                        *pinned(LOAD_CPUS),
                        sys.executable,
                        str(HERE / "prefill.py"),
                        f"127.0.0.1:{grpc_port}",
                        key,
                        str(args.prefill),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                out["prefill"] = json.loads(filled.strip().splitlines()[-1])
                wait_until_idle(server.pid)
            out["inlet"], runs = measure(server.pid, url, key, args, work, loadgen)
            # The ceiling again, right after (once Inlet is idle: they share the CPU): the
            # machine drifts within minutes, so the ratio is to the mean of both.
            wait_until_idle(server.pid)
            after, _ = measure(ceiling.pid, ceiling_url, key, args, work, loadgen)
            out["ceiling"] = bracketed(before, after)
            if args.overload_connections:
                out["overload"], run = overload(server.pid, url, key, args, work, loadgen)
                runs.append(run)
            acknowledged = sum(r["statuses"].get(200, 0) - r["duplicates"] for r in runs)
            if not args.skip_grpc:
                grpc_out = subprocess.run(
                    [
                        *pinned(LOAD_CPUS),
                        sys.executable,
                        str(HERE / "grpc_load.py"),
                        f"127.0.0.1:{grpc_port}",
                        key,
                        str(args.grpc_seconds),
                        "500",
                        "4",
                        str(args.warmup),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                out["grpc_ingest_batch"] = json.loads(grpc_out.strip().splitlines()[-1])
        finally:
            server.terminate()
            code = server.wait(timeout=60)
    finally:
        ceiling.terminate()
        ceiling.wait()
    out["inlet"]["exit_code"] = code

    rows, distinct = count_events(database)
    if args.postgres:
        name = urllib.parse.urlsplit(database).path.lstrip("/")
        postgres(args.postgres, f'DROP DATABASE "{name}" WITH (FORCE)')
    grpc = out.get("grpc_ingest_batch", {})
    http_rows = (
        rows
        - grpc.get("stored", 0)
        - grpc.get("warmup_stored", 0)
        - out.get("prefill", {}).get("stored", 0)
    )
    out["integrity"] = {
        "acknowledged_new_events": acknowledged,
        "stored_http_events": http_rows,
        # wrk abandons requests still in flight when its time is up: those may be stored
        # without anyone seeing the 200, so the store may hold up to one per connection more
        # (per phase: the overload phase's thousands of connections included).
        "unacknowledged_but_stored": http_rows - acknowledged,
        "stored_twice": rows - distinct,
        "ok": http_rows >= acknowledged
        and http_rows - acknowledged <= 2 * args.connections + args.overload_connections
        and rows == distinct,
    }
    out["ratio_to_ceiling"] = out["inlet"]["events_per_s"] / out["ceiling"]["events_per_s"]
    return out


# -- `--workers N`: inlet serve --workers N against --workers 1 and N bare processes ------


def serve_inlet(
    args: argparse.Namespace, data: Path, workers: int, pinned: bool = False
) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """`inlet serve --workers N` (with `--pin-workers` if `pinned`) on a new database
    (SQLite in `data`, or PostgreSQL with --postgres): the process, its URL, a key."""
    data.mkdir()
    database = round_database(args, data)
    key = inlet("keys", "create", "--database", database, "--account", "bench", cwd=data)
    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        serve_command(
            database,
            port,
            grpc_port,
            *("--workers", str(workers)),
            *(("--pin-workers",) if pinned else ()),
            *args.serve_args,
        ),
        cwd=data,
        stderr=subprocess.PIPE if workers > 1 else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    if server.stderr is not None:  # the supervisor's word that every worker listens
        for line in server.stderr:
            if b"workers serving on" in line:
                break
        threading.Thread(target=server.stderr.read, daemon=True).start()  # keep it drained
    wait_until_up(f"{url}/readyz", servers=[server])
    return server, url, key, database


def workers_run(
    args: argparse.Namespace, work: Path, loadgen: str, workers: int, pinned: bool = False
) -> dict[str, Any]:
    """One measured run of `inlet serve --workers N`, with its integrity check."""
    data = work / f"w{workers}-{time.time_ns()}"
    server, url, key, database = serve_inlet(args, data, workers, pinned)
    try:
        out, runs = measure(server.pid, url, key, args, work, loadgen)
    finally:
        server.terminate()
        out["exit_code"] = server.wait(timeout=60)
    rows, distinct = count_events(database)
    if args.postgres:
        name = urllib.parse.urlsplit(database).path.lstrip("/")
        postgres(args.postgres, f'DROP DATABASE "{name}" WITH (FORCE)')
    acknowledged = sum(r["statuses"].get(200, 0) - r["duplicates"] for r in runs)
    out["integrity"] = {
        "acknowledged_new_events": acknowledged,
        "stored": rows,
        "stored_twice": rows - distinct,
        # wrk abandons requests in flight when its time is up: stored, never seen answered.
        "ok": acknowledged <= rows <= acknowledged + 2 * args.connections and rows == distinct,
    }
    return out


def workers_round(
    args: argparse.Namespace, work: Path, loadgen: str, number: int
) -> dict[str, Any]:
    """The ceiling of N bare processes, `--workers 1` and `--workers N` (and with
    --pin-workers `--workers N --pin-workers`; the order reversed every other round, so
    none always meets the machine's drift first), the ceiling again."""
    n = args.workers
    port = free_port()
    ceiling = subprocess.Popen(
        [sys.executable, str(HERE / "ceiling.py"), str(port), "bench", str(n)]
    )
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        wait_until_up(f"{url}/segment", post=True)
        time.sleep(1)  # all N listening (each binds as soon as it has imported aiohttp)
        before, _ = measure(ceiling.pid, url, "bench", args, work, loadgen)
        setups = [(1, False), (n, False)] + ([(n, True)] if args.pin_workers else [])
        order = setups if number % 2 == 0 else setups[::-1]
        for workers, pinned in order:
            label = f"workers_{workers}" + ("_pinned" if pinned else "")
            out[label] = workers_run(args, work, loadgen, workers, pinned)
        after, _ = measure(ceiling.pid, url, "bench", args, work, loadgen)
        out["ceiling"] = bracketed(before, after)
    finally:
        ceiling.terminate()
        ceiling.wait()
    one, many = out["workers_1"], out[f"workers_{n}"]
    out["order"] = [f"workers_{w}" + ("_pinned" if pinned else "") for w, pinned in order]
    out["speedup"] = many["events_per_s"] / one["events_per_s"]
    if args.pin_workers:
        out["speedup_pinned"] = out[f"workers_{n}_pinned"]["events_per_s"] / one["events_per_s"]
    out["ratio_to_ceiling"] = many["events_per_s"] / out["ceiling"]["events_per_s"]
    return out


def compare_workers(args: argparse.Namespace, work: Path, loadgen: str) -> dict[str, Any]:
    rounds = []
    n = args.workers
    labels = ["workers_1", f"workers_{n}"] + ([f"workers_{n}_pinned"] if args.pin_workers else [])
    speedups = ["speedup"] + (["speedup_pinned"] if args.pin_workers else [])
    for number in range(args.rounds):
        result = workers_round(args, work, loadgen, number)
        rounds.append(result)
        print(
            f"round {number + 1}: "
            + json.dumps(
                {
                    "ceiling": round(result["ceiling"]["events_per_s"]),
                    **{label: round(result[label]["events_per_s"]) for label in labels},
                    **{s: round(result[s], 3) for s in speedups},
                    "p99_ms": [round(result[label]["latency_ms"]["p99"], 1) for label in labels],
                    "cpu_us": [round(result[label]["cpu_us_per_event"]) for label in labels],
                    "integrity": all(result[label]["integrity"]["ok"] for label in labels),
                }
            ),
            flush=True,
        )

    def median(*path: str) -> float:
        values = []
        for r in rounds:
            value: Any = r
            for part in path:
                value = value[part]
            values.append(value)
        return statistics.median(values)

    summary: dict[str, Any] = {
        "rounds": len(rounds),
        "workers": n,
        "ceiling_processes": n,
        "ceiling_events_per_s": median("ceiling", "events_per_s"),
        **{s: median(s) for s in speedups},
        "ratio_to_ceiling": median("ratio_to_ceiling"),
        "integrity_ok": all(
            r[label]["integrity"]["ok"] and r[label]["exit_code"] == 0
            for r in rounds
            for label in labels
        ),
    }
    for label in labels:
        summary[label] = {
            "events_per_s": median(label, "events_per_s"),
            "p50_ms": median(label, "latency_ms", "p50"),
            "p99_ms": median(label, "latency_ms", "p99"),
            "cpu_us_per_event": median(label, "cpu_us_per_event"),
        }
    return {"summary": summary, "rounds": rounds}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(path: tuple[str, ...]) -> float:
        values = []
        for r in rounds:
            value: Any = r
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                values.append(value)
        return statistics.median(values) if values else float("nan")

    return {
        "rounds": len(rounds),
        "ceiling_events_per_s": median(("ceiling", "events_per_s")),
        "inlet_events_per_s": median(("inlet", "events_per_s")),
        "ratio_to_ceiling": median(("ratio_to_ceiling",)),
        "inlet_p50_ms": median(("inlet", "latency_ms", "p50")),
        "inlet_p99_ms": median(("inlet", "latency_ms", "p99")),
        "inlet_p99.9_ms": median(("inlet", "latency_ms", "p99.9")),
        "inlet_cpu_us_per_event": median(("inlet", "cpu_us_per_event")),
        "ceiling_cpu_us_per_event": median(("ceiling", "cpu_us_per_event")),
        "inlet_peak_rss_mb": max(max(r["inlet"]["rss_mb"]["peak_per_process"]) for r in rounds),
        "grpc_ingest_batch_events_per_s": median(("grpc_ingest_batch", "events_per_s")),
        "overload_stored_per_s": median(("overload", "stored_per_s")),
        "overload_shed_share": median(("overload", "shed_share")),
        "overload_p99_ms": median(("overload", "latency_ms", "p99")),
        "overload_peak_rss_mb": max(
            (max(r["overload"]["peak_rss_mb"]) for r in rounds if "overload" in r), default=None
        ),
        "integrity_ok": all(r["integrity"]["ok"] for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds before each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="repeat, report medians")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--grpc-seconds", type=float, default=5)
    parser.add_argument(
        "--overload-connections",
        type=int,
        default=4096,
        help="connections of the overload phase (0: skip it)",
    )
    parser.add_argument("--overload-seconds", type=float, default=5)
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let servers and load generator share every CPU (default: servers on the last)",
    )
    parser.add_argument("--skip-grpc", action="store_true")
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        help="store this many events (over gRPC) before measuring: a database in service",
    )
    parser.add_argument(
        "--postgres", help="run Inlet on PostgreSQL: a DSN; each round gets a new database"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="compare `inlet serve --workers N` with --workers 1 and a ceiling of N bare "
        "processes, unpinned, in each round (HTTP phase only)",
    )
    parser.add_argument(
        "--pin-workers",
        action="store_true",
        help="with --workers: also measure `inlet serve --workers N --pin-workers` each round",
    )
    parser.add_argument("--out", type=Path, help="result file (default bench/results/<time>.json)")
    parser.add_argument("serve_args", nargs="*", help="extra flags for `inlet serve` (after --)")
    args = parser.parse_args(argv)
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"

    pin(not args.no_pin and not args.workers)  # workers: every process on every CPU
    work = Path(tempfile.mkdtemp(prefix="inlet-bench-"))
    if args.workers:
        try:
            compared = compare_workers(args, work, loadgen)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return write_report(args, loadgen, compared["summary"], compared["rounds"], "workers")
    try:
        rounds = []
        for number in range(args.rounds):
            result = one_round(args, work, loadgen)
            rounds.append(result)
            print(
                f"round {number + 1}: "
                + json.dumps(
                    {
                        "ceiling": round(result["ceiling"]["events_per_s"]),
                        "inlet": round(result["inlet"]["events_per_s"]),
                        "ratio": round(result["ratio_to_ceiling"], 3),
                        "p99_ms": round(result["inlet"]["latency_ms"]["p99"], 2),
                        "grpc": round(result.get("grpc_ingest_batch", {}).get("events_per_s", 0)),
                        "overload_p99_ms": round(
                            result.get("overload", {}).get("latency_ms", {}).get("p99", 0)
                        ),
                        "overload_shed": round(result.get("overload", {}).get("shed_share", 0), 3),
                        "integrity": result["integrity"]["ok"],
                    }
                ),
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return write_report(args, loadgen, summarise(rounds), rounds)


def write_report(
    args: argparse.Namespace,
    loadgen: str,
    summary: dict[str, Any],
    rounds: list[dict[str, Any]],
    comparison: str | None = None,
) -> int:
    report = {
        "loadgen": loadgen,
        "connections": args.connections,
        "duration_s": args.duration,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "store": "postgresql" if args.postgres else "sqlite",
        "comparison": comparison,
        "serve_args": args.serve_args,
        "pinned": {"servers": sorted(SERVER_CPUS), "load": sorted(LOAD_CPUS or ())}
        if SERVER_CPUS
        else None,
        "summary": summary,
        "rounds": rounds,
    }
    out = args.out or ROOT / "bench" / "results" / time.strftime("%Y%m%dT%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"written to {out}")
    return 0 if report["summary"]["integrity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
