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
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .backend import Backend
from .config.settings import HostConfig, ModelDef
from .errors import Code, Conflict, HostError, NotFound, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
P = TypeVar("P")

# After the drain deadline, requests are told to stop; a backend thread that does not notice
# within this many seconds is left to finish on its own while its model is unloaded anyway.
THREAD_GRACE_S = 5.0


class _Moved:
    """Handed to a waiting request whose model is now served by another generation."""


MOVED = _Moved()


@dataclass(eq=False)
class _Waiter:
    name: str | None  # what the request asked for (None: the default model)
    future: asyncio.Future[int | _Moved | HostError]


class Generation:
    """One model's loaded instances at one commit, and the requests using them."""

    def __init__(self, model: ModelDef, number: int, commit: str,
                 instances: list[Backend]) -> None:
        self.model = model
        self.number = number
        self.commit = commit
        self.instances = instances
        self.state = "serving"  # -> draining -> unloading -> unloaded
        self.loaded_at = time.time()
        first = instances[0]
        self.capabilities = first.capabilities
        self.sample_rate = first.sample_rate
        self._per_instance = max(1, first.capabilities.max_concurrency)
        self._free = [self._per_instance] * len(instances)  # room left on each instance
        self._waiters: deque[_Waiter] = deque()
        self._running: set[Lease[Any]] = set()
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

    def memory_estimate(self) -> int:
        return sum(_safe(i.memory_estimate, 0) for i in self.instances)

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
        }

    # --- slots ---------------------------------------------------------------------------

    async def _wait_for_slot(self, name: str | None, queue_limit: int,
                             admitted: bool) -> int | _Moved:
        """An instance index with room for one more request, or MOVED.

        ``admitted``: the request already waited in a generation that was replaced, so the
        queue limit, checked when it arrived, is not applied a second time.
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
        waiter = _Waiter(name, asyncio.get_running_loop().create_future())
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
        idx = max(range(len(self._free)), key=self._free.__getitem__, default=None)
        if idx is None or self._free[idx] == 0:
            return None
        self._free[idx] -= 1
        return idx

    def _release(self, idx: int) -> None:
        self._free[idx] += 1
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

    def _start(self, lease: Lease[Any]) -> None:
        """A request that was handed a slot has started (unless the deadline passed first)."""
        if self._expired is not None:
            self._abandon(lease._index)
            raise self._expired
        self._starting -= 1
        self._running.add(lease)
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
            if not waiter.future.done() and moves(waiter.name):
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
        for lease in list(self._running):
            lease.abort(Unavailable(
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


class Lease(Generic[P]):
    """A started request: one slot on one instance of one generation, until the lease ends.

    ``value`` is what the caller's ``prepare`` made of the request against this snapshot. The
    slot is given back when the lease has ended *and* no backend call of it is still running:
    a cancelled request must not let a second caller into a backend that is still busy.
    """

    def __init__(self, serving: Serving, gen: Generation, index: int, value: P) -> None:
        self.serving = serving
        self.gen = gen
        self.value = value
        self._index = index
        self._open = True
        self._threads = 0
        self._aborted: HostError | None = None
        self._on_abort: list[Callable[[HostError], None]] = []

    @property
    def instance(self) -> Backend:
        return self.gen.instances[self._index]

    async def run(self, fn: Callable[[Backend], T], executor: ThreadPoolExecutor,
                  cancelled: threading.Event) -> T:
        """``fn(instance)`` in a worker thread; raises the abort error at the drain deadline."""
        self._check()
        loop = asyncio.get_running_loop()
        result: asyncio.Future[T] = loop.create_future()

        def settle(future: Any) -> None:
            self._thread_done()
            if result.done():
                return
            if future.cancelled():  # the executor shut down before it ran
                result.set_exception(Unavailable("the server is shutting down",
                                                 code=Code.SHUTTING_DOWN))
            elif future.exception() is not None:
                result.set_exception(future.exception())
            else:
                result.set_result(future.result())

        def on_abort(error: HostError) -> None:
            cancelled.set()
            if not result.done():
                result.set_exception(error)

        self._thread_start()
        work = executor.submit(fn, self.instance)
        work.add_done_callback(lambda f: loop.call_soon_threadsafe(settle, f))
        self._on_abort.append(on_abort)
        try:
            return await result
        finally:
            self._on_abort.remove(on_abort)

    async def stream(self, fn: Callable[[Backend], Iterator[T]], executor: ThreadPoolExecutor,
                     cancelled: threading.Event) -> AsyncIterator[T]:
        """Iterate ``fn(instance)`` in a worker thread, yielding items as they come."""
        self._check()
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

        def on_abort(error: HostError) -> None:
            cancelled.set()
            queue.put_nowait(("error", error))

        self._thread_start()
        future = executor.submit(work, self.instance)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._thread_done))
        self._on_abort.append(on_abort)
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
            self._on_abort.remove(on_abort)

    def abort(self, error: HostError) -> None:
        self._aborted = error
        for callback in list(self._on_abort):
            callback(error)

    def _check(self) -> None:
        if self._aborted is not None:
            raise self._aborted

    def _thread_start(self) -> None:
        self._threads += 1
        self.gen._thread_started()

    def _thread_done(self) -> None:
        self._threads -= 1
        self.gen._thread_ended()
        self._maybe_release()

    def _close(self) -> None:
        self._open = False
        self.gen._running.discard(self)
        self.gen._update_idle()
        self._maybe_release()

    def _maybe_release(self) -> None:
        if not self._open and self._threads == 0 and self._index >= 0:
            index, self._index = self._index, -1
            self.gen._release(index)


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
    async def lease(self, name: str | None,
                    prepare: Callable[[Serving, Generation], P]) -> AsyncIterator[Lease[P]]:
        """Wait for room on the generation serving ``name`` (the default model if None).

        ``prepare(serving, gen)`` checks the request against that snapshot and model before
        it queues (so a bad request fails at once), and again if a switch moves it elsewhere.
        """
        admitted = False
        while True:
            serving = self._require_serving()
            model = name or serving.config.default_model
            held = self._held.get(model)
            if held is not None:
                await held.wait()
                continue
            gen = _generation(serving, model)
            value = prepare(serving, gen)
            slot = await gen._wait_for_slot(name, serving.config.queue_limit, admitted)
            if isinstance(slot, int):
                current = self.serving
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
        lease = Lease(serving, gen, slot, value)
        gen._start(lease)
        try:
            yield lease
        finally:
            lease._close()

    def resolve(self, name: str | None) -> tuple[Serving, Generation]:
        """The snapshot and the generation serving ``name`` now, without queueing (for
        answers that need no backend)."""
        serving = self._require_serving()
        return serving, _generation(serving, name or serving.config.default_model)

    def _require_serving(self) -> Serving:
        if self.serving is None:
            raise Unavailable("no configuration is applied yet", code=Code.NOT_READY)
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

    def switch(self, new: Serving) -> None:
        """Make ``new`` the serving snapshot; retire generations it no longer uses.

        Requests still waiting follow their model into the new snapshot; those whose model it
        no longer loads stay, to be served by the old generation if they start in time.
        """
        old = self.serving
        self.serving = new
        if old is None:
            return
        default = new.config.default_model
        for gen in old.generations.values():
            gen.move_waiters(
                lambda wanted, gen=gen: new.generations.get(wanted or default) not in (None, gen))
        keep = {id(g) for g in new.generations.values()}
        for gen in old.generations.values():
            if id(gen) not in keep:
                self.retire(gen, new.config.drain_deadline_s, new.commit)

    def retire(self, gen: Generation, deadline: float, commit: str | None = None) -> None:
        if gen.state in ("unloading", "unloaded"):  # replaced unload-first: already gone
            return
        gen.state = "draining"
        self.draining.append(gen)
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
                log.warning("%s: backend calls still running %g s after they were cancelled; "
                            "unloading anyway", gen.label, THREAD_GRACE_S)
        await self.unload(gen)

    async def unload(self, gen: Generation) -> None:
        if gen.state in ("unloading", "unloaded"):
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
            gen.expire(None, 0)
            await self.unload(gen)
        self.serving = None
        self.inference.shutdown(wait=False, cancel_futures=True)
        self.loading.shutdown(wait=True)


def _generation(serving: Serving, model: str) -> Generation:
    gen = serving.generations.get(model)
    if gen is not None:
        return gen
    if model in serving.config.models:
        raise Conflict(
            f"model {model!r} is configured but not loaded; switch to it or set "
            "keep_loaded = true in its definition",
            code=Code.MODEL_NOT_LOADED,
        )
    raise NotFound(f"unknown model {model!r}", code=Code.UNKNOWN_MODEL,
                   details={"models": sorted(serving.config.models)})


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


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
