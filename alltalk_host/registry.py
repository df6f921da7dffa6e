"""What is serving right now: generations of loaded models, the leases requests hold on them.

A *generation* is one load of one model at one commit (its backend instances). The *serving
snapshot* maps model names to generations together with the config they belong to; switching
config means replacing that one reference, so every request sees either the old snapshot or the
new one, never a mixture. A request holds a lease on the generation it started on; a generation
that is no longer served is unloaded after its last lease ends (or its drain deadline passes).

Everything here runs on one event loop; backend calls go to worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .backend import Backend
from .config.settings import HostConfig, ModelDef
from .errors import Conflict, NotFound, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Generation:
    """One model's loaded instances at one commit, and the requests using them."""

    def __init__(self, model: ModelDef, number: int, commit: str,
                 instances: list[Backend]) -> None:
        self.model = model
        self.number = number
        self.commit = commit
        self.instances = instances
        self.state = "serving"  # -> draining -> unloaded
        self.leases = 0
        self.loaded_at = time.time()
        first = instances[0]
        self.capabilities = first.capabilities
        self.sample_rate = first.sample_rate
        self._per_instance = max(1, first.capabilities.max_concurrency)
        self._slots = asyncio.Semaphore(self._per_instance * len(instances))
        self._active = [0] * len(instances)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def label(self) -> str:
        return f"{self.model.name}; generation={self.number}"

    @property
    def voices(self) -> list[str]:
        """Asked of the backend each time: a voice file added to a folder needs no reload."""
        return _safe(self.instances[0].voices, []) if self.instances else []

    @property
    def capacity(self) -> int:
        return self._per_instance * len(self.instances)

    def memory_estimate(self) -> int:
        return sum(_safe(i.memory_estimate, 0) for i in self.instances)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "backend": self.model.backend,
            "state": self.state,
            "generation": self.number,
            "commit": self.commit,
            "in_flight": self.leases,
            "instances": len(self.instances),
            "max_concurrency": self.capacity,
            "sample_rate": self.sample_rate,
            "voices": len(self.voices),
            "memory_estimate": self.memory_estimate(),
            "backend_status": _safe(self.instances[0].status, {}) if self.instances else {},
            "loaded_at": self.loaded_at,
        }

    # --- leases ----------------------------------------------------------------------------

    def _lease(self) -> None:
        self.leases += 1
        self._idle.clear()

    def _release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # --- running backend calls -------------------------------------------------------------

    async def _take_slot(self, queue_limit: int) -> int:
        waiting = self.leases - self.capacity
        if waiting > queue_limit:
            raise Unavailable(
                f"model {self.model.name} is busy: {waiting} requests already queued",
                code="busy",
            )
        await self._slots.acquire()
        idx = min(range(len(self._active)), key=self._active.__getitem__)
        self._active[idx] += 1
        return idx

    def _free_slot(self, idx: int) -> None:
        self._active[idx] -= 1
        self._slots.release()

    async def run(self, fn: Callable[[Backend], T], executor: ThreadPoolExecutor,
                  queue_limit: int) -> T:
        """Call ``fn(instance)`` in a worker thread once an instance has room.

        The slot is freed when the thread finishes, not when the caller stops waiting: a
        cancelled request must not let a second caller into a backend that is still busy.
        """
        idx = await self._take_slot(queue_limit)
        loop = asyncio.get_running_loop()
        future: Future[T] = executor.submit(fn, self.instances[idx])
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._free_slot, idx))
        return await asyncio.wrap_future(future)

    async def run_stream(self, fn: Callable[[Backend], Iterator[T]],
                         executor: ThreadPoolExecutor, queue_limit: int,
                         cancelled: threading.Event) -> AsyncIterator[T]:
        """Iterate ``fn(instance)`` in a worker thread, yielding items as they come."""
        idx = await self._take_slot(queue_limit)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def work(instance: Backend) -> None:
            try:
                for item in fn(instance):
                    put("item", item)
                    if cancelled.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put("error", exc)
            else:
                put("end", None)

        future = executor.submit(work, self.instances[idx])
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._free_slot, idx))
        try:
            while True:
                kind, value = await queue.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            cancelled.set()  # the consumer is gone or done: stop producing


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


@dataclass
class ModelRegistry:
    inference: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(32, thread_name_prefix="alltalk-infer"))
    loading: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="alltalk-load"))
    serving: Serving | None = None
    draining: list[Generation] = field(default_factory=list)
    _counters: dict[str, int] = field(default_factory=dict)
    # Models being replaced unload-first: their requests wait on the event instead of failing.
    _held: dict[str, asyncio.Event] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def next_number(self, name: str) -> int:
        self._counters[name] = self._counters.get(name, 0) + 1
        return self._counters[name]

    @asynccontextmanager
    async def lease(self, name: str | None) -> AsyncIterator[tuple[Serving, Generation]]:
        """The current snapshot and the generation serving ``name`` (default model if None)."""
        while True:
            serving = self.serving
            if serving is None:
                raise Unavailable("no configuration is applied yet", code="not_ready")
            model = name or serving.config.default_model
            held = self._held.get(model)
            if held is not None:
                await held.wait()
                continue
            gen = serving.generations.get(model)
            if gen is None:
                if model in serving.config.models:
                    raise Conflict(
                        f"model {model!r} is configured but not loaded; switch to it or set "
                        "keep_loaded = true in its definition",
                        code="model_not_loaded",
                    )
                raise NotFound(
                    f"unknown model {model!r}",
                    code="unknown_model",
                    details={"models": sorted(serving.config.models)},
                )
            break
        gen._lease()
        try:
            yield serving, gen
        finally:
            gen._release()

    # --- swapping --------------------------------------------------------------------------

    def hold(self, name: str) -> None:
        self._held.setdefault(name, asyncio.Event())

    def release_holds(self) -> None:
        for event in self._held.values():
            event.set()
        self._held.clear()

    def switch(self, new: Serving) -> None:
        """Make ``new`` the serving snapshot; retire generations it no longer uses."""
        old = self.serving
        self.serving = new
        if old is None:
            return
        keep = {id(g) for g in new.generations.values()}
        for gen in old.generations.values():
            if id(gen) not in keep:
                self.retire(gen, new.config.drain_deadline_s)

    def retire(self, gen: Generation, deadline: float) -> None:
        if gen.state == "unloaded":  # replaced unload-first: already gone
            return
        gen.state = "draining"
        self.draining.append(gen)
        task = asyncio.get_running_loop().create_task(self._drain(gen, deadline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, gen: Generation, deadline: float) -> None:
        if not await gen.wait_idle(deadline):
            log.warning("%s: drain deadline (%.0f s) passed with %d requests in flight; "
                        "unloading anyway", gen.label, deadline, gen.leases)
        await self.unload(gen)

    async def unload(self, gen: Generation) -> None:
        if gen.state == "unloaded":
            return
        gen.state = "unloading"
        await asyncio.get_running_loop().run_in_executor(self.loading, unload_instances,
                                                         gen.instances)
        gen.state = "unloaded"
        if gen in self.draining:
            self.draining.remove(gen)
        log.info("%s unloaded", gen.label)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        gens = list(self.serving.generations.values()) if self.serving else []
        for gen in [*gens, *self.draining]:
            await self.unload(gen)
        self.serving = None
        self.inference.shutdown(wait=False, cancel_futures=True)
        self.loading.shutdown(wait=True)


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


def _safe(fn: Callable[[], T], default: T) -> T:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - status reporting must not fail a request
        return default
