"""The life of one instance's worker processes: the first load, restarts after a crash, unload
and kill, the calls running on it, and what status shows of it.

States: new -> loading -> ready <-> restarting -> failed; unloading -> unloaded from any. A
process that ends while ready (a crash, an OOM kill, or killed for a call past its deadline)
fails its calls (WorkerDied) and restarts in the background: a backoff from 0.5 s doubling,
load, and the warm-up callback before it takes calls. After ``limits.max_restarts`` restarts
with no call answered between them the instance stays ``failed``. A call that arrives while it
restarts waits up to 15 s. Unload never runs beside a call: with calls running the process is
killed instead (its memory goes with it). ``on_change``, when given, hears each of those turns
of a serving process (it ended, it is back, the instance gave up) as ``info()`` plus ``change``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ..errors import Code, Unavailable
from .link import Link, WorkerDied
from .processes import WorkerGroup, memory_of
from .protocol import FACTS, WorkerLimits

log = logging.getLogger(__name__)

RESTART_WAIT_S = 15.0  # how long a call waits for a restarting worker
BACKOFF_S, BACKOFF_CAP_S = 0.5, 30.0


class WorkerState(StrEnum):
    NEW = "new"
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"


class Supervisor:
    """``spec()`` is the pickled LoadSpec; ``on_message`` hears facts, progress and logs;
    ``warm(link)``, when given, checks a restarted process before it takes calls;
    ``on_change(info)`` hears a serving process end, come back, or the instance give up."""

    def __init__(self, group: WorkerGroup, limits: WorkerLimits, model: str, label: str,
                 spec: Callable[[], bytes], on_message: Callable[[str, Any], None],
                 warm: Callable[[Link], None] | None = None,
                 on_change: Callable[[dict[str, Any]], None] | None = None,
                 preload: tuple[str, ...] = ()) -> None:
        self._group = group
        self._limits = limits
        self._model = model
        self._label = label
        self._spec = spec
        self._on_message = on_message
        self._warm = warm
        self._on_change = on_change
        self._preload = preload  # what its processes import before they load (a spare's)
        self._cond = threading.Condition()  # everything below
        self.state = WorkerState.NEW
        self._link: Link | None = None  # the process taking calls
        self._pending: Link | None = None  # a process loading (the first load or a restart)
        self._running: dict[object, float] = {}  # each running call -> its start
        self._restarts = 0
        self._failures = 0  # restarts since a call was last answered
        self._last_exit: str | None = None
        self._stop = threading.Event()  # kill or unload: no more restarts
        self._stopped_by = ""  # why (kill's reason, or "unloaded")
        self.unload_error: BaseException | None = None  # why unload did not end cleanly

    @property
    def link(self) -> Link | None:
        return self._link

    @property
    def accepting(self) -> bool:
        link = self._link
        return self.state == WorkerState.READY and link is not None and link.usable

    @property
    def loading(self) -> bool:
        return self.state in (WorkerState.LOADING, WorkerState.RESTARTING)

    def info(self) -> dict[str, Any]:
        with self._cond:
            link = self._link or self._pending
            now = time.monotonic()
            ages = sorted((round(now - t, 3) for t in self._running.values()), reverse=True)
            info: dict[str, Any] = {
                "pid": link.pid if link else None, "state": str(self.state),
                "restarts": self._restarts, "last_exit": self._last_exit,
                "running": len(ages), "running_ages_s": ages}
        info["rss"], info["gpu_bytes"] = memory_of(link.pid) if link else (0, None)
        return info

    # --- calls -------------------------------------------------------------------------------

    def ready_link(self) -> Link:
        """The process to send a call to, waiting for a restart up to 15 s."""
        deadline = time.monotonic() + RESTART_WAIT_S
        with self._cond:
            while True:
                link = self._link
                if self.state == WorkerState.READY and link is not None and link.usable:
                    return link
                # READY with a link that ended: its reader is about to say so (_on_exit) and
                # a restart follows; wait for it as for a restart.
                left = deadline - time.monotonic()
                if self.state in (WorkerState.RESTARTING, WorkerState.READY) and left > 0:
                    self._cond.wait(left)
                elif self.state in (WorkerState.READY, WorkerState.RESTARTING,
                                    WorkerState.FAILED):
                    raise WorkerDied(f"{self._label}: its worker is not back after it ended "
                                     f"({self._last_exit})", details={"state": str(self.state)})
                else:
                    raise Unavailable(f"{self._label} is not loaded ({self.state})",
                                      code=Code.MODEL_NOT_LOADED)

    def started(self, call: object) -> None:
        with self._cond:
            self._running[call] = time.monotonic()

    def ended(self, call: object, answered: bool) -> None:
        with self._cond:
            self._running.pop(call, None)
            if answered:
                self._failures = 0  # the worker answers: a run of failed restarts is over

    # --- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        self._group.add(self)  # first: once it says "loading", kill_loading() must find it
        with self._cond:
            if self.state != WorkerState.NEW:
                raise RuntimeError(f"{self._label}: load() on a worker that is {self.state}")
            self.state = WorkerState.LOADING
        link = None
        try:
            spec = self._spec()  # before a process is taken: settings that do not pickle
            link = self._new_link()
            self._on_message(FACTS, link.load(spec, self._limits.load_s))
        except BaseException:
            with self._cond:
                self._pending = None
                if self.state == WorkerState.LOADING:
                    self.state = WorkerState.FAILED
                    # A load that raised keeps its process, so unload() can release what
                    # load() got (the contract's promise for a failed load).
                    if link is not None and link.usable:
                        self._link = link
            raise
        with self._cond:
            self._pending = None
            if self.state == WorkerState.LOADING:
                self._link, self.state = link, WorkerState.READY
                self._cond.notify_all()
                return
        link.kill(f"{self.state} while loading")  # killed or unloaded meanwhile
        raise link.died()

    def unload(self) -> None:
        with self._cond:
            if self.state in (WorkerState.UNLOADING, WorkerState.UNLOADED):
                return
            self.state = WorkerState.UNLOADING
            self._stopped_by = self._stopped_by or "unloaded"
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
            self.unload_error = link.retire(self._limits.unload_s)
        with self._cond:
            self.state = WorkerState.UNLOADED
            self._cond.notify_all()
        self._group.discard(self)

    def kill(self, reason: str) -> None:
        """End the worker now, for good (no restart): its calls fail with WorkerDied."""
        with self._cond:
            if self.state == WorkerState.UNLOADED:
                return
            self._stopped_by = reason
            self._stop.set()
            links = [link for link in (self._link, self._pending) if link is not None]
            self._link = self._pending = None
            if self.state != WorkerState.UNLOADING:
                self.state = WorkerState.FAILED
            self._last_exit = f"killed: {reason}"
            self._cond.notify_all()
        for link in links:
            link.kill(reason)
        self._group.discard(self)

    # --- processes ---------------------------------------------------------------------------

    def _new_link(self) -> Link:
        """A worker process for this instance, registered as the one loading."""
        link = Link(self._group.new_process(self._preload), self._model, self._label,
                    self._on_message, self._on_exit)
        with self._cond:
            stopped = self._stopped_by if self._stop.is_set() else None
            if stopped is None:
                self._pending = link
        if stopped is not None:  # killed or unloaded while the process was being taken
            link.kill(stopped)
            raise link.died()
        return link

    def _on_exit(self, link: Link, reason: str) -> None:
        """The reader saw ``link``'s process end: restart it if it was serving."""
        with self._cond:
            if link is not self._link and link is not self._pending:
                return  # a process already replaced or retired
            self._last_exit = f"{link.ended_by}: {reason}" if link.ended_by else reason
            if link is self._pending:
                return  # its loader sees DIED and decides
            self._link = None
            restart = (link.ended_by is None or link.restart_after) and (
                self.state == WorkerState.READY) and self._limits.max_restarts > 0
            if restart:
                self.state = WorkerState.RESTARTING
            elif self.state == WorkerState.READY:
                self.state = WorkerState.FAILED
            self._cond.notify_all()
        if link.ended_by is None:
            log.warning("%s: worker pid %d died (%s)%s", self._label, link.pid, reason,
                        "; restarting" if restart else "")
        self._tell("ended", pid=link.pid)
        if restart:
            threading.Thread(target=self._restart, daemon=True,
                             name=f"restart {self._model}").start()

    def _restart(self) -> None:
        while True:
            with self._cond:
                if self.state != WorkerState.RESTARTING:
                    return
                if self._failures >= self._limits.max_restarts:
                    self.state = WorkerState.FAILED
                    self._cond.notify_all()
                    log.error("%s: %d restarts without a call answered: giving up",
                              self._label, self._failures)
                    gave_up = True
                else:
                    gave_up = False
                    delay = min(BACKOFF_CAP_S, BACKOFF_S * 2 ** self._failures)
                    self._failures += 1
                    self._restarts += 1
            if gave_up:
                self._tell("gave_up")
                return
            if self._stop.wait(delay):
                return
            link = None
            try:
                link = self._new_link()
                self._on_message(FACTS, link.load(self._spec(), self._limits.load_s))
                if self._warm is not None:
                    self._warm(link)
            except Exception as exc:  # noqa: BLE001 - logged; the next attempt follows the backoff
                log.warning("%s: restart %d failed: %s", self._label, self._restarts, exc)
                with self._cond:
                    self._pending = None
                if link is not None:
                    link.retire(self._limits.unload_s)
                continue
            with self._cond:
                self._pending = None
                if self.state == WorkerState.RESTARTING:
                    self._link, self.state = link, WorkerState.READY
                    self._cond.notify_all()
                    log.info("%s: worker restarted (pid %d)", self._label, link.pid)
                    restarted = True
                else:
                    restarted = False
            if restarted:
                self._tell("restarted")
            else:
                link.kill(f"{self.state} while restarting")
            return

    def _tell(self, change: str, **extra: Any) -> None:
        """``on_change`` with what status shows now; off the lock (it publishes events)."""
        if self._on_change is None:
            return
        try:
            self._on_change({**self.info(), **extra, "change": change})
        except Exception:  # a listener's bug must not stop a restart
            log.exception("%s: worker change listener failed", self._label)
