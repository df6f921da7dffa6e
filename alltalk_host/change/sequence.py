"""The order of one apply, from the attempt recorded to the switch; the controller decides
which commit, this module takes it through.

  1. record the attempt (a crash from here on leaves the previous good state serving);
  2. build and validate the commit's config, plan it, prepare the new snapshot beside the old;
  3. save the state with the commit applied (the commit point; a branch move the change needs
     is journalled in the same write);
  4. move the branch, for a commit the host wrote (a setting edit, a rollback by revert);
  5. switch the snapshot, last, with nothing awaited after it, so whoever sees the new state
     can act on it at once.
A canary stops after step 2 (``prepare``): the Rollout serves it beside the stable snapshot,
and steps 3 and 5 (or the commit failed) come when it is judged. Each step publishes its phase
on the change's ``Operation``; a failure is recorded in the ledger before it is raised. A branch
move journalled in step 3 but not done is finished at the next start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ..config.loader import ConfigLoader
from ..config.repo import ConfigRepo
from ..config.settings import HostConfig
from ..errors import ApplyFailed, HostError
from ..events import EventBus, Operation
from ..serving.registry import ModelRegistry
from .apply import ApplyTransaction, Prepared
from .ledger import Ledger
from .plan import Plan, make_plan

# The controller's logger, not this module's: every change's outcome is in one log, whichever
# module writes the line (operators follow it, and tests/test_control_log.py reads it).
log = logging.getLogger(f"{__package__}.control")


class ApplySequence:
    def __init__(self, repo: ConfigRepo, loader: ConfigLoader, registry: ModelRegistry,
                 ledger: Ledger, transaction: ApplyTransaction, events: EventBus | None,
                 io: ThreadPoolExecutor,
                 spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]]) -> None:
        self.repo = repo
        self.loader = loader
        self.registry = registry
        self.ledger = ledger
        self.transaction = transaction
        self.events = events
        self._io = io  # git and config building: the controller's one I/O thread
        self._spawn = spawn

    def plan(self, config: HostConfig, force_reload: Collection[str] = ()) -> Plan:
        """What applying ``config`` would change, with the memory each load would need."""
        serving = self.registry.serving
        plan = make_plan(serving.config if serving else None,
                         serving.generations if serving else (), config, force_reload)
        admissions = self.transaction.memory.check(config, plan, serving)
        return replace(plan, memory=[a.to_dict() for a in admissions])

    async def prepare(self, commit: str, who: str, action: str,
                      config: HostConfig | None = None, force_reload: Collection[str] = (),
                      beside_only: bool = False) -> tuple[Operation, Plan, Prepared]:
        """Steps 1 and 2: record the attempt; load, check and prepare the commit's snapshot
        beside the serving one. A failure is recorded, published and raised."""
        started = time.monotonic()
        op = Operation(self.events, action, commit, who)
        op.phase("started")
        try:
            await self.ledger.attempt(commit)
        except BaseException as exc:  # not even the attempt saved: nothing was changed
            op.failed_by(exc, still_serving=self._serving_commit())
            raise
        try:
            op.phase("planning")
            if config is None:
                config = await asyncio.get_running_loop().run_in_executor(
                    self._io, self.loader.load, commit)
            plan = self.plan(config, force_reload)
            prepared = await self.transaction.prepare(config, plan, op, beside_only)
        except Exception as exc:
            try:
                error = await self._failed(exc, commit, who, action, started)
            except BaseException as unsaved:  # the failure could not be recorded either
                op.failed_by(unsaved, still_serving=self._serving_commit())
                raise
            op.phase("failed", reason=error.message, code=error.code,
                     still_serving=self._serving_commit())
            raise error from exc
        return op, plan, prepared

    async def apply(self, commit: str, who: str, action: str, *,
                    config: HostConfig | None = None, force_reload: Collection[str] = (),
                    pause_watch_at: str | None = None,
                    move_from: str | None = None) -> dict[str, Any]:
        """All five steps; ``move_from`` is the head a commit the host wrote goes on top of."""
        started = time.monotonic()
        op, plan, prepared = await self.prepare(commit, who, action, config, force_reload)
        move = {"from": move_from, "to": commit} if move_from else None
        duration = time.monotonic() - started
        try:
            await self.ledger.applied_ok(commit, who=who, action=action, duration_s=duration,
                                         pause_watch_at=pause_watch_at, branch_move=move)
        except BaseException as exc:  # not saved: the previous snapshot serves on
            await prepared.abort()
            op.failed_by(exc, still_serving=self._serving_commit())
            raise
        result: dict[str, Any] = {
            "commit": commit, "result": "applied", "action": action,
            "duration_s": round(duration, 4), "plan": plan.to_dict(),
            "loaded": prepared.load_seconds,
        }
        if move is not None:
            result["branch"] = await self._move_branch(move_from or "", commit)
            # Forget the journal on disk too, soon (not awaited: see below), so a later
            # restart cannot replay a move someone has since undone by hand.
            self._spawn(self.ledger.save())
        # Published last, with nothing awaited after it: whoever sees the new snapshot
        # (ready, a new commit serving) can send the next command without a 409.
        op.phase("switching")
        prepared.commit()
        op.phase("done", duration_s=round(duration, 4), plan=plan.to_dict(),
                 loaded=prepared.load_seconds)
        log.info("%s of %s by %s: applied in %.2f s (load %s, reload %s, unload %s%s)",
                 action, commit[:10], who, duration, plan.load, plan.reload, plan.unload,
                 "".join(f", {n} {s:.2f} s" for n, s in prepared.load_seconds.items()))
        return result

    async def _failed(self, exc: Exception, commit: str, who: str, action: str,
                      started: float) -> HostError:
        """Record a failed apply; the error the caller gets, naming the commit (the
        controller logs it)."""
        if isinstance(exc, HostError):
            error = exc
        else:
            log.error("%s of %s failed unexpectedly", action, commit[:10], exc_info=exc)
            error = ApplyFailed(f"internal error while applying: {type(exc).__name__}: {exc}")
        await self.ledger.failed(commit, who=who, action=action, reason=error.message,
                                 duration_s=time.monotonic() - started)
        return error.with_details(commit=commit)

    async def finish_branch_move(self) -> None:
        """At start-up: step 4 of a change that a crash (or a checkout that could not follow)
        left journalled after its commit point."""
        move = self.ledger.state.branch_move
        if not move:
            return
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                self._io, self.repo.finish_branch_move, move["from"], move["to"])
            log.info("start-up: branch move %s -> %s left by an earlier run: %s",
                     move["from"][:10], move["to"][:10], outcome)
        except HostError as exc:
            log.warning("start-up: could not finish moving the branch to %s: %s",
                        move["to"][:10], exc.message)
        self.ledger.branch_moved()
        await self.ledger.save()

    async def _move_branch(self, expected: str, new: str) -> dict[str, Any]:
        """After the commit point: never raises, whatever git says, so the switch happens."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._io, self.repo.move_branch, expected, new)
        except HostError as exc:
            # Applied and serving, but the branch went elsewhere meanwhile: say so. The
            # journal is dropped: finishing the move later would overwrite that commit.
            log.warning("applied %s but did not move branch %s: %s", new[:10],
                        self.repo.branch, exc.message)
            self.ledger.branch_moved()
            return {"moved": False, "name": self.repo.branch, "reason": exc.message}
        except Exception as exc:  # noqa: BLE001 - the checkout could not follow
            # The journal stays: the next start-up brings the checkout along.
            log.warning("moved branch %s to %s but its checkout did not follow (it will at "
                        "the next start): %s", self.repo.branch, new[:10], exc)
            return {"moved": True, "name": self.repo.branch, "head": new,
                    "checkout": f"not updated: {exc}"}
        self.ledger.branch_moved()
        return {"moved": True, "name": self.repo.branch, "head": new}

    def _serving_commit(self) -> str | None:
        serving = self.registry.serving
        return serving.commit if serving else None
