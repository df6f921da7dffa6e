"""One apply: from a validated config to the serving snapshot that replaces the current one.

``ApplyTransaction.prepare`` checks that the models the config must serve are available, loads
what changes beside what serves (or, with ``low_memory_swap``, drains and unloads the old copy
first), warms each new model up and checks its output, and checks the runtime defaults (voice,
language) against the models they name. ``Prepared.commit`` then switches everything in one
assignment; ``Prepared.abort`` undoes it.

Invariant: any failure unloads what this transaction loaded and leaves the old snapshot serving
(bringing back a model it unloaded first, if it can). Nothing here touches git or the state
file: the controller orders those around ``commit``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..backend import Backend
from ..blends import voice_problem
from ..config.settings import HostConfig, ModelDef
from ..errors import ApplyFailed, Code, Conflict, HostError
from ..events import MODEL, WORKER, Operation
from ..plugins import BackendCatalog
from ..serving.generation import GenerationState
from ..serving.registry import Generation, ModelRegistry, Serving
from .loading import load_model
from .memory import MemoryAdmission, refuse
from .plan import Plan

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.25  # a backend's load progress, shown at most this often


@dataclass
class Prepared:
    """A loaded, checked snapshot that is not serving yet."""

    serving: Serving
    fresh: dict[str, Generation]
    load_seconds: dict[str, float]
    _tx: ApplyTransaction
    _unloaded_first: dict[str, Generation] = field(default_factory=dict)
    _current: Serving | None = None

    def commit(self) -> None:
        """Serve it. Synchronous on purpose: nothing can interleave with the switch."""
        self._tx.registry.switch(self.serving)
        self._tx.registry.release_holds()

    async def abort(self) -> None:
        await self._tx.undo(self.fresh, self._current, self._unloaded_first)


class ApplyTransaction:
    def __init__(self, registry: ModelRegistry, catalog: BackendCatalog,
                 cache_dir: Path) -> None:
        self.registry = registry
        self.catalog = catalog
        self.cache_dir = cache_dir
        self.loading: dict[str, dict[str, Any]] = {}  # models being loaded now, for status
        # How long each model's last load + warm-up took: what the next one is expected to.
        self.last_load_s: dict[str, float] = {}
        self.memory = MemoryAdmission(catalog, cache_dir)

    async def prepare(self, config: HostConfig, plan: Plan, op: Operation | None = None,
                      beside_only: bool = False) -> Prepared:
        """``beside_only``: every changed model must load beside its serving copy (a canary
        serves both), so one that would be replaced in place refuses the change."""
        op = op or Operation(None, "apply", config.commit, "")
        check_available(config, plan)
        if any(config.models[n].workers.in_process for n in config.loaded_models):
            # A spare worker process, started now, so the loads after this one skip the
            # interpreter's start (a host whose models all run inline never starts one).
            self.registry.workers.prestart()
        current = self.registry.serving
        admissions = self.memory.check(config, plan, current)
        refuse(admissions)  # before anything is loaded or unloaded
        in_place = {a.model for a in admissions if a.how == "in place"}
        if beside_only and current is not None:
            first = [n for n in plan.reload if config.models[n].low_memory_swap or n in in_place]
            if first:
                raise Conflict(
                    f"model {first[0]} would be replaced in place (low_memory_swap, or it does "
                    "not fit beside its serving copy), but a canary serves both copies at "
                    "once; apply it without a canary, or make room",
                    code=Code.CANARY_NOT_POSSIBLE, details={"models": first})
        for a in admissions:
            if a.how == "in place":
                log.warning("model %s does not fit beside its serving copy (%s): replacing it "
                            "in place; its requests wait while it loads", a.model, a.reason)
        fresh: dict[str, Generation] = {}
        seconds: dict[str, float] = {}
        unloaded_first: dict[str, Generation] = {}
        try:
            for name in plan.reload:
                unload_first = config.models[name].low_memory_swap or name in in_place
                if unload_first and current is not None:
                    # Not enough memory for two copies: its requests wait while it is replaced.
                    old = current.generations[name]
                    self.registry.hold(name)
                    op.phase("unloading first", model=name, generation=old.number)
                    await self.registry.drain(old, config.drain_deadline_s, config.commit)
                    unloaded_first[name] = old
            for name in [*plan.load, *plan.reload]:
                started = time.monotonic()
                fresh[name] = await self._load(config.models[name], config, op)
                seconds[name] = round(time.monotonic() - started, 3)
                self.last_load_s[name] = seconds[name]
            keep = {n: current.generations[n] for n in plan.keep} if current else {}
            serving = Serving(config, {**keep, **fresh})
            op.phase("checking")
            check_runtime_defaults(serving)
        except BaseException:
            await self.undo(fresh, current, unloaded_first)
            raise
        return Prepared(serving, fresh, seconds, self, unloaded_first, current)

    async def undo(self, fresh: dict[str, Generation], current: Serving | None,
                   unloaded_first: dict[str, Generation]) -> None:
        for gen in fresh.values():
            await self.registry.unload(gen)
        if unloaded_first and current is not None:
            await self._restore(current, unloaded_first)
        self.registry.release_holds()

    async def load_generation(self, model: ModelDef, config: HostConfig,
                              on_demand: str) -> Generation:
        """``model`` loaded, warmed up and checked as an apply loads it, not serving yet:
        for a load on demand (``on_demand`` says why, in its events and status)."""
        started = time.monotonic()
        gen = await self._load(model, config, Operation(None, "on-demand", config.commit, ""),
                               on_demand=on_demand)
        self.last_load_s[model.name] = round(time.monotonic() - started, 3)
        return gen

    async def _load(self, model: ModelDef, config: HostConfig,
                    op: Operation | None = None, **tag: Any) -> Generation:
        """``tag``: added to the model's events and its entry in ``loading``."""
        op = op or Operation(None, "restore", config.commit, "")
        expected = self.last_load_s.get(model.name)
        self.loading[model.name] = {"backend": model.backend, "commit": config.commit,
                                    "since": time.time(), "expected_s": expected, **tag}

        self.registry.model_event(GenerationState.LOADING, model.name, commit=config.commit,
                                  backend=model.backend, expected_s=expected, **tag)

        def step(phase: str, number: int) -> None:  # on the loading thread
            op.phase_threadsafe(phase, model=model.name, instance=number,
                                instances=model.instances, expected_s=expected)

        shown = [0.0]

        def progress(number: int, message: str, fraction: float | None) -> None:
            # What the backend says of its own load, on the loading thread: shown in the
            # status and as model events, at most a few times a second (a backend may report
            # every tensor it reads).
            now = time.monotonic()
            done = fraction is not None and fraction >= 1
            if now - shown[0] < PROGRESS_EVERY_S and not done:
                return
            shown[0] = now
            told = {"instance": number, "detail": str(message)[:200],
                    "fraction": None if fraction is None else round(float(fraction), 3)}
            self.loading.get(model.name, {}).update(progress=told)
            events = self.registry.events
            if events is not None:
                events.publish_threadsafe(MODEL, name=model.name, state=GenerationState.LOADING,
                                          commit=config.commit, backend=model.backend, **told)

        def worker(number: int, info: dict[str, Any]) -> None:  # on a worker's own thread
            events = self.registry.events
            if events is not None:
                events.publish_threadsafe(WORKER, name=model.name, instance=number,
                                          commit=config.commit, backend=model.backend, **info)

        def load_measured() -> list[Backend]:
            # RAM taken by the load, remembered for the next admission of these settings.
            # The process's growth undercounts when the allocator reuses memory freed
            # earlier (an unloaded model's), so what the instances say they hold is a floor.
            before = psutil.Process().memory_info().rss
            loaded = load_model(model, config, self.catalog, self.cache_dir, step, progress,
                                self.registry.workers, worker)
            grown = psutil.Process().memory_info().rss - before
            self.memory.remember(model, max(grown, sum(b.memory_estimate() for b in loaded)))
            return loaded

        try:
            instances = await asyncio.get_running_loop().run_in_executor(
                self.registry.loading, load_measured)
        except BaseException as exc:
            self.registry.model_event(GenerationState.LOAD_FAILED, model.name, commit=config.commit,
                                      reason=getattr(exc, "message", str(exc)), **tag)
            raise
        finally:
            self.loading.pop(model.name, None)
        return Generation(model, self.registry.next_number(model.name), config.commit, instances)

    async def _restore(self, current: Serving, unloaded: dict[str, Generation]) -> None:
        """After a failed unload-first swap, bring the old definitions back. One that cannot
        be restored leaves the snapshot: what serves and what the next plan sees agree, and
        the next apply loads it again."""
        restored = dict(current.generations)
        for name, old in unloaded.items():
            try:
                restored[name] = await self._load(old.model, current.config)
            except HostError as exc:
                restored.pop(name, None)
                log.error("model %s could not be restored after a failed swap; it serves "
                          "nothing until the next apply loads it: %s", name, exc.message)
        self.registry.switch(Serving(current.config, restored))


def check_available(config: HostConfig, plan: Plan) -> None:
    """The models this config must serve have to be able to load here."""
    needed = config.required_models | set(plan.load) | set(plan.reload)
    problems = {n: config.models[n].unavailable for n in sorted(needed)
                if config.models[n].unavailable}
    if problems:
        first = next(iter(problems))
        raise ApplyFailed(
            f"model {first} is unavailable: {problems[first]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            code=Code.MODEL_UNAVAILABLE,
            details={"unavailable": problems},
        )


def check_runtime_defaults(serving: Serving) -> None:
    """Defaults that apply without a reload must name voices and languages the loaded models
    have: a bad one fails the apply now, not every request later."""
    for name, gen in serving.generations.items():
        model = serving.config.models[name]
        voices = serving.voices_of(name)
        problem = model.default_voice and voice_problem(
            model.default_voice, voices, gen.capabilities.voice_blending)
        if problem:
            raise ApplyFailed(
                f"model {name} {problem} (its default_voice); its voices: {voices[:20]}",
                code=Code.UNKNOWN_VOICE, details={"model": name, "voices": voices[:100]})
        languages = gen.capabilities.languages
        if model.default_language and model.default_language not in languages:
            raise ApplyFailed(
                f"model {name}: default_language {model.default_language!r} is not one it "
                f"speaks {list(languages)}",
                code=Code.UNSUPPORTED_LANGUAGE,
                details={"model": name, "languages": list(languages)})
