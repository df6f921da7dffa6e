"""One worker process as its supervisor sees it: sending to it, a reader thread that routes
what it sends to the call waiting for it, and the two exchanges of the instance itself (load
with its deadline, unload-and-exit with its deadline).

Each call has a queue of ``(kind, payload)``; the instance's own answers (loaded, unloaded,
its errors) go to ``control``, everything else (facts, progress, logs) to ``on_message``. When
the socket ends, every waiting call gets ``DIED`` with a ``WorkerDied`` naming the exit code or
signal, and ``on_exit`` tells the supervisor.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

from ..errors import ApplyFailed, Code, Unavailable
from . import protocol as p
from .processes import WorkerProcess

DIED = "died"  # a message the reader makes up: the process ended (payload: WorkerDied)
log = logging.getLogger(__name__)


class WorkerDied(Unavailable):
    """A worker process ended while a call was on it, or before it could take one."""

    code: str = Code.WORKER_CRASHED


Message = tuple[str, Any]


class Link:
    """A process, its calls in flight and its reader. ``ended_by`` is set when the host ends
    the process on purpose (why); a process that ends with it unset crashed."""

    def __init__(self, process: WorkerProcess, model: str, label: str,
                 on_message: Callable[[str, Any], None],
                 on_exit: Callable[[Link, str], None]) -> None:
        self.process = process
        self.model = model
        self.label = label  # "model X (backend)", for messages
        self.control: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.calls: dict[int, queue.SimpleQueue[Message]] = {}
        self.ended_by: str | None = None
        self.restart_after = False  # ended by the host, but the instance should come back
        self.exit_reason: str | None = None
        self.exited = threading.Event()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # calls, ended_by
        # Its own lock: a send blocked on a full socket must never hold up the reader.
        self._send_lock = threading.Lock()
        self._on_message = on_message
        self._on_exit = on_exit
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"worker-{process.pid}-reader")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def usable(self) -> bool:
        """Neither ended by the host nor gone: a call sent now can reach the backend."""
        return self.ended_by is None and not self.exited.is_set()

    def send(self, kind: str, call_id: int, payload: Any) -> None:
        """Best effort: a send to a process that died fails quietly, and the reader fails
        the calls when it reads the end."""
        with self._send_lock, contextlib.suppress(OSError):
            self.process.conn.send((kind, call_id, payload))

    def open_call(self) -> tuple[int, queue.SimpleQueue[Message]]:
        """A new call id and its queue; a link that has ended answers DIED at once."""
        inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        with self._lock:
            call_id = next(self._ids)
            if self.exited.is_set():
                inbox.put((DIED, self.died()))
            else:
                self.calls[call_id] = inbox
        return call_id, inbox

    def close_call(self, call_id: int) -> None:
        with self._lock:
            self.calls.pop(call_id, None)

    def kill(self, reason: str, restart: bool = False) -> None:
        """End the process on purpose; the reader then fails its calls and calls on_exit."""
        with self._lock:
            if self.ended_by is None:
                self.ended_by = reason
                self.restart_after = restart
        self.process.kill()

    def expect_exit(self, reason: str) -> None:
        """The process is about to end by the host's wish (``reason``), not by a crash."""
        with self._lock:
            if self.ended_by is None:
                self.ended_by = reason

    def load(self, spec: bytes, timeout: float) -> p.Facts:
        """Have the worker load the instance: its facts, or the load's own error raised (the
        process then lives on, so unload can release what load got). Past ``timeout`` the
        process is killed: ApplyFailed ``load_timed_out``."""
        self.send(p.LOAD, 0, spec)
        message = wait_for(self.control, time.monotonic() + timeout)
        if message is None:
            self.kill(f"load timed out after {timeout:g} s")
            raise ApplyFailed(f"{self.label}: load timed out after {timeout:g} s",
                              code=Code.LOAD_TIMED_OUT,
                              details={"model": self.model, "step": "load"})
        kind, payload = message
        if kind == DIED:
            raise payload
        if kind == p.ERROR:
            raise p.decode_error(payload)
        return payload

    def retire(self, timeout: float) -> BaseException | None:
        """Have the worker unload the instance and exit; kill it at ``timeout``. Returns why
        the unload did not end cleanly (logged too), else None: a ``backend_timeout`` past
        ``timeout``, the backend's own error, or WorkerDied."""
        if self.exited.is_set():
            return None
        self.expect_exit("unloaded")
        self.send(p.UNLOAD, 0, None)
        deadline = time.monotonic() + timeout
        message = wait_for(self.control, deadline)
        problem: BaseException | None = None
        if message is None:
            log.warning("%s: unload() did not return within %g s: worker killed", self.label,
                        timeout)
            problem = Unavailable(
                f"{self.label}: unload() did not return within {timeout:g} s; its worker was "
                "killed", code=Code.BACKEND_TIMEOUT,
                details={"timeout_s": timeout, "pid": self.pid})
        elif message[0] == p.ERROR:
            problem = p.decode_error(message[1])
            log.warning("%s: unload failed: %s", self.label, problem)
        elif message[0] == DIED:
            problem = message[1]
            log.warning("%s: its worker died during unload (%s)", self.label, self.exit_reason)
        if not self.exited.wait(max(0.0, min(5.0, deadline - time.monotonic()))):
            self.kill("it did not exit after unload")
        return problem

    def died(self) -> WorkerDied:
        reason = self.exit_reason or "it is gone"
        if self.ended_by:
            reason = f"{self.ended_by} ({reason})"
        return WorkerDied(f"{self.label}: its worker (pid {self.pid}) ended: {reason}",
                          details={"pid": self.pid, "exit": self.exit_reason})

    def _read(self) -> None:
        conn = self.process.conn
        while True:
            try:
                data = conn.recv_bytes(p.MAX_MESSAGE_BYTES)
            except OSError as exc:
                # The length is read first: a message past the limit is refused unread, and
                # the connection cannot be read past it, so the worker ends.
                if "bad message length" in str(exc):
                    log.error("%s: worker %d sent a message past the %d MiB limit", self.label,
                              self.pid, p.MAX_MESSAGE_BYTES // 2**20)
                    self.kill(f"it sent a message past the {p.MAX_MESSAGE_BYTES // 2**20} MiB "
                              "limit", restart=True)
                break
            except EOFError:
                break
            try:
                kind, call_id, payload = ForkingPickler.loads(data)
            except Exception:  # an unreadable message: the worker is broken, end it
                log.exception("%s: unreadable message from worker %d", self.label, self.pid)
                self.kill("it sent an unreadable message", restart=True)
                continue
            if call_id == 0:
                if kind in (p.LOADED, p.ERROR, p.UNLOADED):
                    self.control.put((kind, payload))
                else:
                    self._hear(kind, payload)
                continue
            with self._lock:
                inbox = self.calls.get(call_id)
            if inbox is not None:
                inbox.put((kind, payload))
        self._ended()

    def _hear(self, kind: str, payload: Any) -> None:
        # A progress callback or log handler that raises must not end the reader: nobody
        # would then see the process end.
        try:
            self._on_message(kind, payload)
        except Exception:
            log.exception("%s: handling a %s message from worker %d failed", self.label, kind,
                          self.pid)

    def _ended(self) -> None:
        try:
            self.process.popen.wait(5)
        except subprocess.TimeoutExpired:  # the socket closed but the process lives on
            self.process.kill()
        with contextlib.suppress(OSError):
            self.process.conn.close()
        with self._lock:
            self.exit_reason = self.process.exit_reason()
            self.exited.set()
            calls, self.calls = list(self.calls.values()), {}
        error = self.died()
        for inbox in calls:
            inbox.put((DIED, error))
        self.control.put((DIED, error))
        self._on_exit(self, self.exit_reason)


def wait_for(inbox: queue.SimpleQueue[Message], deadline: float,
              poll_s: float = 0.05, on_poll: Callable[[], None] | None = None
              ) -> Message | None:
    """The next message before ``deadline`` (monotonic), or None; ``on_poll``, when given,
    runs every ``poll_s`` while waiting (to forward a cancel)."""
    while True:
        if on_poll is not None:
            on_poll()
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return inbox.get(timeout=min(poll_s, left) if on_poll is not None else left)
        except queue.Empty:
            continue
