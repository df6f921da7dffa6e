"""One worker process as its proxy sees it: sending to it, and a reader thread that routes what
it sends to the call waiting for it, until the process ends.

Each call has a queue of ``(kind, payload)``; the instance's own messages (loaded, unloaded,
its errors) go to ``control``. When the socket ends, every waiting call gets ``DIED`` with a
``WorkerDied`` naming the exit code or signal, and ``on_exit`` tells the proxy.
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
from typing import Any

from ..errors import Code, Unavailable
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

    def __init__(self, process: WorkerProcess, label: str,
                 on_message: Callable[[str, Any], None],
                 on_exit: Callable[[Link, str], None]) -> None:
        self.process = process
        self.label = label  # "model X", for messages
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

    def wait_exit(self, timeout: float) -> bool:
        return self.exited.wait(timeout)

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
                kind, call_id, payload = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unreadable message: the worker is broken, end it
                log.exception("%s: unreadable message from worker %d", self.label, self.pid)
                self.kill("it sent an unreadable message", restart=True)
                continue
            if call_id == 0:
                if kind in (p.LOADED, p.ERROR, p.UNLOADED):
                    self.control.put((kind, payload))
                else:
                    self._on_message(kind, payload)
                continue
            with self._lock:
                inbox = self.calls.get(call_id)
            if inbox is not None:
                inbox.put((kind, payload))
        self._ended()

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
    """The next message before ``deadline`` (monotonic), or None; ``on_poll`` runs every
    ``poll_s`` while waiting (to forward a cancel)."""
    while True:
        if on_poll is not None:
            on_poll()
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return inbox.get(timeout=min(poll_s, left))
        except queue.Empty:
            continue
