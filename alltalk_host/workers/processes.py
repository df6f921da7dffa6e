"""Worker processes: starting them, spares kept ready (one plain, one per backend that names
heavy imports), the set of a host's live workers, and what each one's memory is.

Each worker is a fresh interpreter (``python -c "...child import main; main(FD)"``), never a
fork of the host: a fork would copy the host's threads' locks and its loaded models, and
multiprocessing's forkserver re-imports the main script in every child. The host's
``sys.path`` goes along as PYTHONPATH, so an editable install or a worktree resolves the same
modules in the worker as in the host.

Every process is started from one long-lived thread of its ``WorkerGroup``: PR_SET_PDEATHSIG
fires when the *thread* that started a process ends, not the process, so a worker started from
a short-lived thread would be killed with that thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, Protocol

import psutil

from . import protocol as p


class WorkerProcess:
    """One started interpreter and the host's end of its socket."""

    def __init__(self, popen: subprocess.Popen[bytes], conn: Connection) -> None:
        self.popen = popen
        self.conn = conn
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, then reap it (a killed process exits at once, unless in the kernel).

        The socket stays open: its reader (``link.Link``) closes it once it has read the end,
        since closing an fd another thread reads could hand that thread a reused fd."""
        with contextlib.suppress(OSError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def exit_reason(self) -> str:
        code = self.popen.poll()
        if code is None:
            return "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by signal {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit code {code}"


def start_process(preload: Sequence[str] = (),
                  preload_after_s: float | None = None) -> WorkerProcess:
    """A new worker interpreter, its socket connected; it answers READY once imported (its
    ``preload`` after ``preload_after_s`` without a message: ``child.main``)."""
    host_end, child_end = socket.socketpair()
    paths = [os.path.abspath(entry) for entry in sys.path if entry]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    after = "" if preload_after_s is None else f", {float(preload_after_s)!r}"
    code = (f"from alltalk_host.workers.child import main; "
            f"main({child_end.fileno()}, {os.getpid()}, {list(preload)!r}{after})")
    try:
        # -P: no working directory at the head of sys.path, where a checkout of another
        # version would shadow the host's own modules.
        popen = subprocess.Popen([sys.executable, "-P", "-c", code],
                                 pass_fds=(child_end.fileno(),), env=env,
                                 stdin=subprocess.DEVNULL)
    finally:
        child_end.close()
    return WorkerProcess(popen, Connection(host_end.detach()))


def wait_ready(process: WorkerProcess, timeout: float) -> bool:
    """Whether the worker said READY within ``timeout`` (for measurements; nothing waits on
    it before sending work, since the socket holds the messages until the worker reads)."""
    if not process.conn.poll(timeout):
        return False
    kind, _, _ = process.conn.recv()
    return kind == p.READY


class Supervised(Protocol):
    """What the group needs of a worker it supervises (``supervisor.Supervisor``)."""

    @property
    def loading(self) -> bool: ...

    def kill(self, reason: str) -> None: ...


class WorkerGroup:
    """The live workers of one host, and where their processes come from.

    ``new_process(preload)`` hands out a spare started beforehand with those modules imported
    (``Backend.worker_preload``) and starts the next one like it: after a backend's first
    load, one spare for it waits; ``prestart()`` starts a plain one. ``kill_loading()``
    abandons loads at shutdown; ``kill_all()`` ends every worker and spare. A spare left at
    interpreter exit is killed by a finalizer.
    """

    def __init__(self, spare: bool = True, preload_after_s: float | None = None) -> None:
        self._keep_spare = spare
        self._preload_after_s = preload_after_s  # None: the child's own default
        self._lock = threading.Lock()
        self._workers: set[Supervised] = set()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # The spares, by what they import, sit in a box the finalizer shares, so the
        # finalizer holds no reference to the group (it would never be collected).
        self._spares: dict[tuple[str, ...], Future[WorkerProcess]] = {}
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_spares, self._spares, self._jobs)

    def new_process(self, preload: Sequence[str] = ()) -> WorkerProcess:
        """A worker process for a new load with ``preload`` imported: the spare when it is
        alive, else a new one."""
        key = tuple(preload)
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker group is closed")
            taken = self._spares.pop(key, None)
            if self._keep_spare:
                self._spares[key] = self._submit(key)
        if taken is not None:
            process = taken.result()
            if process.alive():
                return process
            process.kill()
            process.conn.close()
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker group is closed")
            fresh = self._submit(key)
        return fresh.result()

    def prestart(self) -> None:
        """Start a plain spare now (the first load then skips the interpreter's start).
        Returns once its process exists (milliseconds), not once it has imported."""
        with self._lock:
            if self._keep_spare and () not in self._spares and not self._closed:
                self._spares[()] = self._submit(())
            spare = self._spares.get(())
        if spare is not None:
            spare.result()

    def add(self, worker: Supervised) -> None:
        with self._lock:
            self._workers.add(worker)

    def discard(self, worker: Supervised) -> None:
        with self._lock:
            self._workers.discard(worker)

    def workers(self) -> list[Supervised]:
        with self._lock:
            return list(self._workers)

    def kill_loading(self, reason: str = "the host is shutting down") -> int:
        """Kill the workers still loading (a hung load must not hold up shutdown); how many."""
        loading = [w for w in self.workers() if w.loading]
        for worker in loading:
            worker.kill(reason)
        return len(loading)

    def kill_all(self, reason: str = "the host is shutting down") -> None:
        """Every worker and the spare, at once; the group starts no process after this."""
        with self._lock:
            self._closed = True
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.kill(reason)
        self._finalizer()

    def _submit(self, preload: tuple[str, ...]) -> Future[WorkerProcess]:
        future: Future[WorkerProcess] = Future()
        if self._thread is None:
            self._thread = threading.Thread(target=_starter,
                                            args=(self._jobs, self._preload_after_s),
                                            name="worker-starter", daemon=True)
            self._thread.start()
        self._jobs.put((future, preload))
        return future


_Job = tuple[Future[WorkerProcess], tuple[str, ...]]


def _starter(jobs: queue.SimpleQueue[_Job | None], preload_after_s: float | None) -> None:
    """The one thread that starts processes, for as long as its group lives."""
    while (job := jobs.get()) is not None:
        future, preload = job
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(start_process(preload, preload_after_s))
            except BaseException as exc:  # noqa: BLE001 - the taker raises it
                future.set_exception(exc)


def _kill_spares(spares: dict[tuple[str, ...], Future[WorkerProcess]],
                 jobs: queue.SimpleQueue[_Job | None]) -> None:
    jobs.put(None)  # the starter thread ends after the job in hand
    while spares:
        _, future = spares.popitem()
        if future.cancel():
            continue
        with contextlib.suppress(Exception):
            process = future.result(timeout=10)
            process.kill()
            process.conn.close()


def memory_of(pid: int) -> tuple[int, int | None]:
    """A process's resident memory, and its GPU memory when NVML can tell (else None)."""
    try:
        rss = int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        rss = 0
    nvml = _nvml()
    if nvml is None:
        return rss, None
    used = 0
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory)
    except nvml.NVMLError:
        return rss, None
    return rss, used


@functools.cache
def _nvml() -> Any:
    """pynvml, initialised, where it is installed and a driver answers; else None (once)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    return pynvml
