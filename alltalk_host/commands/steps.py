"""Deadlines on a backend's steps when it runs in this process (``try --inline`` and the
conformance kit, which plugin authors run from pytest): each step on a daemon thread, waited
for up to its deadline.

Nothing can stop a Python thread, so a step past its deadline runs on: the caller reports it
and runs nothing beside it (no unload while a load still runs: ``Steps`` refuses every call
after the first one past its deadline). The command can still end,
since nothing waits for a daemon thread at exit. A hang in native code that holds the GIL
cannot be timed this way; in a worker process (``alltalk_host.workers``) a deadline kills the
process instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class StepTimedOut(Exception):
    """``step`` did not end within ``seconds``; it is still running on its thread."""

    def __init__(self, step: str, seconds: float) -> None:
        super().__init__(f"{step} timed out after {seconds:g} s")
        self.step = step
        self.seconds = seconds


def within(step: str, seconds: float | None, fn: Callable[[], T]) -> T:
    """``fn()``'s result or its exception, or StepTimedOut past ``seconds`` (None: no
    deadline, ``fn`` runs on this thread)."""
    if seconds is None:
        return fn()
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name=f"step {step}").start()
    if not done.wait(seconds):
        raise StepTimedOut(step, seconds)
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


class StepSkipped(Exception):
    """A call not made: an earlier step is past its deadline and still runs (the message says
    which)."""


class Steps:
    """Calls made one after another, each under its deadline, until one is past it: from then
    on every call raises StepSkipped, so nothing runs beside the step still running."""

    def __init__(self) -> None:
        self.halted: str | None = None  # "load timed out after 300 s"

    def call(self, step: str, seconds: float | None, fn: Callable[[], T]) -> T:
        self.check()
        try:
            return within(step, seconds, fn)
        except StepTimedOut as exc:
            self.halted = str(exc)
            raise

    def check(self) -> None:
        """StepSkipped once a step is past its deadline."""
        if self.halted:
            raise StepSkipped(self.halted)
