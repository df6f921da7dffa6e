"""Deadlines on a backend's steps when it runs in this process (``try --inline`` and the
conformance kit, which plugin authors run from pytest): each step on a daemon thread, waited
for up to its deadline.

Nothing can stop a Python thread, so a step past its deadline runs on: the caller reports it
and runs nothing beside it (no unload while a load still runs). The command can still end,
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
