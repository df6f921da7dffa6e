"""A canary's start and end, in the order a change needs; the controller calls it.

Start: the controller prepares the canary's snapshot beside the stable one exactly as for an
apply (availability, memory admission, load, warm-up, checks), but nothing switches. Then:
  1. the state is saved with the canary in it (a restart finds it there);
  2. the registry serves the canary's snapshot beside the stable one, to the canary's share;
  3. a timer judges it when its duration is up: promote, extend once (too few requests), or
     abort (``canary.evaluate``).
End (the timer's verdict, or a person's promote or abort):
  1. the state is saved first, the commit point as for an apply: promoted, the commit is
     applied and known-good; aborted, it is failed with the measured reason;
  2. the registry switches to the canary's snapshot (promoted: the stable generations it does
     not share drain and unload), or retires the canary's own generations (aborted: they drain
     and unload, and the stable snapshot serves on).
A canary found in the state at start-up is aborted (``abort_left_over``), saying why: a crash
in mid-canary may be the canary's doing, and resuming it would crash again; its measurements
died with the process, and a commit nobody saw through to its end is never promoted.

One end at a time (a lock): a person's promote and the timer cannot both act.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from ..config.canary import ABORT, EXTEND
from ..config.settings import HostConfig
from ..errors import Code, Conflict
from ..events import EventBus, Operation
from ..serving.arms import Arms
from ..serving.registry import ModelRegistry
from .apply import Prepared
from .canary import CanaryRun
from .ledger import Ledger
from .plan import Plan

log = logging.getLogger(__name__)
# The controller's first half of an apply: (commit, who, action, config, force_reload,
# beside_only) -> the live operation, the plan and the prepared snapshot.
Prepare = Callable[[str, str, str, HostConfig | None, Collection[str], bool],
                   Awaitable[tuple[Operation, Plan, Prepared]]]
TIMER = "canary"  # who the history names when the timer decided


class Rollout:
    def __init__(self, registry: ModelRegistry, ledger: Ledger, arms: Arms,
                 events: EventBus | None,
                 spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]]) -> None:
        self.registry = registry
        self.ledger = ledger
        self.arms = arms
        self.events = events
        self._spawn = spawn
        self._lock = asyncio.Lock()
        self._op: Operation | None = None
        self._plan: Plan | None = None
        self._timer: asyncio.Task[Any] | None = None

    @property
    def running(self) -> CanaryRun | None:
        return self.arms.run

    def describe(self) -> dict[str, Any]:
        """What ``GET /control/canary`` answers: the running canary, or the last one's end."""
        run = self.arms.run
        if run is not None:
            return run.describe()
        return {"running": False, "last": self.ledger.last_canary()}

    def refuse_change(self) -> None:
        """Another change while a canary runs is 409, naming it and the way out."""
        run = self.arms.run
        if run is None:
            return
        raise Conflict(
            f"a canary of {run.commit[:10]} is in progress ({run.spec.percent:g} % of "
            f"requests, {run.time_left_s():.0f} s left); promote or abort it first "
            "(POST /control/canary/promote or /control/canary/abort)",
            code=Code.CANARY_IN_PROGRESS,
            details={"canary": run.commit, "stable": run.stable_commit,
                     "time_left_s": round(run.time_left_s(), 3)})

    # --- start -----------------------------------------------------------------------------

    async def start(self, commit: str, who: str, overrides: Mapping[str, Any],
                    prepare: Prepare) -> dict[str, Any]:
        """Canary ``commit`` with ``overrides`` of the ``[canary]`` defaults; ``prepare`` is
        the controller's first half of an apply. Runs inside the controller's one change."""
        stable = self.registry.serving
        if stable is None:
            raise Conflict("nothing serves yet, so there is nothing to compare a canary with; "
                           "apply it without one", code=Code.CANARY_NOT_POSSIBLE)
        if commit == stable.commit:
            raise Conflict(f"{commit[:10]} is the commit serving now; a canary needs another "
                           "one", code=Code.CANARY_NOT_POSSIBLE)
        # The defaults come from the stable commit: a new commit cannot loosen its own test.
        settings = stable.config.canary
        spec = settings.spec.with_overrides(overrides)
        started = time.monotonic()
        op, plan, prepared = await prepare(commit, who, "canary", None, (), True)
        prepared_s = time.monotonic() - started
        run = CanaryRun(commit, stable.commit, spec, settings, who)
        try:
            await self.ledger.canary_started(run.to_state(), who=who, duration_s=prepared_s)
        except BaseException as exc:  # not saved: no canary, the stable snapshot serves on
            await prepared.abort()
            op.failed_by(exc, still_serving=stable.commit)
            raise
        # Nothing awaited from here on: the registry and the arms start it together.
        self.registry.start_canary(prepared.serving)
        self.arms.run = run
        self._op, self._plan = op, plan
        self._timer = self._spawn(self._judge_at_end(run))
        op.phase("canary", stable=stable.commit, **spec.to_dict())
        log.info("canary of %s by %s: serving %g %% of requests for %g s beside %s "
                 "(prepared in %.2f s)", run.commit[:10], who, spec.percent, spec.duration_s,
                 stable.commit[:10], prepared_s)
        return {"commit": run.commit, "result": "canary", "action": "canary",
                "duration_s": round(prepared_s, 4), "plan": plan.to_dict(),
                "loaded": prepared.load_seconds, "canary": run.describe()}

    # --- end -------------------------------------------------------------------------------

    async def promote(self, who: str, reason: str | None = None) -> dict[str, Any]:
        """Make the canary the applied commit, exactly as an apply would."""
        async with self._lock:
            run, reason, op, summary = self._ending("promoted", "promoting", who, reason)
            try:
                await self.ledger.applied_ok(run.commit, who=who, action="canary",
                                             duration_s=run.ran_s,
                                             extra={"canary": summary, "reason": reason})
            except BaseException as exc:
                self._end(promote=False)  # not saved as applied: the stable commit serves on
                op.failed_by(exc, still_serving=run.stable_commit)
                raise
            op.phase("switching")
            self._end(promote=True)
            plan = self._plan.to_dict() if self._plan else None
            op.phase("done", duration_s=round(run.ran_s, 4), plan=plan, reason=reason)
            log.info("canary of %s promoted by %s: %s", run.commit[:10], who, reason)
            return {"commit": run.commit, "result": "applied", "action": "canary",
                    "duration_s": round(run.ran_s, 4), "plan": plan, "reason": reason,
                    "canary": summary}

    async def abort(self, who: str, reason: str | None = None) -> dict[str, Any]:
        """Stop the canary; its commit is failed with ``reason``, the stable one serves on."""
        async with self._lock:
            run, reason, op, summary = self._ending("aborted", "aborting", who, reason)
            try:
                await self.ledger.failed(run.commit, who=who, action="canary", reason=reason,
                                         duration_s=run.ran_s, extra={"canary": summary})
            finally:  # aborted even if not recorded: a restart aborts what the state holds
                self._end(promote=False)
                op.phase("failed", reason=reason, code=Code.CANARY_ABORTED,
                         still_serving=run.stable_commit)
            log.warning("canary of %s aborted by %s: %s; %s serves on", run.commit[:10], who,
                        reason, run.stable_commit[:10])
            return {"commit": run.commit, "result": "aborted", "action": "canary",
                    "duration_s": round(run.ran_s, 4), "reason": reason,
                    "serving": run.stable_commit, "canary": summary}

    def _ending(self, outcome: str, phase: str, who: str, reason: str | None
                ) -> tuple[CanaryRun, str, Operation, dict[str, Any]]:
        """What promoting and aborting share: the running canary, the reason (said, or what
        it measured), its operation told ``phase``, its summary; the ledger no longer holds
        it as running."""
        run = self._require_run()
        reason = reason or f"{outcome} by {who} ({run.measured()})"
        op = self._operation(run)
        op.phase(phase, reason=reason)
        summary = run.summary(outcome, reason, who)
        self.ledger.end_canary()
        return run, reason, op, summary

    async def abort_left_over(self) -> None:
        """At start-up, before anything serves: a canary the state still holds is aborted."""
        left = self.ledger.canary
        if not left:
            return
        ran = max(0.0, time.time() - float(left.get("started_at") or time.time()))
        spec = left.get("spec") or {}
        reason = (f"the host restarted during its canary ({ran:.0f} s after it started, of "
                  f"{spec.get('duration_s', '?')} s); its measurements were lost with the "
                  "process, and a canary nobody saw through to its end is not promoted; "
                  "apply it again to canary it afresh")
        self.ledger.end_canary()
        await self.ledger.failed(
            left["commit"], who="startup", action="canary", reason=reason, duration_s=ran,
            extra={"canary": {**left, "outcome": "aborted", "reason": reason,
                              "decided_by": "startup", "arms": None}})
        Operation(self.events, "canary", left["commit"], "startup").phase(
            "failed", reason=reason, code=Code.CANARY_ABORTED,
            still_serving=self.ledger.applied)
        log.warning("start-up: canary of %s aborted: %s", left["commit"][:10], reason)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # --- helpers ---------------------------------------------------------------------------

    async def _judge_at_end(self, run: CanaryRun) -> None:
        """At the end of the duration: extend once if too few requests came, else promote or
        abort by the verdict. Nobody awaits this task, so what goes wrong is logged here."""
        while self.arms.run is run:
            await asyncio.sleep(run.time_left_s())
            if self.arms.run is not run:
                return  # a person decided first
            verdict = run.verdict()
            if verdict.outcome == EXTEND:
                run.extend()
                self._operation(run).phase("extended", reason=verdict.reason,
                                           time_left_s=round(run.time_left_s(), 3))
                log.info("canary of %s: %s", run.commit[:10], verdict.reason)
                try:
                    await self.ledger.canary_extended(run.to_state(), verdict.reason)
                except Exception:  # the canary runs on; only its record is late
                    log.exception("canary of %s: saving its extension failed", run.commit[:10])
                continue
            try:
                if verdict.outcome == ABORT:
                    await self.abort(TIMER, verdict.reason)
                else:
                    await self.promote(TIMER, verdict.reason)
            except Conflict as exc:
                if exc.code != Code.NO_CANARY:  # else a person ended it meanwhile
                    log.error("canary of %s: %s", run.commit[:10], exc.message)
            except Exception:
                log.exception("canary of %s: acting on the verdict (%s) failed",
                              run.commit[:10], verdict.reason)
            return

    def _require_run(self) -> CanaryRun:
        run = self.arms.run
        if run is None:
            raise Conflict("no canary is in progress", code=Code.NO_CANARY,
                           details={"last": self.ledger.last_canary()})
        return run

    def _operation(self, run: CanaryRun) -> Operation:
        if self._op is None or self._op.commit != run.commit:
            self._op = Operation(self.events, "canary", run.commit, run.who)
        return self._op

    def _end(self, promote: bool) -> None:
        """The registry and the arms end it together (nothing awaited in between)."""
        self.registry.end_canary(promote)
        self.arms.run = None
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
