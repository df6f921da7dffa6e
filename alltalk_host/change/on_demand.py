"""Models loaded because a request named them, and unloaded when they sit unused.

The commit says which models exist and how they are set; which of them are loaded beyond the
default and the ``keep_loaded`` ones is the host's choice at run time, not a commit. A request
for a configured model that is not loaded (``ModelRegistry.lease``) awaits ``ensure(name)``:

- one load per model at a time, whatever the number of requests waiting for it, through the
  apply's own load, warm-up and output check (``ApplyTransaction.load_generation``), beside
  what serves, after memory admission;
- when it is loaded it joins the snapshot serving *then* (an apply may have switched meanwhile:
  it joins only if that config still defines the model the same way, else it is unloaded and
  the requests try again under the new definition);
- a failed load answers every waiting request with its reason, and requests for that model
  get the same answer, without a new load, for ``[on_demand] retry_after_s``.

A sweeper unloads such a model after ``idle_unload_s`` with no request running or waiting; the
control routes load and unload one by hand. An apply keeps a model loaded on demand while the
new config still lets it load on demand (``plan.make_plan``), so residency survives applies.

Everything here runs on the event loop; loads run on the registry's loading threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..config.settings import HostConfig
from ..errors import Code, Conflict, HostError, NotFound, Unavailable
from ..serving.generation import Generation, GenerationState, Serving
from ..serving.registry import ModelRegistry
from .apply import ApplyTransaction
from .plan import Plan

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 5.0  # how often idle models are looked for (an idle timer is this coarse)
ON_DEMAND = "on_demand"
# Why a loaded model cannot make room, as a refusal says it: one loaded on demand is in use
# (an idle one would have been unloaded first).
_HELD_BY = {"default": "the default", "keep_loaded": "keep_loaded", ON_DEMAND: "in use"}


class OnDemand:
    """``busy()`` says whether a change (an apply, a canary) is in progress: its prepared
    snapshot may keep a model loaded on demand, so nothing is unloaded meanwhile."""

    def __init__(self, registry: ModelRegistry, transaction: ApplyTransaction,
                 busy: Callable[[], bool] = lambda: False) -> None:
        self.registry = registry
        self.transaction = transaction
        self._busy = busy
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, tuple[float, HostError]] = {}  # name -> (monotonic, why)
        self._sweeper: asyncio.Task[None] | None = None
        self.loads = 0  # on-demand loads that served (for metrics and status)
        self.failures = 0  # on-demand loads that failed
        self.unloads: dict[str, int] = {"idle": 0, "explicit": 0, "budget": 0}
        # Told each time a caller waited for a load (the model, seconds): the metrics.
        self.on_wait: Callable[[str, float], None] | None = None

    # --- loading -----------------------------------------------------------------------------

    async def ensure(self, name: str, reason: str = "request") -> None:
        """Return once ``name`` is in the serving snapshot (or was, and an apply replaced it
        meanwhile); raise why it cannot load. Concurrent callers share one load, and a caller
        that goes away does not cancel it. ``reason`` ("request", "explicit") goes into the
        load's events and log; how long each caller waited goes to ``on_wait``."""
        started = time.monotonic()
        try:
            await self._ensure(name, reason)
        finally:
            if self.on_wait is not None:
                self.on_wait(name, time.monotonic() - started)

    async def _ensure(self, name: str, reason: str) -> None:
        task = self._loads.get(name)
        if task is None:
            self._refuse_recent_failure(name)
            task = asyncio.get_running_loop().create_task(self._load(name, reason))
            self._loads[name] = task
            task.add_done_callback(lambda _, name=name: self._loads.pop(name, None))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                # The load was stopped (the host is shutting down), not this request.
                raise Unavailable(f"the host is shutting down: model {name!r} was not loaded",
                                  code=Code.SHUTTING_DOWN) from None
            raise

    def loading(self) -> list[str]:
        return sorted(self._loads)

    def _refuse_recent_failure(self, name: str) -> None:
        failed = self._failed.get(name)
        if failed is None:
            return
        when, error = failed
        serving = self.registry.serving
        wait = serving.config.on_demand.retry_after_s if serving else 0.0
        left = wait - (time.monotonic() - when)
        if left <= 0:
            del self._failed[name]
            return
        raise Unavailable(f"{error.message} (that was {wait - left:.0f} s ago; the next "
                          f"request tries again in {left:.0f} s)", code=error.code,
                          details={**error.details, "retry_after_s": round(left, 1)})

    async def _load(self, name: str, reason: str) -> None:
        config = self.registry.require_serving().config
        # No room is no failed load: it is not remembered, the next request looks again.
        await self._make_room(name, config)
        try:
            gen = await self.transaction.load_generation(config.models[name], config,
                                                         on_demand=reason)
        except HostError as exc:
            # The server could not serve it, whatever the caller sent: 503, the load's code.
            failure = Unavailable(f"model {name!r} could not be loaded on demand: {exc.message}",
                                  code=exc.code, details=exc.with_details(model=name).details)
            self._failed[name] = (time.monotonic(), failure)
            self.failures += 1
            log.warning("model %s: on-demand load for a %s failed: %s", name, reason,
                        exc.message)
            raise failure from exc
        self._failed.pop(name, None)
        now = self.registry.serving
        if now is None or name in now.generations or not now.config.keeps_on_demand(gen.model):
            # An apply switched while it loaded, and serves it already or defines it
            # otherwise: this copy is not wanted (the request tries again under ``now``).
            log.info("model %s: loaded on demand for commit %s, but %s serves now; unloading "
                     "this copy", name, config.commit[:10], now.commit[:10] if now else "none")
            await self.registry.unload(gen)
            return
        self.loads += 1
        self.registry.switch(Serving(now.config, {**now.generations, name: gen}))
        log.info("model %s loaded on demand (%s)", gen.label, reason)

    async def _make_room(self, name: str, config: HostConfig) -> None:
        """Room for ``name`` beside what serves: within ``max_resident_models`` and memory
        admission (as for an apply that loads it beside). Short of it, the least recently used
        model loaded on demand with no request running or waiting is unloaded first (never
        the default or a keep_loaded one), then the next, until it fits; if nothing more can
        go, 503 ``insufficient_memory`` naming what holds the room (the server's lack, not
        the caller's mistake)."""
        limit = config.on_demand.max_resident_models
        while True:
            serving = self.registry.require_serving()
            plan = Plan(commit=config.commit, from_commit=config.commit, changes=[],
                        load=[name], reload=[], unload=[], keep=sorted(serving.generations),
                        runtime_changes=[], availability={})
            refused = [d for d in self.transaction.memory.check(config, plan, serving)
                       if not d.fits]
            full = limit > 0 and len(serving.generations) >= limit
            if not refused and not full:
                return
            victim = self._least_recently_used(serving)
            if victim is None:
                held = ", ".join(f"{n} ({_HELD_BY[resident(serving.config, n)]})"
                                 for n in sorted(serving.generations))
                why = (f"max_resident_models = {limit} are loaded" if full
                       else refused[0].reason)
                raise Unavailable(
                    f"model {name!r} cannot be loaded on demand now: {why}, and none can be "
                    f"unloaded to make room (loaded: {held}); try again when one is idle",
                    code=Code.INSUFFICIENT_MEMORY,
                    details={"model": name, "loaded": sorted(serving.generations),
                             "memory": [d.to_dict() for d in refused]})
            gen = serving.generations[victim]
            self._evict(serving, victim, "budget")
            await self._gone(gen, config)

    def _least_recently_used(self, serving: Serving) -> str | None:
        if self._busy():
            return None  # a change's prepared snapshot may keep them
        idle = [(gen.last_used, n) for n, gen in serving.generations.items()
                if n not in serving.config.loaded_models and not gen.in_use]
        return min(idle)[1] if idle else None

    async def _gone(self, gen: Generation, config: HostConfig) -> None:
        """Until ``gen`` has unloaded (it was idle: its drain ends at once), so the memory
        check sees its memory free; bounded by the drain deadline and the unload's."""
        deadline = time.monotonic() + config.drain_deadline_s + 60
        while gen.state != GenerationState.UNLOADED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # --- by hand -----------------------------------------------------------------------------

    async def load(self, name: str) -> dict[str, Any]:
        """``POST /control/models/{name}/load``: load a configured model now (before traffic
        needs it); already loaded is no error."""
        serving = self.registry.require_serving()
        if name not in serving.config.models:
            raise NotFound(f"unknown model {name!r}", code=Code.UNKNOWN_MODEL,
                           details={"models": sorted(serving.config.models)})
        if name not in serving.generations:
            self._failed.pop(name, None)  # asked for by hand: try now
            if not serving.config.loads_on_demand(name):
                self.registry.resolve(name)  # raises why it cannot load
            await self.ensure(name, "explicit")
        return self._answer(name, "loaded")

    async def unload(self, name: str) -> dict[str, Any]:
        """``POST /control/models/{name}/unload``: unload a model loaded on demand; its
        requests finish first (the drain deadline applies). The default and ``keep_loaded``
        models belong to the commit: refused, saying how to change that."""
        serving = self.registry.require_serving()
        if name not in serving.config.models:
            raise NotFound(f"unknown model {name!r}", code=Code.UNKNOWN_MODEL,
                           details={"models": sorted(serving.config.models)})
        if name in serving.config.loaded_models:
            why = ("the default model" if name == serving.config.default_model
                   else "kept loaded (keep_loaded = true)")
            raise Conflict(f"model {name!r} is {why} by commit {serving.commit[:10]}; change "
                           "the config to unload it", code=Code.MODEL_PINNED)
        if name in serving.generations:
            if self._busy():
                raise Conflict(f"a change is in progress; unload model {name!r} after it",
                               code=Code.APPLY_IN_PROGRESS)
            self._evict(serving, name, "explicit")
        return self._answer(name, "unloaded")

    def _answer(self, name: str, result: str) -> dict[str, Any]:
        serving = self.registry.require_serving()
        gen = serving.generations.get(name)
        return {"model": name, "result": result, "commit": serving.commit,
                "generation": gen.number if gen else None}

    # --- idle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def stop(self) -> None:
        """No more sweeps; loads in progress are cancelled (their requests get the host's
        shutdown answer)."""
        for task in [self._sweeper, *self._loads.values()]:
            if task is not None:
                task.cancel()
        self._sweeper = None

    async def _sweep(self) -> None:
        while True:
            # A short idle time is looked at often enough to be kept to within a quarter.
            serving = self.registry.serving
            limits = [serving.config.idle_unload_s(n) for n in serving.config.models
                      ] if serving else []
            shortest = min((x for x in limits if x > 0), default=SWEEP_EVERY_S)
            await asyncio.sleep(max(0.1, min(SWEEP_EVERY_S, shortest / 4)))
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive a bug in one round
                log.exception("idle sweep failed")

    def sweep(self) -> None:
        """Unload each model loaded on demand that has been unused past its idle time."""
        serving = self.registry.serving
        if serving is None or self._busy():
            return  # the change's snapshot may keep them: after it
        now = time.monotonic()
        idle = []
        for name, gen in serving.generations.items():
            if name in serving.config.loaded_models or gen.in_use:
                continue
            limit = serving.config.idle_unload_s(name) if name in serving.config.models else 0
            if limit > 0 and now - gen.last_used >= limit:
                idle.append(name)
        for name in idle:
            self._evict(self.registry.require_serving(), name, "idle")

    def _evict(self, serving: Serving, name: str, reason: str) -> None:
        gen = serving.generations[name]
        log.info("%s: unloading a model loaded on demand (%s)", gen.label, reason)
        self.unloads[reason] = self.unloads.get(reason, 0) + 1
        rest = {n: g for n, g in serving.generations.items() if n != name}
        self.registry.switch(replace(serving, generations=rest), why=reason)

    def describe(self, gen: Generation, config: HostConfig) -> dict[str, Any]:
        """For status: why a generation is loaded, and for one loaded on demand, how long it
        has been unused and when it unloads."""
        name = gen.model.name
        why = resident(config, name)
        if why != ON_DEMAND:
            return {"resident": why}
        idle_s = max(0.0, time.monotonic() - gen.last_used)
        limit = config.idle_unload_s(name) if name in config.models else 0.0
        return {"resident": ON_DEMAND, "idle_s": round(idle_s, 1),
                "unloads_in_s": (None if limit <= 0 or gen.in_use
                                 else round(max(0.0, limit - idle_s), 1))}


def resident(config: HostConfig, name: str) -> str:
    """Why loaded model ``name`` is loaded: "default", "keep_loaded" or "on_demand"."""
    if name == config.default_model:
        return "default"
    return "keep_loaded" if name in config.loaded_models else ON_DEMAND


