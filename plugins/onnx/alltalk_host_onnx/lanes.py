"""The lanes of one loaded voice: a fixed set of worker threads that run the sentences of all
its requests, a few at a time, taking turns between requests.

Why: onnxruntime's intra-op threads scale poorly on a Piper voice's small convolutions, so two
sentences at a time on one thread each do more work than one sentence on two threads. A long
text gets its sentences run side by side; under concurrent load the same lanes serve every
request, so the CPU never runs more sentences at once than there are lanes, and a request with
many sentences cannot starve one with few: each request with work waiting gets the next free
lane in turn.

With ``solo``, a job that starts when no other runs or waits, and whose request is the only
one under way, runs *alone*: ``alone()`` says so on its thread (the backend then runs it on a
session with all cores' threads), and no other job starts until it ends, so the cores are
never asked for more threads than they have. A lone short request thus gets all cores, like
one session would; several sentences ready (a long text's, or several requests') get one lane
each. Several requests under way never run alone, even when, for a moment, only one of them
has a sentence ready (the others are being read, phonemised or sent): a job that ran alone
then held the other lanes idle for its whole run, and one sentence on all cores does less
work than one per lane. Measured in process on 2 cores, 2 clients each sending the ~200-
character paragraph 8 times: every sentence ran alone before this rule (15.3 audio seconds
per second), none with it (22.2).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Lanes:
    """``count`` threads running submitted jobs, round-robin across tickets (requests)."""

    def __init__(self, count: int, name: str = "onnx", solo: bool = False) -> None:
        self.count = count
        self.solo = solo
        self._solo_running = False
        self._here = threading.local()  # per lane thread: whether its job runs alone
        self._cond = threading.Condition()
        self._queues: dict[object, deque[tuple[Future[Any], Callable[[], Any]]]] = {}
        self._turns: deque[object] = deque()  # tickets with jobs waiting, in turn order
        self._open = 0  # requests under way (ordered() calls not yet ended)
        self._closed = False
        self.running = 0  # jobs running now
        self.most_running = 0  # the most that ever ran at once: never above count
        self._threads = [threading.Thread(target=self._work, name=f"{name}-lane-{i}",
                                          daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, ticket: object, job: Callable[[], T]) -> Future[T]:
        """Queue ``job`` behind the ticket's earlier ones; its result comes in the future."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("model is not loaded")
            queue = self._queues.get(ticket)
            if queue is None:
                queue = self._queues[ticket] = deque()
                self._turns.append(ticket)
            queue.append((future, job))
            self._cond.notify()
        return future

    def ordered(self, jobs: Iterable[Callable[[], T]], ahead: int) -> Iterator[T]:
        """Each job's result in the order of ``jobs``, run on the lanes with at most ``ahead``
        of them queued or running beyond the one the caller waits for. ``jobs`` is drawn on the
        caller's thread, lazily: preparing the next sentence overlaps running this one, except
        for the first, which runs alone: preparing the second beside it slowed a paragraph's
        first audio by 14 % (one lane on 2 cores, onnxruntime's threads on both). Jobs not
        started when the caller stops (closes the iterator, or an error) are dropped."""
        ticket = object()
        pending: deque[Future[T]] = deque()
        source = iter(jobs)
        first = True  # the first job is submitted alone
        with self._cond:
            self._open += 1
        try:
            while True:
                for job in source:
                    pending.append(self.submit(ticket, job))
                    if len(pending) > ahead or first:
                        break
                first = False
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            with self._cond:
                self._open -= 1

    def alone(self) -> bool:
        """Whether the job running on this thread runs alone (with ``solo`` only)."""
        return bool(getattr(self._here, "alone", False))

    def close(self) -> None:
        """Stop the threads once the jobs queued so far have run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._turns or self._solo_running):
                    self._cond.wait()
                if not self._turns:
                    return
                ticket = self._turns.popleft()
                queue = self._queues[ticket]
                future, job = queue.popleft()
                if queue:
                    self._turns.append(ticket)  # its next job waits for the others' turns
                else:
                    del self._queues[ticket]
                if not future.set_running_or_notify_cancel():
                    continue  # its request stopped waiting for it
                alone = (self.solo and self.running == 0 and not self._turns
                         and self._open <= 1)
                self._solo_running = alone
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            self._here.alone = alone
            try:
                future.set_result(job())
            except Exception as exc:  # noqa: BLE001 - raised again on the request's thread
                future.set_exception(exc)
            finally:
                self._here.alone = False
                with self._cond:
                    self.running -= 1
                    if alone:
                        self._solo_running = False
                        self._cond.notify_all()  # the lanes that waited for it
