"""`inlet serve --workers 2` as a user runs it: real processes, signals, one port.

Which worker answered shows in the `X-Request-Id` the bridge makes: its first 8
characters are a random prefix per process (service/logs.py). Requests go on new
connections, which the kernel spreads over the workers (SO_REUSEPORT); each test sends
until both have answered, a bounded number of times (the chance that 200 connections
all reach one worker is 2**-199).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme

from service.worker import pin_to_cpu, worker_cpu
from tests.stack import basic
from tests.test_cli import inlet
from tests.test_lifecycle import send_load_event, stored_ids

WORKERS_READY = r"(\d+) workers serving on https?://127\.0\.0\.1:(\d+)/segment"


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    """Lines not yet looked at by `wait_for_line`."""
    log: list[str] = field(default_factory=list)
    """Every line, once the process has ended and `reader` is done."""
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}")

    def workers(self) -> list[int]:
        """The pids of the supervisor's children (its workers)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def serve_workers(cwd: Path, *extra: str, count: int = 2) -> Served:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inlet_app.cli",
            "serve",
            "--workers",
            str(count),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--grpc",
            "127.0.0.1:0",
            *extra,
        ],
        cwd=cwd,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(process, 0)

    def read() -> None:  # keeps the pipe drained, and the lines for the test
        assert process.stderr is not None
        with process.stderr:
            for line in process.stderr:
                served.lines.put(line)
                served.log.append(line)

    served.reader = threading.Thread(target=read, daemon=True)
    served.reader.start()
    try:
        ready = served.wait_for_line(WORKERS_READY)
    except AssertionError:
        process.kill()
        raise
    assert int(ready[1]) == count
    served.port = int(ready[2])
    return served


def post(url: str, key: str, message_id: str) -> tuple[int, str]:
    """POST one event on a new connection: (status, the answering worker's id prefix)."""
    body = {"type": "track", "userId": "u1", "event": "E", "messageId": message_id}
    request = urllib.request.Request(
        url + "/segment",
        data=json.dumps(body).encode(),
        headers={"Authorization": basic(key), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["X-Request-Id"][:8]
    except urllib.error.HTTPError as error:
        return error.code, error.headers["X-Request-Id"][:8]


def get(url: str, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def until_both_answered(served: Served, key: str, prefix: str) -> list[str]:
    """Send events `prefix-N` until two workers have answered; their message ids."""
    answered_by: set[str] = set()
    sent = []
    for n in range(200):
        status, worker = post(served.url, key, f"{prefix}-{n}")
        assert status == 200
        sent.append(f"{prefix}-{n}")
        answered_by.add(worker)
        if len(answered_by) == 2 and n >= 9:
            return sent
    raise AssertionError("one worker answered every connection")


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match[1])


@pytest.fixture
def operator_key(tmp_path: Path) -> str:
    created = inlet(
        "keys", "create", "--account", "acme", "--scope", "ingest,admin,operator", cwd=tmp_path
    )
    return created.stdout.strip()


def test_metrics_and_debugger_show_every_worker_and_a_killed_worker_is_replaced(
    tmp_path: Path, operator_key: str
) -> None:
    served = serve_workers(tmp_path)
    try:
        sent = until_both_answered(served, operator_key, "m")
        assert [get(served.url + "/readyz")[0] for _ in range(10)] == [200] * 10
        # /metrics, whichever worker answers it: the totals of both.
        for _ in range(4):
            status, text = get(served.url + "/metrics")
            assert status == 200
            page = text.decode()
            ok = 'inlet_http_requests_total{route="/segment",status="200"}'
            assert metric(page, ok) == len(sent)
            stored = 'inlet_events_total{outcome="stored",reason="",type="track"}'
            assert metric(page, stored) == len(sent)
            assert metric(page, "inlet_workers") == 2
            assert metric(page, "inlet_worker_restarts_total") == 0
        # The debugger, whichever worker answers it: every worker's requests.
        for _ in range(4):
            status, body = get(served.url + "/debugger/api/exchanges", operator_key)
            assert status == 200, body
            listed = json.loads(body)["exchanges"]
            assert sorted(e["messageId"] for e in listed) == sorted(sent)
            assert len({e["id"] % 64 for e in listed}) == 2  # recorded by both workers
            for exchange in listed[:3] + listed[-3:]:  # details come from the right worker
                status, body = get(
                    f"{served.url}/debugger/api/exchanges/{exchange['id']}", operator_key
                )
                assert status == 200 and json.loads(body)["messageId"] == exchange["messageId"]

        victim, survivor = served.workers()
        os.kill(victim, signal.SIGKILL)
        warning = served.wait_for_line(r"worker (\d) \(pid (\d+)\) was killed by SIGKILL")
        assert int(warning[2]) == victim
        # The other worker keeps serving meanwhile, and the replacement joins it.
        during = [post(served.url, operator_key, f"during-{n}")[0] for n in range(20)]
        assert during == [200] * 20
        served.wait_for_line(rf"worker {warning[1]} serving again")
        assert survivor in served.workers() and victim not in served.workers()
        after = until_both_answered(served, operator_key, "after")
        page = get(served.url + "/metrics")[1].decode()
        assert metric(page, "inlet_worker_restarts_total") == 1
        assert metric(page, "inlet_workers") == 2
        # The dead worker's counts stay in the totals: counters never go back.
        total = len(sent) + 20 + len(after)
        assert metric(page, 'inlet_http_requests_total{route="/segment",status="200"}') == total
        assert served.stop() == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()
    assert set(sent) | {f"during-{n}" for n in range(20)} | set(after) <= stored_ids(tmp_path)
    # Every line is whole and says which worker wrote it (0: the supervisor).
    assert served.reader is not None
    served.reader.join(10)
    lines = [json.loads(line) for line in served.log]
    assert {line["worker"] for line in lines} == {0, 1, 2}


def thread_cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets the threads of process `pid` may run on."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            found.add(frozenset(os.sched_getaffinity(int(task.name))))
    return found


def test_a_cpu_the_worker_may_not_use_is_a_warning_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = os.sched_getaffinity(0)
    try:
        assert pin_to_cpu(4095) is False  # no such CPU here
    finally:
        os.sched_setaffinity(0, before)
    assert os.sched_getaffinity(0) == before
    assert "cannot run on CPU 4095" in caplog.text


def test_worker_cpus_take_the_allowed_cpus_in_turn() -> None:
    assert [worker_cpu(i, {5, 2, 7}) for i in range(1, 6)] == [2, 5, 7, 2, 5]
    assert [worker_cpu(i, {0}) for i in range(1, 3)] == [0, 0]


def test_pinned_workers_run_on_a_cpu_each_and_a_replacement_on_its_slots(
    tmp_path: Path, operator_key: str
) -> None:
    allowed = os.sched_getaffinity(0)
    served = serve_workers(tmp_path, "--pin-workers")
    try:
        expected = sorted(worker_cpu(i, allowed) for i in (1, 2))
        pinned = [thread_cpus(pid) for pid in served.workers()]
        # Every thread of a worker (event loop, SQLite writer, gRPC's) on one CPU.
        assert all(len(cpus) == 1 and len(next(iter(cpus))) == 1 for cpus in pinned)
        assert sorted(min(next(iter(cpus))) for cpus in pinned) == expected
        until_both_answered(served, operator_key, "pinned")
        before = served.workers()
        os.kill(before[0], signal.SIGKILL)
        warning = served.wait_for_line(r"worker (\d) \(pid (\d+)\) was killed by SIGKILL")
        served.wait_for_line(rf"worker {warning[1]} serving again")
        (replacement,) = set(served.workers()) - set(before)
        assert thread_cpus(replacement) == {frozenset({worker_cpu(int(warning[1]), allowed)})}
        assert served.stop() == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()
    assert served.reader is not None
    served.reader.join(10)
    assert any("pinned to CPUs" in line for line in served.log)


ERASED = "inlet_sqlite_deletions_erased_total"


def test_a_delete_erases_what_both_workers_stored_and_the_totals_say_so(
    tmp_path: Path, operator_key: str
) -> None:
    """Each worker runs SQLite's eraser; whichever comes first erases a user's events,
    whichever worker stored them."""
    served = serve_workers(tmp_path)
    try:
        sent = until_both_answered(served, operator_key, "m")  # user u1's, on both
        delete = {"type": "delete", "userId": "u1", "messageId": "del-u1"}
        request = urllib.request.Request(
            served.url + "/segment",
            data=json.dumps(delete).encode(),
            headers={"Authorization": basic(operator_key), "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200
        deadline = time.monotonic() + 30
        while stored_ids(tmp_path) & set(sent):
            assert time.monotonic() < deadline, "the user's events are still in the file"
            time.sleep(0.05)
        assert stored_ids(tmp_path) == {"del-u1"}  # the delete event: the record of it
        # The totals of both workers (sampled into the shared files now and then).
        while metric(page := get(served.url + "/metrics")[1].decode(), ERASED) < 1:
            assert time.monotonic() < deadline, "no erasure counted"
            time.sleep(0.05)
        assert metric(page, ERASED) == 1
        assert metric(page, "inlet_sqlite_erasure_failures_total") == 0
        assert served.stop() == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()


def test_a_key_rate_limit_holds_across_workers(tmp_path: Path, operator_key: str) -> None:
    served = serve_workers(tmp_path, "--rate-limit", "2")
    try:
        started = time.monotonic()
        answers = [post(served.url, operator_key, f"r-{n}") for n in range(40)]
        elapsed = time.monotonic() - started
        assert len({worker for _, worker in answers}) == 2  # both workers took some
        admitted = sum(status == 200 for status, _ in answers)
        assert {status for status, _ in answers} <= {200, 429}
        # A burst of 2 and 2/s, across both workers (each on its own: twice that).
        assert 2 <= admitted <= 2 + 2 * elapsed + 1, (admitted, elapsed)
        assert served.stop() == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()


def test_sigterm_under_load_loses_nothing_acknowledged(tmp_path: Path, operator_key: str) -> None:
    served = serve_workers(tmp_path)
    acknowledged: list[str] = []
    headers = {"Authorization": basic(operator_key), "Content-Type": "application/json"}

    async def load() -> None:
        first_answers = asyncio.Event()

        async def send(n: int) -> None:
            # A connection each: the kernel spreads them over both workers.
            async with aiohttp.ClientSession() as session:
                await send_load_event(session, served.url, headers, n, acknowledged)
            if len(acknowledged) >= 50:
                first_answers.set()

        senders = [asyncio.create_task(send(n)) for n in range(400)]
        await first_answers.wait()
        served.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*senders)

    try:
        asyncio.run(load())
        assert served.process.wait(timeout=60) == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()
    assert len(acknowledged) >= 50
    assert set(acknowledged) <= stored_ids(tmp_path)


def test_workers_that_cannot_start_make_it_exit_non_zero(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inlet_app.cli",
            "serve",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--grpc",
            "127.0.0.1:0",
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "could not start" in result.stderr


def test_a_port_in_use_is_refused_not_shared(tmp_path: Path) -> None:
    first = serve_workers(tmp_path)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "inlet_app.cli",
                "serve",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(first.port),
                "--grpc",
                "127.0.0.1:0",
            ],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and "cannot listen" in result.stderr
        assert first.stop() == 0
    finally:
        if first.process.poll() is None:
            first.process.kill()


def test_workers_on_postgresql_store_each_event_once(tmp_path: Path, pg_dsn: str) -> None:
    # Each worker is a full core on the database; a redelivery is a duplicate whichever
    # worker it reaches (the database's unique key).
    key = inlet(
        "keys", "create", "--database", pg_dsn, "--account", "acme", cwd=tmp_path
    ).stdout.strip()
    served = serve_workers(tmp_path, "--database", pg_dsn)
    try:
        sent = until_both_answered(served, key, "pg")
        again = {post(served.url, key, message_id) for message_id in sent}
        assert {status for status, _ in again} == {200}
        page = get(served.url + "/metrics")[1].decode()
        stored = 'inlet_events_total{outcome="stored",reason="",type="track"}'
        duplicate = 'inlet_events_total{outcome="duplicate",reason="",type="track"}'
        assert metric(page, stored) == len(sent) and metric(page, duplicate) == len(sent)
        assert served.stop() == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()


def test_sighup_reloads_every_workers_certificate(tmp_path: Path) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    pem = tmp_path / "server.pem"
    old_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    served = serve_workers(tmp_path, "--tls-cert", str(pem), "--tls-key", str(pem))
    try:
        new_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        served.process.send_signal(signal.SIGHUP)
        reloaded = {
            served.wait_for_line(r"TLS certificate reloaded.*\"worker\":(\d)")[1] for _ in range(2)
        }
        assert reloaded == {"1", "2"}
        context = ssl.create_default_context()
        new_ca.configure_trust(context)
        for _ in range(30):  # new connections, spread over both workers: the new one
            raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            with raw, context.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
        assert served.stop() == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()
