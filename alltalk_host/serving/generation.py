"""One load of one model at one commit, and the requests using it.

A *generation* is a model's loaded backend instances at one commit. A request *waits* until an
instance has room, then *starts* (see ``lease.py``). Waiting requests are kept in arrival order
and can be sent back to the registry when a switch gives their model to another generation;
at the drain deadline every request still here ends with a clean 503.

Everything here runs on one event loop; only backend calls go to worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from ..backend import Backend, VoiceSample
from ..config.settings import HostConfig, ModelDef
from ..config.voices import library_for, speaks
from ..errors import Code, HostError, Unavailable
from ..workers import WorkerBackend

T = TypeVar("T")


class GenerationState(StrEnum):
    """Where a generation is in its life. The values are what /control/status, the ``model``
    events and the metrics' ``state`` label say (a StrEnum, so they stay those strings)."""

    LOADING = "loading"  # its instances are loading (said by events; no Generation yet)
    LOAD_FAILED = "load_failed"  # the load failed: the event that ends LOADING
    SERVING = "serving"  # in a snapshot (the serving one or a canary's)
    DRAINING = "draining"  # replaced: finishing its requests until the drain deadline
    UNLOADING = "unloading"
    UNLOADED = "unloaded"


class _Moved:
    """Handed to a waiting request whose model is now served by another generation."""


MOVED = _Moved()


class Started(Protocol):
    """What a generation keeps of a request that started (a ``lease.Lease``): a way to end it
    when the drain deadline passes."""

    def abort(self, error: HostError) -> None: ...


@dataclass(eq=False)
class _Waiter:
    name: str | None  # what the request asked for (None: the default model)
    future: asyncio.Future[int | _Moved | HostError]
    # A started request waiting for its next slot (lease.resume): it stays on this generation.
    pinned: bool = False


class Generation:
    """One model's loaded instances at one commit, and the requests using them."""

    def __init__(self, model: ModelDef, number: int, commit: str,
                 instances: list[Backend]) -> None:
        self.model = model
        self.number = number
        self.commit = commit
        self.instances = instances
        self.state = GenerationState.SERVING  # -> DRAINING -> UNLOADING -> UNLOADED
        self.loaded_at = time.time()
        self.retired_at: float | None = None  # monotonic time it stopped serving
        # Monotonic time a request last started or ended here: what idle unloading reads.
        self.last_used = time.monotonic()
        first = instances[0]
        self.capabilities = first.capabilities
        self.sample_rate = first.sample_rate
        self._per_instance = max(1, first.capabilities.max_concurrency)
        self._free = [self._per_instance] * len(instances)  # room left on each instance
        self._waiters: deque[_Waiter] = deque()
        self._running: set[Started] = set()
        # Slots handed out whose request has not resumed to start yet: still in flight, so a
        # drain must not see this generation idle in between.
        self._starting = 0
        self._expired: HostError | None = None  # set at the drain deadline
        self._threads = 0  # backend calls still running in worker threads
        self._idle = asyncio.Event()  # no request running or waiting
        self._idle.set()
        self._threads_idle = asyncio.Event()
        self._threads_idle.set()

    @property
    def label(self) -> str:
        return f"{self.model.name}; generation={self.number}"

    @property
    def voices(self) -> list[str]:
        """Asked of the backend each time: a voice file added to a folder needs no reload."""
        return _safe(self.instances[0].voices, []) if self.instances else []

    @property
    def capacity(self) -> int:
        return self._per_instance * len(self._free)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def in_use(self) -> bool:
        """A request runs, waits, or is about to start here."""
        return not self._idle.is_set()

    def memory_estimate(self) -> int:
        """What the instances hold: measured for those in worker processes (their RSS, and
        GPU memory where NVML tells), as the backend estimates for inline ones."""
        return sum(_safe(i.memory_estimate, 0) for i in self.instances)

    @property
    def measured(self) -> bool:
        """Whether ``memory_estimate()`` is a measurement (every instance in a worker)."""
        return bool(self.instances) and all(isinstance(i, WorkerBackend)
                                            for i in self.instances)

    def workers(self) -> list[dict[str, Any]]:
        """Each instance's worker (pid, state, restarts, last exit, calls running and their
        ages, memory); empty for a model that runs inline."""
        return [{"instance": n, **_safe(i.worker, {})}
                for n, i in enumerate(list(self.instances), 1) if isinstance(i, WorkerBackend)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "backend": self.model.backend,
            "state": self.state,
            "generation": self.number,
            "commit": self.commit,
            "in_flight": self.running + self.waiting,
            "running": self.running,
            "waiting": self.waiting,
            "instances": len(self.instances),
            "max_concurrency": self.capacity,
            "sample_rate": self.sample_rate,
            "voices": len(self.voices),
            "memory_estimate": self.memory_estimate(),
            "backend_status": _safe(self.instances[0].status, {}) if self.instances else {},
            "loaded_at": self.loaded_at,
            "isolation": self.model.workers.isolation,
            "workers": self.workers(),
        }

    # --- slots ---------------------------------------------------------------------------

    async def _wait_for_slot(self, name: str | None, queue_limit: int,
                             admitted: bool, pinned: bool = False) -> int | _Moved:
        """An instance index with room for one more request, or MOVED (never when ``pinned``).

        ``admitted``: the request already waited in a generation that was replaced (or is a
        started request resuming), so the queue limit, checked when it arrived, is not
        applied a second time.
        """
        if not self._waiters:
            idx = self._take()
            if idx is not None:
                self._starting += 1
                return idx
        if not admitted and len(self._waiters) >= queue_limit:
            raise Unavailable(
                f"model {self.model.name} is busy: {len(self._waiters)} requests already queued",
                code=Code.BUSY,
            )
        waiter = _Waiter(name, asyncio.get_running_loop().create_future(), pinned)
        self._waiters.append(waiter)
        self._update_idle()
        try:
            outcome = await waiter.future
        except asyncio.CancelledError:
            # Handed a slot in the same turn as the cancel: give it to the next in line.
            if waiter.future.done() and not waiter.future.cancelled():
                result = waiter.future.result()
                if isinstance(result, int):
                    self._abandon(result)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            self._update_idle()
        if isinstance(outcome, HostError):
            raise outcome
        return outcome

    def _take(self) -> int | None:
        """The instance with the most room, one whose worker takes calls now first (not one
        restarting after a crash, where a request would wait for the restart)."""
        free = self._free
        idx = max(range(len(free)), key=lambda i: (free[i] > 0, self._accepting(i), free[i]),
                  default=None)
        if idx is None or self._free[idx] == 0:
            return None
        self._free[idx] -= 1
        return idx

    def _accepting(self, idx: int) -> bool:
        instances = self.instances
        instance = instances[idx] if idx < len(instances) else None
        return not isinstance(instance, WorkerBackend) or instance.accepting

    def _release(self, idx: int) -> None:
        self._free[idx] += 1
        self.last_used = time.monotonic()
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.future.done():
                self._waiters.popleft()
                continue
            taken = self._take()
            if taken is None:
                return
            self._waiters.popleft()
            self._starting += 1
            waiter.future.set_result(taken)

    def _start(self, slot: int, request: Started) -> None:
        """A request that was handed ``slot`` has started (unless the deadline passed first)."""
        if self._expired is not None:
            self._abandon(slot)
            raise self._expired
        self._starting -= 1
        self._running.add(request)
        self.last_used = time.monotonic()
        self._update_idle()

    def _abandon(self, idx: int) -> None:
        """A request handed a slot gave it up before it started."""
        self._starting -= 1
        self._release(idx)
        self._update_idle()

    def move_waiters(self, moves: Callable[[str | None], bool]) -> int:
        """Send waiting requests for which ``moves(name)`` holds back to the registry."""
        moved = 0
        for waiter in list(self._waiters):
            if not waiter.future.done() and not waiter.pinned and moves(waiter.name):
                self._waiters.remove(waiter)
                waiter.future.set_result(MOVED)
                moved += 1
        self._update_idle()
        return moved

    def expire(self, commit: str | None, deadline: float) -> int:
        """The drain deadline passed: end every request still on this generation with a 503."""
        ended = 0
        replaced = f" by commit {commit[:10]}" if commit else ""
        self._expired = Unavailable(
            f"model {self.model.name} was unloaded{replaced} before this request could start; "
            "send it again", code=Code.MODEL_UNLOADED)
        for waiter in list(self._waiters):
            if not waiter.future.done():
                waiter.future.set_result(self._expired)
                ended += 1
        self._waiters.clear()
        for request in list(self._running):
            request.abort(Unavailable(
                f"{self.label} was replaced{replaced} and its drain deadline ({deadline:g} s) "
                "passed before this request finished; send it again",
                code=Code.DRAIN_DEADLINE))
            ended += 1
        self._update_idle()
        return ended

    def _update_idle(self) -> None:
        if self._running or self._waiters or self._starting:
            self._idle.clear()
        else:
            self._idle.set()

    def _thread_started(self) -> None:
        self._threads += 1
        self._threads_idle.clear()

    def _thread_ended(self) -> None:
        self._threads -= 1
        if self._threads == 0:
            self._threads_idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request runs or waits here; False if ``timeout`` passed first."""
        return await _wait_event(self._idle, timeout)

    async def wait_threads(self, timeout: float) -> bool:
        return await _wait_event(self._threads_idle, timeout)


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


def _safe(fn: Callable[[], T], default: T) -> T:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - status reporting must not fail a request
        return default


@dataclass(frozen=True)
class Serving:
    """An immutable snapshot: the applied config and the generation serving each loaded model."""

    config: HostConfig
    generations: Mapping[str, Generation]

    @property
    def commit(self) -> str:
        return self.config.commit

    @property
    def default(self) -> Generation | None:
        """The generation of the default model, if that model is loaded."""
        return self.generations.get(self.config.default_model)

    def voices_of(self, name: str) -> list[str]:
        """What a request to loaded model ``name`` may name as its voice: the backend's own
        voices, then the library's (voices.toml) if its backend clones. Empty for a model not
        loaded, as for a single-voice one."""
        gen = self.generations.get(name)
        return self.offered(gen, gen.voices) if gen is not None else []

    def offered(self, gen: Generation, own: list[str]) -> list[str]:
        """``own`` (the backend's voices, already asked of it), then the library's voices
        ``gen``'s model speaks: ``voices_of`` without asking the backend again."""
        library = library_for(self.config.voices, gen.model.name,
                              gen.capabilities.voice_cloning)
        return own + [v for v in library if v not in own] if library else own

    def sample_for(self, gen: Generation, voice: str | None) -> VoiceSample | None:
        """The library sample ``voice`` names for ``gen``'s model, if it is one it speaks."""
        sample = self.config.voices.get(voice) if voice else None
        clones = gen.capabilities.voice_cloning
        return sample if sample is not None and speaks(sample, gen.model.name, clones) else None
