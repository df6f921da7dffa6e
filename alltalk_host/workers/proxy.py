"""``WorkerBackend``: one backend instance in a worker process, behind the ``Backend`` interface.

The host calls it as it calls any backend; the instance itself lives in a child process the
host can stop. What that adds, and why:

- Deadlines. ``load()`` gives up at ``limits.load_s`` ("load timed out after N s",
  ``load_timed_out``); a call that gives no answer within its deadline (``synthesize_within``;
  ``stream_within`` per chunk) kills the worker and raises 503 ``backend_timeout``. Killing is
  the only way to stop a call stuck in native code, and it returns all its memory.
- Crashes. A worker that dies fails the calls on it with ``WorkerDied`` (503
  ``worker_crashed``) and restarts in the background: a backoff from 0.5 s doubling, load and
  the optional ``check_after_restart`` (the host's warm-up) before it takes calls again. After
  ``limits.max_restarts`` restarts with no successful call between them it stays ``failed``.
  A call that arrives while it restarts waits up to 15 s.
- Unload never beside a call. ``unload()`` with calls still running kills the worker without
  calling the backend's ``unload()`` (its memory goes with the process); otherwise the worker
  unloads and exits, killed at ``limits.unload_s``.
- Facts without a call. ``voices()``, ``status()``, ``capabilities`` and ``sample_rate`` answer
  from what the worker last sent; ``memory_estimate()`` measures the process (RSS, plus GPU
  memory where NVML tells it).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Any

from ..backend import Audio, Backend, Capabilities, ModelContext, SpeechRequest
from ..errors import ApplyFailed, Code, Unavailable
from . import protocol as p
from .link import DIED, Link, Message, WorkerDied, wait_for
from .processes import WorkerGroup, memory_of

log = logging.getLogger(__name__)

RESTART_WAIT_S = 15.0  # how long a call waits for a restarting worker
BACKOFF_S, BACKOFF_CAP_S = 0.5, 30.0
POLL_S = 0.05  # how often a waiting call looks at its request's cancel flag

__all__ = ["WorkerBackend", "WorkerDied", "WorkerState"]


class WorkerState(StrEnum):
    NEW = "new"
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"


class WorkerBackend(Backend):
    """A proxy with the ``Backend`` interface for one instance of ``backend_class`` in a
    worker process of ``group``."""

    name = "worker"

    def __init__(self, backend_class: type[Backend], settings: Any, context: ModelContext, *,
                 group: WorkerGroup, limits: p.WorkerLimits | None = None,
                 check_after_restart: Callable[[Backend], None] | None = None) -> None:
        super().__init__(settings, context)
        self.backend_class = backend_class
        self.limits = limits or p.WorkerLimits()
        self._group = group
        self._check_after_restart = check_after_restart
        self._label = f"model {context.name} ({backend_class.name})"
        self._cond = threading.Condition()  # state, links, running calls
        self._state = WorkerState.NEW
        self._link: Link | None = None  # the process taking calls
        self._pending: Link | None = None  # a process loading (the first load or a restart)
        self._facts: p.Facts | None = None
        self._running: dict[tuple[int, int], float] = {}  # (pid, call id) -> its start
        self._restarts = 0
        self._failures = 0  # restarts since a call last succeeded
        self._last_exit: str | None = None
        self._stop = threading.Event()  # kill or unload: no more restarts

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> Any:
        raise TypeError("a WorkerBackend takes settings its backend class has parsed")

    # --- what the host reads without a call ------------------------------------------------

    @property  # type: ignore[override]
    def capabilities(self) -> Capabilities:
        facts = self._facts
        return facts.capabilities if facts else self.backend_class.capabilities

    @property
    def sample_rate(self) -> int:
        return self._loaded_facts().sample_rate

    def voices(self) -> list[str]:
        return list(self._loaded_facts().voices)

    def status(self) -> dict[str, Any]:
        return dict(self._loaded_facts().status)

    def memory_estimate(self) -> int:
        """The worker's resident memory, plus its GPU memory where NVML measures it (else the
        larger of the RSS and the backend's own figure, which then may include device memory
        the host cannot see)."""
        link = self._link
        if link is None or link.exited.is_set():
            return 0
        rss, gpu = memory_of(link.pid)
        if gpu is not None:
            return rss + gpu
        facts = self._facts
        return max(rss, facts.memory_estimate if facts else 0)

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def accepting(self) -> bool:
        """Whether a call made now would reach a loaded worker (no wait for a restart)."""
        link = self._link
        return self._state == WorkerState.READY and link is not None and link.usable

    @property
    def loading(self) -> bool:
        return self._state in (WorkerState.LOADING, WorkerState.RESTARTING)

    def worker(self) -> dict[str, Any]:
        """The worker for status: pid, state, restarts, last exit, calls running and their
        ages, memory."""
        with self._cond:
            link = self._link or self._pending
            now = time.monotonic()
            ages = sorted((round(now - t, 3) for t in self._running.values()), reverse=True)
            info: dict[str, Any] = {
                "pid": link.pid if link else None, "state": str(self._state),
                "restarts": self._restarts, "last_exit": self._last_exit,
                "running": len(ages), "running_ages_s": ages}
        info["rss"], info["gpu_bytes"] = memory_of(link.pid) if link else (0, None)
        return info

    # --- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        with self._cond:
            if self._state != WorkerState.NEW:
                raise RuntimeError(f"{self._label}: load() on a worker that is {self._state}")
            self._state = WorkerState.LOADING
        self._group.add(self)
        link = None
        try:
            link = self._start_load()
            self._await_load(link)
        except BaseException:
            with self._cond:
                self._pending = None
                if self._state == WorkerState.LOADING:
                    self._state = WorkerState.FAILED
                    # A load that raised: the worker stays, so unload() can release what
                    # load() got (the contract's promise for a failed load).
                    if link is not None and not link.exited.is_set():
                        self._link = link
            raise
        with self._cond:
            self._pending = None
            if self._state != WorkerState.LOADING:  # killed while it loaded
                link.kill(f"{self._state} while loading")
                raise link.died()
            self._link, self._state = link, WorkerState.READY
            self._cond.notify_all()

    def unload(self) -> None:
        with self._cond:
            if self._state in (WorkerState.UNLOADING, WorkerState.UNLOADED):
                return
            self._state = WorkerState.UNLOADING
            self._stop.set()
            self._cond.notify_all()
            link, pending, self._link, self._pending = self._link, self._pending, None, None
            running = len(self._running)
        if pending is not None:
            pending.kill("unloaded while loading")
        if link is not None and running:
            log.warning("%s: unloaded with %d call(s) still running: worker killed, the "
                        "backend's unload() not called beside them", self._label, running)
            link.kill(f"unloaded while {running} call(s) ran")
        elif link is not None:
            self._retire(link)
        with self._cond:
            self._state = WorkerState.UNLOADED
            self._cond.notify_all()
        self._group.discard(self)

    def kill(self, reason: str) -> None:
        """End the worker now, for good (no restart): its calls fail with WorkerDied."""
        with self._cond:
            if self._state == WorkerState.UNLOADED:
                return
            self._stop.set()
            links = [link for link in (self._link, self._pending) if link is not None]
            self._link = self._pending = None
            if self._state != WorkerState.UNLOADING:
                self._state = WorkerState.FAILED
            self._last_exit = f"killed: {reason}"
            self._cond.notify_all()
        for link in links:
            link.kill(reason)
        self._group.discard(self)

    # --- calls -------------------------------------------------------------------------------

    def synthesize(self, request: SpeechRequest) -> Audio:
        return self.synthesize_within(request, self.limits.request_deadline_s(request.text))

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        return self.stream_within(request, self.limits.request_deadline_s(request.text))

    def synthesize_within(self, request: SpeechRequest, timeout: float) -> Audio:
        """``synthesize`` with a deadline: past it the worker is killed (503 backend_timeout)."""
        return self._synthesize_on(self._ready_link(), request, timeout, counts=True)

    def stream_within(self, request: SpeechRequest, chunk_timeout: float) -> Iterator[Audio]:
        """``stream`` with a deadline for each chunk (from the call or the chunk before)."""
        link = self._ready_link()
        call_id, inbox = self._send_call(link, "stream", request)
        try:
            while True:
                kind, payload = self._next(link, call_id, inbox, request, chunk_timeout)
                if kind == p.END:
                    return
                try:
                    yield payload
                except BaseException:  # the consumer stopped pulling (closed, or an error)
                    self._stop_stream(link, call_id, inbox, chunk_timeout)
                    raise
        finally:
            self._close_call(link, call_id)

    def _synthesize_on(self, link: Link, request: SpeechRequest, timeout: float,
                       counts: bool) -> Audio:
        call_id, inbox = self._send_call(link, "synthesize", request)
        try:
            _, payload = self._next(link, call_id, inbox, request, timeout, counts)
            return payload
        finally:
            self._close_call(link, call_id)

    def _ready_link(self) -> Link:
        deadline = time.monotonic() + RESTART_WAIT_S
        with self._cond:
            while True:
                link = self._link
                if self._state == WorkerState.READY and link is not None and link.usable:
                    return link
                # READY with a link that ended: its reader is about to say so (_on_exit), and
                # the restart follows; wait for it as for a restart.
                left = deadline - time.monotonic()
                if self._state in (WorkerState.RESTARTING, WorkerState.READY) and left > 0:
                    self._cond.wait(left)
                elif self._state in (WorkerState.READY, WorkerState.RESTARTING,
                                     WorkerState.FAILED):
                    raise WorkerDied(
                        f"{self._label}: its worker is not back after it ended "
                        f"({self._last_exit})", details={"state": str(self._state)})
                else:
                    raise Unavailable(f"{self._label} is not loaded ({self._state})",
                                      code=Code.MODEL_NOT_LOADED)

    def _send_call(self, link: Link, method: str, request: SpeechRequest
                   ) -> tuple[int, Any]:
        call_id, inbox = link.open_call()
        with self._cond:
            self._running[(link.pid, call_id)] = time.monotonic()
        link.send(p.CALL, call_id, (method, p.request_fields(request)))
        return call_id, inbox

    def _close_call(self, link: Link, call_id: int) -> None:
        link.close_call(call_id)
        with self._cond:
            self._running.pop((link.pid, call_id), None)

    def _next(self, link: Link, call_id: int, inbox: Any, request: SpeechRequest,
              timeout: float, counts: bool = True) -> Message:
        """The call's next message; raises its error, WorkerDied, or backend_timeout."""
        cancel_sent = False

        def forward_cancel() -> None:
            nonlocal cancel_sent
            if not cancel_sent and request.cancelled.is_set():
                cancel_sent = True
                link.send(p.CANCEL, call_id, None)

        message = wait_for(inbox, time.monotonic() + timeout, POLL_S, forward_cancel)
        if message is None:
            link.kill(f"a call gave no answer within {timeout:g} s", restart=True)
            raise Unavailable(
                f"{self._label}: the backend gave no answer within {timeout:g} s; its worker "
                "was killed", code=Code.BACKEND_TIMEOUT,
                details={"timeout_s": timeout, "pid": link.pid})
        kind, payload = message
        if kind == DIED:
            raise payload
        if counts and kind in (p.RESULT, p.END, p.ERROR):
            self._failures = 0  # the worker answered: a restart loop is over
        if kind == p.ERROR:
            raise p.decode_error(payload)
        return message

    def _stop_stream(self, link: Link, call_id: int, inbox: Any, timeout: float) -> None:
        """Cancel a stream the consumer left, and wait until the worker has stopped it, so the
        slot the host gives back is really free."""
        link.send(p.CANCEL, call_id, None)
        deadline = time.monotonic() + timeout
        while (message := wait_for(inbox, deadline)) is not None:
            if message[0] in (p.END, p.ERROR, DIED):
                return
        link.kill(f"a cancelled stream did not stop within {timeout:g} s", restart=True)

    # --- processes ---------------------------------------------------------------------------

    def _start_load(self) -> Link:
        """A worker process told to load the instance, registered as pending."""
        spec = pickle.dumps(p.LoadSpec(
            self.backend_class, self.settings, self.context.name, self.context.models_dir,
            self.context.cache_dir, logging.getLogger().getEffectiveLevel()))
        link = Link(self._group.new_process(), self._label, self._on_message, self._on_exit)
        with self._cond:
            stopped = self._stop.is_set()
            if not stopped:
                self._pending = link
        if stopped:
            link.kill("stopped before its load")
            raise link.died()
        link.send(p.LOAD, 0, spec)
        return link

    def _await_load(self, link: Link) -> None:
        message = wait_for(link.control, time.monotonic() + self.limits.load_s)
        if message is None:
            link.kill(f"load timed out after {self.limits.load_s:g} s")
            raise ApplyFailed(f"{self._label}: load timed out after {self.limits.load_s:g} s",
                              code=Code.LOAD_TIMED_OUT,
                              details={"model": self.context.name, "step": "load"})
        kind, payload = message
        if kind == DIED:
            raise payload
        if kind == p.ERROR:
            raise p.decode_error(payload)
        self._facts = payload

    def _retire(self, link: Link) -> None:
        """Ask the worker to unload and exit; kill it at ``limits.unload_s``."""
        if link.exited.is_set():
            return
        link.expect_exit("unloaded")
        link.send(p.UNLOAD, 0, None)
        deadline = time.monotonic() + self.limits.unload_s
        message = wait_for(link.control, deadline)
        if message is None:
            log.warning("%s: unload() did not return within %g s: worker killed",
                        self._label, self.limits.unload_s)
        elif message[0] == p.ERROR:
            log.warning("%s: unload failed: %s", self._label, p.decode_error(message[1]))
        if not link.wait_exit(max(0.0, min(5.0, deadline - time.monotonic()))):
            link.kill("it did not exit after unload")

    def _on_message(self, kind: str, payload: Any) -> None:
        if kind == p.FACTS:
            self._facts = payload
        elif kind == p.PROGRESS:
            self.context.progress(*payload)
        elif kind == p.LOG:
            logger = logging.getLogger(payload["name"])
            if logger.isEnabledFor(payload["levelno"]):
                logger.handle(logging.makeLogRecord(payload))

    def _on_exit(self, link: Link, reason: str) -> None:
        """The reader saw ``link``'s process end: fail over to a restart if it was serving."""
        with self._cond:
            if link is not self._link and link is not self._pending:
                return  # a process already replaced or retired
            self._last_exit = f"{link.ended_by}: {reason}" if link.ended_by else reason
            if link is self._pending:
                return  # its loader sees DIED and decides
            self._link = None
            restart = (link.ended_by is None or link.restart_after) and (
                self._state == WorkerState.READY)
            if restart:
                self._state = WorkerState.RESTARTING
            elif self._state == WorkerState.READY:
                self._state = WorkerState.FAILED
            self._cond.notify_all()
        if link.ended_by is None:
            log.warning("%s: worker pid %d died (%s)%s", self._label, link.pid, reason,
                        "; restarting" if restart else "")
        if restart:
            threading.Thread(target=self._restart, daemon=True,
                             name=f"restart {self.context.name}").start()

    def _restart(self) -> None:
        while True:
            with self._cond:
                if self._state != WorkerState.RESTARTING:
                    return
                if self._failures >= self.limits.max_restarts:
                    self._state = WorkerState.FAILED
                    self._cond.notify_all()
                    log.error("%s: %d restarts without a successful call: giving up",
                              self._label, self._failures)
                    return
                delay = min(BACKOFF_CAP_S, BACKOFF_S * 2 ** self._failures)
                self._failures += 1
                self._restarts += 1
            if self._stop.wait(delay):
                return
            link = None
            try:
                link = self._start_load()
                self._await_load(link)
                if self._check_after_restart is not None:
                    self._check_after_restart(_Warming(self, link))
            except Exception as exc:  # noqa: BLE001 - logged; the next attempt follows the backoff
                log.warning("%s: restart %d failed: %s", self._label, self._restarts, exc)
                with self._cond:
                    self._pending = None
                if link is not None:
                    self._retire(link)
                continue
            with self._cond:
                self._pending = None
                if self._state == WorkerState.RESTARTING:
                    self._link, self._state = link, WorkerState.READY
                    self._cond.notify_all()
                    log.info("%s: worker restarted (pid %d)", self._label, link.pid)
                    return
            link.kill(f"{self._state} while restarting")
            return

    def _loaded_facts(self) -> p.Facts:
        facts = self._facts
        if facts is None:
            raise RuntimeError(f"{self._label} is not loaded")
        return facts


class _Warming(Backend):
    """The restarting worker as the warm-up sees it: calls go to the new process before it
    takes the host's calls, with the warm-up deadline."""

    name = "worker-warming"

    def __init__(self, proxy: WorkerBackend, link: Link) -> None:
        super().__init__(proxy.settings, proxy.context)
        self._proxy = proxy
        self._link = link
        self.capabilities = proxy.capabilities

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> Any:
        raise TypeError("not a backend class")

    def load(self) -> None:
        raise RuntimeError("a warming worker is loaded already")

    def unload(self) -> None:
        raise RuntimeError("a warming worker is unloaded by its proxy")

    @property
    def sample_rate(self) -> int:
        return self._proxy.sample_rate

    def voices(self) -> list[str]:
        return self._proxy.voices()

    def synthesize(self, request: SpeechRequest) -> Audio:
        return self._proxy._synthesize_on(self._link, request, self._proxy.limits.warmup_s,
                                          counts=False)
