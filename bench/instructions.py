"""Instructions per webhook request, counted by valgrind's callgrind: a repeatable cost.

    python bench/instructions.py [--requests 1000] [--connections 32] [-- serve flags]

Wall-clock figures on the project's shared 2-core machines drift by ±30 % from one
minute to the next, which hides any change worth less than that. Instruction counts do
not drift (two runs of one commit agree within 1-2 %), so this compares two commits, or
a setting on and off, on the CPU work they do per request. They say nothing about
waiting (fsync, GIL hand-offs between threads): bench/run.py measures those.

It starts `inlet serve` under callgrind (about 50x slower), sends a warm-up, zeroes
the counters, sends `--requests` webhook events from `--connections` keep-alive
connections at once (so commits group as under load), dumps the counters and prints
instructions per request. Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from events import SETTINGS_HEADER, templates
from run import free_port, serve_command, wait_until_up


def send(port: int, key: str, count: int, connections: int, prefix: str) -> int:
    """POST `count` events over `connections` connections at once; the number of 200s."""
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    bodies = [json.loads(t) for t in templates()]
    ok = [0] * connections

    def worker(index: int) -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=300)
        for n in range(index, count, connections):
            body = {**bodies[n % len(bodies)], "messageId": f"{prefix}-{n}"}
            conn.request(
                "POST",
                "/segment",
                json.dumps(body).encode(),
                {
                    "Authorization": auth,
                    "Content-Type": "application/json",
                    "X-Segment-Settings": SETTINGS_HEADER,
                },
            )
            reply = conn.getresponse()
            reply.read()
            ok[index] += reply.status == 200
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(ok)


def total_instructions(out_dir: Path) -> int:
    """The `totals:` (or `summary:`) line of the newest dump callgrind wrote."""
    dumps = sorted(out_dir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind dump")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="count bench/ceiling.py (the bare aiohttp endpoint) instead",
    )
    parser.add_argument("serve_args", nargs="*", help="extra flags for `inlet serve` (after --)")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="inlet-instructions-"))
    try:
        database = str(work / "inlet.db")
        key = subprocess.run(
            [
                sys.executable,
                "-m",
                "inlet_app.cli",
                "keys",
                "create",
                "--database",
                database,
                "--account",
                "bench",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        port, grpc_port = free_port(), free_port()
        command = (
            [sys.executable, str(HERE / "ceiling.py"), str(port), key]
            if args.ceiling
            else serve_command(database, port, grpc_port, *args.serve_args)
        )
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={work}/callgrind.out.%p",
                *command,
            ],
            cwd=HERE.parent if args.ceiling else work,
            stderr=subprocess.DEVNULL,
        )
        try:
            if args.ceiling:
                wait_until_up(f"http://127.0.0.1:{port}/segment", post=True, timeout=600)
            else:
                wait_until_up(f"http://127.0.0.1:{port}/readyz", timeout=600)
            send(port, key, 200, args.connections, f"w{time.time_ns()}")
            subprocess.run(
                ["callgrind_control", "-z", str(server.pid)], capture_output=True, check=True
            )
            ok = send(port, key, args.requests, args.connections, f"r{time.time_ns()}")
            subprocess.run(
                ["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True
            )
            time.sleep(1)
            per_request = total_instructions(work) / args.requests
        finally:
            server.terminate()
            server.wait(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "requests": args.requests,
                "ok": ok,
                "connections": args.connections,
                "instructions_per_request": round(per_request),
            }
        )
    )
    return 0 if ok == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
