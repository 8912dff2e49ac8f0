"""`inlet serve --workers N`: one supervising process, N whole `inlet serve` workers.

The supervisor serves nothing itself. It makes a private folder (sockets of the
workers' notices and debugger rings, the shared rate-limit table, prometheus_client's
multiprocess files), reserves the HTTP and gRPC ports, starts the workers and waits
until each says it serves; if one cannot start, it stops the others and exits 1.
Then it restarts a worker that dies (a warning, and the new worker counts itself in
`inlet_worker_restarts_total`), passes SIGTERM and SIGINT (drain) and SIGHUP (TLS
reload) to every worker, and exits once all have stopped: 0 if every one stopped
cleanly.

The ports: each worker listens on both itself, with SO_REUSEPORT, and the kernel
spreads new connections over the listening workers. The supervisor keeps a bound, not
listening, socket on each port (with SO_REUSEPORT only): it turns port 0 into one port
for all, and keeps the port Inlet's while a worker is replaced. Before that it binds
without SO_REUSEPORT once, so a port another program (or another Inlet) listens on is
refused instead of shared.

With `pin` (`--pin-workers`), worker i runs on the i-th of the CPUs the supervisor may
run on (in turn when there are more workers than CPUs), a replacement on its slot's.

The workers write to the supervisor's stderr themselves, in writes of whole lines of
at most PIPE_BUF bytes (service/logs.py), so lines of two workers never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from prometheus_client.multiprocess import mark_process_dead

from service import worker as context

log = logging.getLogger("inlet.supervisor")

#: A worker that dies sooner than this after starting is restarted after a delay that
#: doubles each time (from RESTART_DELAY_S to MAX_RESTART_DELAY_S): a worker that can
#: never run must not spin the machine.
STEADY_S: Final = 10.0
RESTART_DELAY_S: Final = 0.1
MAX_RESTART_DELAY_S: Final = 30.0

_FORWARDED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def worker_count(text: str | None) -> int:
    """`--workers`: a number from 1 to MAX_WORKERS, or `auto` (the CPUs this process may
    run on, at most MAX_WORKERS); None is 1."""
    if text is None or not text.strip():
        return 1
    if text.strip().lower() == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), context.MAX_WORKERS))
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"--workers: a number or `auto`, not {text!r}") from None
    if not 1 <= count <= context.MAX_WORKERS:
        raise ValueError(f"--workers: from 1 to {context.MAX_WORKERS}, not {count}")
    return count


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port`) → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (0: a free port) that sibling workers may share and
    no other program may take; OSError when the port is in use."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # First without SO_REUSEPORT: fails if anything listens there (or holds it as the
    # supervisor below does). SO_REUSEADDR: connections in TIME_WAIT from a previous run
    # do not count.
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        address = (address[0], probe.getsockname()[1], *address[2:])
    held = socket.socket(family, kind, proto)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind(address)
    except OSError:
        held.close()
        raise
    return held


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Worker:
    """One started worker process."""

    index: int
    process: asyncio.subprocess.Process
    ready: asyncio.StreamReader
    started: float
    serving: bool = False

    async def wait_ready(self) -> bool:
        """True once it says it serves; False if it stopped first."""
        self.serving = (await self.ready.readline()).startswith(b"ready")
        return self.serving


@dataclass
class Supervisor:
    """Runs `count` workers of `inlet ARGV` (the serve command as given)."""

    count: int
    argv: Sequence[str]
    listen: str
    """host:port of the HTTP bridge."""
    grpc_listen: str
    scheme: str = "http"
    pin: bool = False
    """Each worker on a CPU of its own (`--pin-workers`)."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    workers: dict[int, Worker] = field(default_factory=dict)
    stopping: bool = False
    exit_codes: dict[int, int] = field(default_factory=dict)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (0: every worker stopped cleanly)."""
        run_dir = Path(tempfile.mkdtemp(prefix="inlet-workers-"))
        held: list[socket.socket] = []
        try:
            http_host, http_port = split_listen(self.listen)
            grpc_host, grpc_port = split_listen(self.grpc_listen)
            try:
                held.append(reserve_port(http_host, http_port))
                held.append(reserve_port(grpc_host, grpc_port))
            except OSError as exc:
                log.error("cannot listen on %s or %s: %s", self.listen, self.grpc_listen, exc)
                return 2
            http_port, grpc_port = (sock.getsockname()[1] for sock in held)
            (run_dir / "metrics").mkdir()
            command = [
                sys.executable,
                "-m",
                "inlet_app.cli",
                *self.argv,
                "--port",
                str(http_port),
                "--grpc",
                _join(grpc_host, grpc_port),
            ]
            return await self._serve(
                run_dir, command, f"{http_host}:{http_port}", _join(grpc_host, grpc_port)
            )
        finally:
            for sock in held:
                sock.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    async def _serve(self, run_dir: Path, command: list[str], http: str, grpc: str) -> int:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()

        def stop(sig: signal.Signals) -> None:
            if not self.stopping:
                log.info("%s: stopping %d workers (each drains)", sig.name, len(self.workers))
            self.stopping = True
            stopped.set()
            self._signal_all(signal.SIGTERM)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)
        try:
            first = [await self._spawn(run_dir, command, i, False) for i in self._slots]
            started = await asyncio.gather(*(w.wait_ready() for w in first))
            if not all(started) and not self.stopping:
                failed = [w.index for w, ok in zip(first, started, strict=True) if not ok]
                log.error("worker(s) %s could not start: stopping", failed)
                self.stopping = True
                self._signal_all(signal.SIGTERM)
                await asyncio.gather(*(w.process.wait() for w in first))
                return 1
            if self.stopping:  # SIGTERM while starting: those serving now drain
                self._signal_all(signal.SIGTERM)
            else:
                log.info(
                    "%d workers serving on %s://%s/segment, gRPC %s (supervisor pid %d)%s",
                    self.count,
                    self.scheme,
                    http,
                    grpc,
                    os.getpid(),
                    self._pinned(),
                )
            watchers = [asyncio.create_task(self._watch(run_dir, command, w)) for w in first]
            await asyncio.gather(*watchers)
        finally:
            for sig in _FORWARDED:
                loop.remove_signal_handler(sig)
        unclean = {i: code for i, code in self.exit_codes.items() if code != 0}
        if unclean:
            log.warning("stopped; workers that did not stop cleanly: %s", unclean)
            return 1
        log.info("stopped")
        return 0

    def _cpu(self, index: int) -> int | None:
        return context.worker_cpu(index, os.sched_getaffinity(0)) if self.pin else None

    def _pinned(self) -> str:
        """For the serving line: which CPU each worker runs on, if pinned."""
        if not self.pin:
            return ""
        return ", pinned to CPUs " + " ".join(str(self._cpu(i)) for i in self._slots)

    @property
    def _slots(self) -> range:
        return range(1, self.count + 1)

    def _signal_all(self, sig: signal.Signals) -> None:
        """Send `sig` to every worker that serves (one still starting gets SIGTERM once
        it serves: before, it has no handler and would die of it)."""
        for worker in self.workers.values():
            if worker.serving and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def _spawn(self, run_dir: Path, command: list[str], index: int, replaces: bool) -> Worker:
        read_end, write_end = os.pipe()
        environ = {
            **self.environ,
            context.ENV_INDEX: str(index),
            context.ENV_COUNT: str(self.count),
            context.ENV_DIR: str(run_dir),
            context.ENV_READY_FD: str(write_end),
            context.ENV_REPLACES: "1" if replaces else "0",
            context.ENV_PARENT: str(os.getpid()),
            context.ENV_LOG_JSON: "0" if sys.stderr.isatty() else "1",
            "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),
        }
        cpu = self._cpu(index)
        if cpu is not None:
            environ[context.ENV_CPU] = str(cpu)
        try:
            process = await asyncio.create_subprocess_exec(
                *command, env=environ, pass_fds=(write_end,)
            )
        finally:
            os.close(write_end)
        ready = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(ready), os.fdopen(read_end, "rb")
        )
        worker = Worker(index, process, ready, time.monotonic())
        self.workers[index] = worker
        return worker

    async def _watch(self, run_dir: Path, command: list[str], worker: Worker) -> None:
        """Until stopping: wait for the slot's worker to end, start another."""
        delay = RESTART_DELAY_S
        while True:
            code = await worker.process.wait()
            mark_process_dead(worker.process.pid, str(run_dir / "metrics"))  # type: ignore[no-untyped-call]
            if self.stopping:
                self.exit_codes[worker.index] = code
                return
            lived = time.monotonic() - worker.started
            delay = RESTART_DELAY_S if lived >= STEADY_S else delay
            log.warning(
                "worker %d (pid %d) %s after %.1f s; starting another in %.1f s",
                worker.index,
                worker.process.pid,
                _describe(code),
                lived,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
            if self.stopping:
                self.exit_codes[worker.index] = code
                return
            worker = await self._spawn(run_dir, command, worker.index, True)
            if await worker.wait_ready():
                log.info("worker %d serving again (pid %d)", worker.index, worker.process.pid)
                if self.stopping:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.send_signal(signal.SIGTERM)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
