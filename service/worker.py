"""One process of `inlet serve --workers N`: what it learns from its supervisor
(inlet_app/supervisor.py), and the notices it exchanges with its siblings.

Every worker is a whole `inlet serve` (bridge and core) on the shared ports. What one
worker does that the others must hear of at once travels as a datagram on a Unix
socket of the supervisor's private folder, one socket per worker:

- `c`: events were committed (Subscribe streams of the others re-read now, instead of
  at their next poll: SQLite cannot tell a process of another one's commit);
- `k<key id>` / `k`: a key (or every cached key) changed through this worker's
  AdminService (revoked, rotated, account suspended): the others forget it too;
- `m`: the maintenance switch was set through this worker.

A notice is a hint: one lost (a sibling restarting) costs only the 2 s the caches and
the poll would take anyway.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

ENV_INDEX: Final = "INLET_WORKER_INDEX"
ENV_COUNT: Final = "INLET_WORKER_COUNT"
ENV_DIR: Final = "INLET_WORKER_DIR"
ENV_READY_FD: Final = "INLET_WORKER_READY_FD"
ENV_REPLACES: Final = "INLET_WORKER_REPLACES"
ENV_PARENT: Final = "INLET_WORKER_PARENT"
#: The CPU the worker runs on, with `--pin-workers` (absent: any the system chooses).
ENV_CPU: Final = "INLET_WORKER_CPU"
#: "1": log JSON; "0": text (the supervisor's stderr is a terminal, the worker's a pipe).
ENV_LOG_JSON: Final = "INLET_WORKER_LOG_JSON"

#: Worker indexes go from 1; the debugger's exchange ids keep the index in 6 bits
#: (http_bridge/recorder.py), 0 being a process that is no worker.
MAX_WORKERS: Final = 63

_PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True)
class WorkerContext:
    """A worker's place among its siblings (from the environment its supervisor set)."""

    index: int
    """1 to `count`: the worker's slot (a replacement takes the slot of the one that died)."""
    count: int
    run_dir: Path
    """The supervisor's private folder: sockets, the shared rate-limit table, metrics."""
    ready_fd: int | None = None
    replaces: bool = False
    """Started to replace a worker that died."""
    log_json: bool = True
    cpu: int | None = None
    """`--pin-workers`: the one CPU this worker runs on."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerContext | None:
        """The context of a worker process; None in a process no supervisor started."""
        if ENV_INDEX not in environ:
            return None
        ready = environ.get(ENV_READY_FD)
        return cls(
            index=int(environ[ENV_INDEX]),
            count=int(environ[ENV_COUNT]),
            run_dir=Path(environ[ENV_DIR]),
            ready_fd=int(ready) if ready else None,
            replaces=environ.get(ENV_REPLACES) == "1",
            log_json=environ.get(ENV_LOG_JSON, "1") == "1",
            cpu=int(environ[ENV_CPU]) if environ.get(ENV_CPU) else None,
        )

    def notice_path(self, index: int) -> Path:
        return self.run_dir / f"w{index}.notice"

    def debugger_path(self, index: int) -> Path:
        return self.run_dir / f"w{index}.http"

    @property
    def rate_limit_path(self) -> Path:
        return self.run_dir / "rate-limit"

    @property
    def siblings(self) -> list[int]:
        return [i for i in range(1, self.count + 1) if i != self.index]

    def announce_ready(self) -> None:
        """Tell the supervisor this worker serves (it waits for every worker's word)."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, b"ready\n")
        finally:
            os.close(self.ready_fd)


def die_with_parent(environ: Mapping[str, str]) -> None:
    """SIGTERM this process when its supervisor dies (a `kill -9` of the supervisor must
    not leave workers serving the port alone): Linux's PR_SET_PDEATHSIG."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    parent = environ.get(ENV_PARENT)
    if parent is not None and os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the call above


def worker_cpu(index: int, allowed: set[int]) -> int:
    """`--pin-workers`: the CPU of worker `index` (from 1), among the CPUs the supervisor
    may run on, in turn (more workers than CPUs share them evenly)."""
    cpus = sorted(allowed)
    return cpus[(index - 1) % len(cpus)]


def pin_to_cpu(cpu: int) -> bool:
    """Run every thread of this process, and the threads it starts later, on `cpu` only;
    whether it could. A CPU this process may not use (taken offline, or out of its
    cpuset since the supervisor looked) is a warning, and the worker runs unpinned:
    failing would only have the supervisor start it again, and again.

    Linux sets the affinity per thread (a new thread inherits its creator's): all that
    exist now are set, in case a library started one before this call."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:  # pragma: no cover - the thread ended meanwhile
            continue
        except OSError as exc:
            log.warning("cannot run on CPU %d (%s): running on any", cpu, exc.strerror)
            return False
    return True


COMMIT: Final = b"c"
KEY: Final = b"k"
MAINTENANCE: Final = b"m"


class Notices:
    """This worker's notice socket: sends to the siblings, hands what arrives to callbacks."""

    def __init__(self, context: WorkerContext) -> None:
        self._context = context
        self._targets = [str(context.notice_path(i)) for i in context.siblings]
        path = context.notice_path(context.index)
        path.unlink(missing_ok=True)  # the socket of the worker this one replaces
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        self._commit_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def listen(
        self,
        on_commit: Callable[[], None],
        on_key: Callable[[str | None], None],
        on_maintenance: Callable[[], None],
    ) -> None:
        """Start handing the siblings' notices to the callbacks (on this event loop)."""
        self._loop = asyncio.get_running_loop()

        def receive() -> None:
            while True:
                try:
                    notice = self._socket.recv(256)
                except (BlockingIOError, InterruptedError):
                    return
                kind, rest = notice[:1], notice[1:]
                if kind == COMMIT:
                    on_commit()
                elif kind == KEY:
                    on_key(rest.decode("ascii", "replace") or None)
                elif kind == MAINTENANCE:
                    on_maintenance()

        self._loop.add_reader(self._socket.fileno(), receive)

    def commit(self) -> None:
        """Events were committed: tell the siblings, once per turn of the event loop
        however many calls committed in it."""
        if self._commit_pending:
            return
        self._commit_pending = True
        (self._loop or asyncio.get_running_loop()).call_soon(self._send_commit)

    def _send_commit(self) -> None:
        self._commit_pending = False
        self._send(COMMIT)

    def key(self, key_id: str | None) -> None:
        self._send(KEY + (key_id or "").encode("ascii", "replace"))

    def maintenance(self) -> None:
        self._send(MAINTENANCE)

    def _send(self, notice: bytes) -> None:
        for target in self._targets:
            try:
                self._socket.sendto(notice, target)
            except OSError as exc:
                # A sibling being replaced (no socket, or nobody reading it) or one with
                # a full queue (it has notices to read already): nothing to do.
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    log.debug("notice to %s not sent: %s", target, exc)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
