"""The ledger: every transition of the host's state (attempted, applied, failed, known-good,
history, watch pause, a canary in progress), each saved before anyone can act on it.

A transition is written before it is made: the next state is built as a copy, saved, and only
then made so in memory. A write that fails (a full disk, a folder that became read-only)
raises what the store raised and changes nothing, so no later save records a change that
never happened (an apply that was aborted, saved as applied and known-good).

The controller is its only caller. Saving encodes on the event loop, where the state changes,
and writes (with fsync) on the I/O thread.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

from .state import HISTORY_LIMIT, HostState, StateStore


class Ledger:
    def __init__(self, store: StateStore, io: Executor) -> None:
        self.store = store
        self.state: HostState = store.load()
        self._io = io
        # One transition written at a time: each builds on the one before it, on disk too.
        self._lock = asyncio.Lock()

    # --- reading ---------------------------------------------------------------------------

    @property
    def applied(self) -> str | None:
        return self.state.applied

    def is_failed(self, commit: str) -> bool:
        return commit in self.state.failed

    def failure(self, commit: str) -> dict[str, Any] | None:
        return self.state.failed.get(commit)

    def is_known_good(self, commit: str) -> bool:
        return commit in self.state.known_good

    def previous_good(self) -> str | None:
        """The known-good commit applied before the current one."""
        for commit in reversed(self.state.known_good):
            if commit != self.state.applied:
                return commit
        return None

    def startup_candidates(self) -> list[str]:
        """What a starting host tries, in order: the commit it served, then earlier good ones."""
        if not self.state.applied:
            return []
        older = [c for c in reversed(self.state.known_good) if c != self.state.applied]
        return [self.state.applied, *older]

    def last_failure(self) -> dict[str, Any] | None:
        return next((h for h in reversed(self.state.history) if h["result"] == "failed"), None)

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        return self.state.history[-n:]

    # --- transitions -----------------------------------------------------------------------

    async def attempt(self, commit: str) -> None:
        def change(state: HostState) -> None:
            state.attempted = commit
        await self._transition(change)

    async def failed(self, commit: str, *, who: str, action: str, reason: str,
                     duration_s: float, extra: Mapping[str, Any] | None = None) -> None:
        failure = {"reason": reason, "time": time.time()}
        entry = _entry(commit=commit, actor=who, action=action, result="failed",
                       duration_s=duration_s, reason=reason, **(extra or {}))

        def change(state: HostState) -> None:
            state.failed[commit] = failure
            _append(state.history, entry)
        await self._transition(change)

    async def applied_ok(self, commit: str, *, who: str, action: str, duration_s: float,
                         pause_watch_at: str | None = None,
                         branch_move: dict[str, str] | None = None,
                         extra: Mapping[str, Any] | None = None) -> None:
        """The commit point of an apply: after this save, a restart serves ``commit``."""
        entry = _entry(commit=commit, actor=who, action=action, result="applied",
                       duration_s=duration_s, **(extra or {}))

        def change(state: HostState) -> None:
            state.applied = commit
            state.failed.pop(commit, None)
            if commit in state.known_good:
                state.known_good.remove(commit)
            state.known_good.append(commit)
            del state.known_good[:-HISTORY_LIMIT]
            if pause_watch_at is not None:
                state.watch_paused_at = pause_watch_at
            state.branch_move = branch_move
            _append(state.history, entry)
        await self._transition(change)

    async def canary_started(self, canary: dict[str, Any], *, who: str,
                             duration_s: float) -> None:
        """A canary serves from now on: a restart finds it in the state and aborts it."""
        entry = _entry(commit=canary["commit"], actor=who, action="canary",
                       result="canary-started", duration_s=duration_s, canary=canary)

        def change(state: HostState) -> None:
            state.canary = canary
            _append(state.history, entry)
        await self._transition(change)

    async def canary_extended(self, canary: dict[str, Any], reason: str) -> None:
        entry = _entry(commit=canary["commit"], actor="canary", action="canary",
                       result="canary-extended", duration_s=0.0, reason=reason)

        def change(state: HostState) -> None:
            state.canary = canary
            _append(state.history, entry)
        await self._transition(change)

    # Changes the next save carries, made in memory at once: each says what is already so
    # (the canary has ended, the branch has moved), whether or not that save succeeds.

    def end_canary(self) -> None:
        """The canary has ended; the next save (its outcome's) forgets it."""
        self.state.canary = None

    @property
    def canary(self) -> dict[str, Any] | None:
        return self.state.canary

    def last_canary(self) -> dict[str, Any] | None:
        """The history entry of the last canary that ended, if any is still kept."""
        return next((h for h in reversed(self.state.history) if h.get("action") == "canary"
                     and h["result"] in ("applied", "failed")), None)

    def record_only(self, *, commit: str | None, who: str, action: str, result: str,
                    reason: str | None = None) -> None:
        """A history entry that needs no save of its own (the next save carries it)."""
        _append(self.state.history, _entry(commit=commit, actor=who, action=action,
                                           result=result, duration_s=0.0, reason=reason))

    def declared(self, commit: str) -> None:
        """``commit`` is what serves from now on, though no apply of this ledger's own made it
        so (a fleet that went back to the commit Ray declared); the next save carries it."""
        self.state.applied = commit

    def branch_moved(self) -> None:
        """The journalled branch move is done; the next save forgets it."""
        self.state.branch_move = None

    def resume_watch(self) -> None:
        self.state.watch_paused_at = None

    @property
    def watch_paused_at(self) -> str | None:
        return self.state.watch_paused_at

    async def save(self) -> None:
        """Write the state as it is (carrying the changes made in memory since)."""
        await self._transition(lambda state: None)

    async def _transition(self, change: Callable[[HostState], None]) -> None:
        """Write the state as ``change`` leaves it, then make the change in memory. A write
        that raises leaves the state in memory as it was."""
        async with self._lock:
            following = copy.deepcopy(self.state)
            change(following)
            data = self.store.encode(following)
            await asyncio.get_running_loop().run_in_executor(self._io, self.store.write, data)
            # Made on the state in memory rather than by swapping the copy in: a change the
            # next save carries (end_canary, resume_watch) made during the write stays made.
            change(self.state)


def _entry(*, commit: str | None, actor: str, action: str, result: str, duration_s: float,
           reason: str | None = None, **extra: Any) -> dict[str, Any]:
    entry = {"time": time.time(), "actor": actor, "action": action, "commit": commit,
             "result": result, "duration_s": round(duration_s, 4), **extra}
    if reason:
        entry["reason"] = reason
    return entry


def _append(history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    history.append(entry)
    del history[:-HISTORY_LIMIT]
