"""A started request: one slot on one instance of one generation, until it ends.

Backend calls run in threads of the host. A request's deadline in a worker process is the
lease's to say (``deadline_s``: the model's ``[workers]`` settings in the snapshot the request
started under; per request, growing with its text; per chunk for a stream): past it the worker
is killed and the request ends with 503 ``backend_timeout`` (``checked.py`` makes the call).
An inline instance has no such deadline.

At the drain deadline a lease is *aborted*: its caller gets the abort error at once (a 503),
the backend is told to stop, and the slot comes back when the thread has really finished,
never earlier.

A request whose text comes in pieces (an ``Utterance``: Wyoming's streaming synthesis) *sets
its slot aside* between pieces and *resumes* with a slot for the next one: the generation stays
pinned (every piece is spoken by the model the first one started on), while the slot serves
other requests in the pause. Concurrent streams then take turns sentence by sentence instead of
the first ones holding the slots for their whole utterances.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from ..backend import Backend, SpeechRequest
from ..config.canary import STABLE
from ..errors import Code, HostError, Unavailable
from .generation import Generation, Serving

T = TypeVar("T")
P = TypeVar("P")


class Lease(Generic[P]):
    """A started request: one slot on one instance of one generation, until the lease ends.

    ``value`` is what the caller's ``prepare`` made of the request against this snapshot, and
    ``arm`` the arm that snapshot served ("stable", or "canary" while one runs). The
    slot is given back when the lease has ended *and* no backend call of it is still running:
    a cancelled request must not let a second caller into a backend that is still busy.
    """

    def __init__(self, serving: Serving, gen: Generation, index: int, value: P,
                 arm: str = STABLE) -> None:
        self.serving = serving
        self.arm = arm
        self.gen = gen
        self.value = value
        self._index = index
        self._open = True
        self._resting = False  # between the pieces of an utterance: the slot is not needed
        self._threads = 0
        self._aborted: HostError | None = None
        self._on_abort: list[Callable[[HostError], None]] = []

    @property
    def instance(self) -> Backend:
        return self.gen.instances[self._index]

    def deadline_s(self, request: SpeechRequest) -> float:
        """How long ``request`` may take in a worker (a stream: each of its chunks), by the
        snapshot it started under: a changed deadline applies without a reload."""
        model = self.serving.config.models.get(self.gen.model.name, self.gen.model)
        return model.workers.request_deadline_s(request.text)

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

    def set_aside(self) -> None:
        """Give the slot back until ``resume``, keeping the generation: a paused utterance.
        A backend call still running keeps the slot until it returns, as at the end."""
        self._resting = True
        self._maybe_release()

    async def resume(self) -> None:
        """A slot on this generation again, waiting in line with the other requests for it
        (after a set-aside). The queue limit was checked when the request arrived, so it is
        not applied again, and a switch does not move it: it stays on its generation. Raises
        the abort error once the drain deadline has passed."""
        self._check()
        self._resting = False
        if self._index >= 0:
            return  # given back only when its last call returns: that has not happened yet
        slot = await self.gen._wait_for_slot(None, 0, admitted=True, pinned=True)
        assert isinstance(slot, int)  # a pinned waiter is never moved
        self.gen._start(slot, self)  # raises (giving the slot back) past the drain deadline
        self._index = slot

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
        if (self._resting or not self._open) and self._threads == 0 and self._index >= 0:
            index, self._index = self._index, -1
            self.gen._release(index)
