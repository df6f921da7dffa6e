"""What is serving right now: generations of loaded models, and the requests using them.

A *generation* is one load of one model at one commit (its backend instances). The *serving
snapshot* maps model names to generations together with the config they belong to; switching
config means replacing that one reference, so every request sees either the old snapshot or the
new one, never a mixture.

A request *waits* until an instance has room, then *starts*. Only a started request is bound to
its generation: one still waiting when a switch happens moves to whatever now serves its model
(or the new default model, if it named none), so it never runs on a copy that is on its way out.
A replaced generation is unloaded after its last request, or at its drain deadline, when the
requests still on it end with a clean 503 (``Unavailable``) instead of a crash or a hang.

While a canary runs (``change/canary.py``, ``serving/arms.py``) a second snapshot serves
beside the stable one: a request leases on the arm it was sent to. The canary's snapshot shares
the generations its commit does not change; when it ends it becomes the serving one (promoted),
or its own generations retire (aborted), and requests waiting on them move as on any switch.

Everything here runs on one event loop; backend calls go to worker threads. The host's worker
processes (``workers``: each instance in a process of its own, unless its model runs inline)
belong to the registry: it ends them all when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..backend import Backend
from ..config.canary import CANARY, STABLE
from ..errors import Code, Conflict, NotFound, Unavailable
from ..events import MODEL, EventBus
from ..workers import WorkerBackend, WorkerGroup
from .generation import Generation, GenerationState, Serving
from .lease import Lease

log = logging.getLogger(__name__)
P = TypeVar("P")

# After the drain deadline, requests are told to stop; a backend call that does not notice
# within this many seconds has its worker process killed (an inline one is left to finish on
# its own while its model is unloaded anyway).
THREAD_GRACE_S = 5.0
# How many times one request may have its model loaded on demand: more means applies keep
# replacing what it loaded, and it ends with the error of a model that is not loaded.
ON_DEMAND_TRIES = 3
# At close: how long the models get to unload before their workers are killed.
CLOSE_UNLOAD_S = 10.0
# Unloaded, or on its way: nothing more to retire or unload.
_GONE = (GenerationState.UNLOADING, GenerationState.UNLOADED)


@dataclass
class ModelRegistry:
    inference: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(32, thread_name_prefix="alltalk-infer"))
    loading: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="alltalk-load"))
    serving: Serving | None = None
    # A canary's snapshot, served beside ``serving`` to the requests sent to the canary arm.
    canary: Serving | None = None
    draining: list[Generation] = field(default_factory=list)
    _counters: dict[str, int] = field(default_factory=dict)
    # Where model state changes are told (live events), if anywhere.
    events: EventBus | None = None
    # Models being replaced unload-first: their requests wait on the event instead of failing.
    _held: dict[str, asyncio.Event] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # The host's worker processes: where every instance of a model in process isolation runs.
    workers: WorkerGroup = field(default_factory=WorkerGroup)
    # ``await on_demand(name)`` loads configured model ``name`` into the serving snapshot, or
    # raises why it cannot (change/on_demand.py); None: requests never load a model.
    on_demand: Callable[[str], Awaitable[None]] | None = None

    def next_number(self, name: str) -> int:
        self._counters[name] = self._counters.get(name, 0) + 1
        return self._counters[name]

    @asynccontextmanager
    async def lease(self, name: str | None, prepare: Callable[[Serving, Generation], P],
                    arm: str = STABLE) -> AsyncIterator[Lease[P]]:
        """Wait for room on the generation serving ``name`` (the default model if None) in
        the snapshot of ``arm`` (the stable one when no canary runs).

        ``prepare(serving, gen)`` checks the request against that snapshot and model before
        it queues (so a bad request fails at once), and again if a switch moves it elsewhere.
        """
        admitted = False
        loads = 0
        while True:
            serving = self._current(arm) or self.require_serving()
            model = name or serving.config.default_model
            held = self._held.get(model)
            if held is not None:
                await held.wait()
                continue
            if (model not in serving.generations and self.on_demand is not None
                    and serving is self.serving and loads < ON_DEMAND_TRIES
                    and serving.config.loads_on_demand(model)):
                loads += 1  # loaded, then replaced by an apply before this request got it
                await self.on_demand(model)
                continue
            gen = _generation(serving, model)
            value = prepare(serving, gen)
            slot = await gen._wait_for_slot(name, serving.config.queue_limit, admitted)
            if isinstance(slot, int):
                current = self._current(arm)
                if (current is not None and current is not serving and
                        current.generations.get(name or current.config.default_model) is gen):
                    # A runtime-only change applied while it waited: the same generation
                    # serves on under the newer config, so the request starts under that one.
                    try:
                        value = prepare(current, gen)
                    except BaseException:
                        gen._abandon(slot)
                        raise
                    serving = current
                break
            admitted = True  # moved: it waited its turn once already
        lease = Lease(serving, gen, slot, value,
                      CANARY if serving is self.canary else STABLE)
        gen._start(slot, lease)
        try:
            yield lease
        finally:
            lease._close()

    def resolve(self, name: str | None) -> tuple[Serving, Generation]:
        """The snapshot and the generation serving ``name`` now, without queueing (for
        answers that need no backend)."""
        serving = self.require_serving()
        return serving, _generation(serving, name or serving.config.default_model)

    def _current(self, arm: str) -> Serving | None:
        """The snapshot ``arm`` serves from now: a canary's while one runs, else the stable."""
        if arm == CANARY and self.canary is not None:
            return self.canary
        return self.serving

    def canary_only(self) -> list[Generation]:
        """The generations a running canary loaded for itself (not shared with stable)."""
        if self.canary is None:
            return []
        shared = {id(g) for g in self.serving.generations.values()} if self.serving else set()
        return [g for g in self.canary.generations.values() if id(g) not in shared]

    def require_serving(self) -> Serving:
        """The snapshot that serves now, or 503 not ready before the first apply."""
        if self.serving is None:
            raise Unavailable("no model is loaded yet", code=Code.NOT_READY)
        return self.serving

    # --- swapping --------------------------------------------------------------------------

    def hold(self, name: str) -> None:
        """Make new requests for ``name`` wait (an unload-first swap is about to replace it);
        those already waiting for it join them, so none is left on the copy being unloaded."""
        self._held.setdefault(name, asyncio.Event())
        if self.serving is not None:
            default = self.serving.config.default_model
            for gen in self.serving.generations.values():
                gen.move_waiters(lambda wanted: (wanted or default) == name)

    def release_holds(self) -> None:
        for event in self._held.values():
            event.set()
        self._held.clear()

    def model_event(self, state: GenerationState, name: str, **data: Any) -> None:
        if self.events is not None:
            self.events.publish(MODEL, name=name, state=state, **data)

    def _generation_event(self, gen: Generation, **data: Any) -> None:
        self.model_event(gen.state, gen.model.name, generation=gen.number, commit=gen.commit,
                         running=gen.running, waiting=gen.waiting,
                         memory_estimate=gen.memory_estimate(), **data)

    def switch(self, new: Serving, why: str | None = None) -> None:
        """Make ``new`` the serving snapshot; retire generations it no longer uses (``why``,
        when given, is in their events: "idle", "explicit"; such a switch unloads a model
        loaded on demand on purpose).

        Requests still waiting follow their model into the new snapshot; those whose model it
        no longer loads stay, to be served by the old generation if they start in time.
        A model loaded on demand while ``new`` was being prepared joins it, if ``new``'s
        config defines it the same way and still loads it on demand.
        """
        old = self.serving
        if old is not None and why is None:
            new = _with_on_demand(old, new)
        self.serving = new
        before = {id(g) for g in old.generations.values()} if old else set()
        for gen in new.generations.values():
            if id(gen) not in before:
                self._generation_event(gen)
        if old is not None:
            self._retire_unused(old, new, why)

    def start_canary(self, canary: Serving) -> None:
        """Serve ``canary`` beside the stable snapshot, to the requests sent to its arm."""
        self.canary = canary
        for gen in self.canary_only():
            self._generation_event(gen, arm=CANARY)

    def end_canary(self, promote: bool) -> None:
        """Promoted: the canary's snapshot serves everyone (a switch). Aborted: the stable one
        serves on, and the canary's own generations drain and unload; requests waiting on
        them move to the stable snapshot."""
        canary, self.canary = self.canary, None
        if canary is None:
            return
        if promote:
            self.switch(canary)
        else:
            self._retire_unused(canary, self.require_serving())

    def _retire_unused(self, old: Serving, new: Serving, why: str | None = None) -> None:
        """Move ``old``'s waiting requests whose model ``new`` serves elsewhere, and retire the
        generations of ``old`` that neither ``new`` nor a running canary uses."""
        default = new.config.default_model
        for gen in old.generations.values():
            gen.move_waiters(
                lambda wanted, gen=gen: new.generations.get(wanted or default) not in (None, gen))
        keep = {id(g) for g in new.generations.values()}
        if self.canary is not None:
            keep |= {id(g) for g in self.canary.generations.values()}
        for gen in old.generations.values():
            if id(gen) not in keep:
                self.retire(gen, new.config.drain_deadline_s, new.commit, why)

    def retire(self, gen: Generation, deadline: float, commit: str | None = None,
               why: str | None = None) -> None:
        if gen.state in _GONE:  # replaced unload-first: already gone
            return
        gen.state = GenerationState.DRAINING
        gen.retired_at = time.monotonic()
        self.draining.append(gen)
        self._generation_event(gen, deadline_s=deadline, **({"evicted": why} if why else {}))
        task = asyncio.get_running_loop().create_task(self.drain(gen, deadline, commit))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, gen: Generation, deadline: float, commit: str | None = None) -> None:
        """Let ``gen`` finish its requests, end those left at ``deadline``, then unload it."""
        if not await gen.wait_idle(deadline):
            ended = gen.expire(commit, deadline)
            log.warning("%s: drain deadline (%g s) passed; %d requests still on it were ended "
                        "with a 503", gen.label, deadline, ended)
            if not await gen.wait_threads(THREAD_GRACE_S):
                killed = await asyncio.get_running_loop().run_in_executor(
                    None, kill_busy_workers, gen.instances,
                    f"its calls ran on {THREAD_GRACE_S:g} s past the drain deadline")
                log.warning("%s: backend calls still running %g s after they were cancelled; "
                            "%s", gen.label, THREAD_GRACE_S,
                            f"{killed} worker(s) killed" if killed else "unloading anyway")
                if killed:  # the calls end with their workers: their slots come back
                    await gen.wait_threads(THREAD_GRACE_S)
        await self.unload(gen)

    async def unload(self, gen: Generation, threaded: bool = False) -> None:
        """``threaded``: on a thread of its own rather than a loading thread (at close)."""
        if gen.state in _GONE:
            return
        gen.state = GenerationState.UNLOADING
        await asyncio.get_running_loop().run_in_executor(
            None if threaded else self.loading, unload_instances, gen.instances)
        gen.state = GenerationState.UNLOADED
        if gen in self.draining:
            self.draining.remove(gen)
        drained = (time.monotonic() - gen.retired_at) if gen.retired_at is not None else None
        self._generation_event(gen, drained_s=None if drained is None else round(drained, 3))
        log.info("%s unloaded", gen.label)

    async def close(self) -> None:
        """End every request, unload every model (all at once, for at most
        ``CLOSE_UNLOAD_S``), then end every worker process, whatever it was doing."""
        for task in list(self._tasks):
            task.cancel()
        gens = list(self.serving.generations.values()) if self.serving else []
        gens = list({id(g): g for g in [*gens, *self.canary_only(), *self.draining]}.values())
        for gen in gens:
            gen.expire(None, 0)
        loop = asyncio.get_running_loop()
        # A thread each, not the two loading threads: one slow unload must not hold the
        # others past the bound.
        unloads = [loop.create_task(self.unload(gen, threaded=True)) for gen in gens]
        if unloads:
            _, late = await asyncio.wait(unloads, timeout=CLOSE_UNLOAD_S)
            if late:
                log.warning("%d model(s) still unloading after %g s: their workers are "
                            "killed", len(late), CLOSE_UNLOAD_S)
        # Also a load still running (a hung one) and the spare: the host exits without them.
        await loop.run_in_executor(None, self.workers.kill_all)
        if unloads:
            await asyncio.wait(unloads, timeout=CLOSE_UNLOAD_S)
        self.serving = self.canary = None
        self.inference.shutdown(wait=False, cancel_futures=True)
        self.loading.shutdown(wait=True)


def _with_on_demand(old: Serving, new: Serving) -> Serving:
    """``new`` with each generation of ``old`` loaded on demand that ``new`` lacks but whose
    model ``new`` still loads on demand, defined the same way."""
    carried = {
        name: gen for name, gen in old.generations.items()
        if name not in new.generations and name not in old.config.loaded_models
        and new.config.keeps_on_demand(gen.model)}
    return replace(new, generations={**new.generations, **carried}) if carried else new


def _generation(serving: Serving, model: str) -> Generation:
    gen = serving.generations.get(model)
    if gen is not None:
        return gen
    if model in serving.config.loaded_models:
        # Meant to serve but missing: an unload-first swap failed and so did bringing the old
        # copy back. A server-side outage (503, like /health/ready), not the caller's doing.
        raise Unavailable(
            f"model {model!r} is not loaded: its last swap failed and the old copy could not "
            "be restored; the next apply loads it",
            code=Code.NOT_READY if model == serving.config.default_model
            else Code.MODEL_NOT_LOADED,
        )
    definition = serving.config.models.get(model)
    if definition is not None:
        why = ("on-demand loading is off ([on_demand] enabled = false)"
               if not serving.config.on_demand.enabled else
               "it is not loaded on demand (on_demand = false in its definition)"
               if not definition.on_demand else
               f"it cannot load here: {definition.unavailable}" if definition.unavailable
               else "it is not loaded")
        raise Conflict(
            f"model {model!r} is configured but not loaded: {why}; switch to it or set "
            "keep_loaded = true in its definition",
            code=Code.MODEL_NOT_LOADED,
        )
    raise NotFound(f"unknown model {model!r}", code=Code.UNKNOWN_MODEL,
                   details={"models": sorted(serving.config.models)})


def kill_busy_workers(instances: list[Backend], reason: str) -> int:
    """Kill the worker of each instance a call still runs on (it frees its memory at once);
    how many. Inline instances cannot be stopped: they are left alone."""
    busy = [i for i in instances if isinstance(i, WorkerBackend) and i.worker()["running"]]
    for instance in busy:
        instance.kill(reason)
    return len(busy)


def unload_instances(instances: list[Backend]) -> None:
    for instance in instances:
        try:
            instance.unload()
        except Exception:
            log.exception("unload of %s failed", type(instance).__name__)
    instances.clear()
    release_memory()


def release_memory() -> None:
    """Drop cycles and hand freed heap pages back to the OS, so a swap does not ratchet RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
