"""The Controller: what the front-ends call to change or inspect configuration.

It orders the pieces of a change and owns none of them: the ApplyTransaction loads and checks
models (``apply.py``), the Ledger records and saves state (``ledger.py``), the SettingsEditor
writes setting commits (``config/editor.py``), the BranchWatcher follows the branch
(``watch.py``), the Rollout starts and ends canaries (``rollout.py``). One change runs at a
time; a second gets 409 ``apply_in_progress``, and any change during a canary 409
``canary_in_progress``.

The order of an apply, and why:
  1. record the attempt (a crash from here on leaves the previous good state serving);
  2. build and validate the commit's config, plan it, prepare the new snapshot beside the old;
  3. save the state with the commit applied (the commit point; a branch move the change needs
     is journalled in the same write);
  4. move the branch, for a commit the host wrote (a setting edit, a rollback by revert);
  5. switch the snapshot, last, with nothing awaited after it, so whoever sees the new state
     can act on it at once.
A canary stops after step 2: the Rollout serves it beside the stable snapshot, and steps 3
and 5 (or the commit failed) come when it is judged.
Git and config building run on one I/O thread; model loading on the registry's threads.

(About 480 lines, over the house limit of ~300: this is the one place where the order of each
change is written down, kept together so it reads top to bottom. Its parts live elsewhere.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..config.editor import SettingsEditor
from ..config.loader import ConfigLoader
from ..config.repo import ConfigRepo
from ..config.settings import HostConfig
from ..errors import ApplyFailed, Code, Conflict, HostError, NotFound, Unavailable
from ..events import EventBus, Operation
from ..plugins import BackendCatalog
from ..serving.arms import Arms
from ..serving.registry import ModelRegistry
from .apply import ApplyTransaction, Prepared
from .ledger import Ledger
from .plan import Plan, make_plan
from .report import Report
from .rollout import Rollout
from .state import StateStore
from .watch import BranchWatcher

log = logging.getLogger(__name__)
T = TypeVar("T")


class Controller:
    def __init__(self, repo: ConfigRepo, loader: ConfigLoader, store: StateStore,
                 registry: ModelRegistry, catalog: BackendCatalog, cache_dir: Path,
                 events: EventBus | None = None, arms: Arms | None = None) -> None:
        self.repo = repo
        self.events = events
        self.loader = loader
        self.registry = registry
        self.catalog = catalog
        self._io = ThreadPoolExecutor(1, thread_name_prefix="alltalk-git")
        self.ledger = Ledger(store, self._io)
        self.editor = SettingsEditor(repo, loader)
        self.transaction = ApplyTransaction(registry, catalog, cache_dir)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.rollout = Rollout(registry, self.ledger, arms or Arms(), events, self._spawn)
        self.watcher = BranchWatcher(
            repo, self.ledger, registry, self._io, apply=self._watch_apply,
            busy=lambda: self._busy is not None or self.rollout.running is not None,
            settings_of=loader.watch_settings)
        self._busy: dict[str, Any] | None = None
        self.report = Report(repo, registry, catalog, self.ledger, self.transaction,
                             self.watcher, self._io, busy=lambda: self._busy,
                             ready=lambda: self.ready, canary=self.rollout.describe)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, choose_commit: bool = True) -> None:
        """Begin serving in the background: the last good commit, then watch the branch.

        Without ``choose_commit`` (a fleet member, told its commit by whoever rolls the fleet
        out) nothing is applied and the branch is not watched: two replicas that each chose
        would serve different commits."""
        if not choose_commit:
            await self._run_io(self.loader.clear_work_dir)
            return
        self._spawn(self._startup())
        self._spawn(self.watcher.run())

    async def stop(self) -> None:
        self.watcher.close()
        self.rollout.close()  # a canary left running is aborted at the next start
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._io.shutdown(wait=True)
        self.repo.close()

    async def _startup(self) -> None:
        removed = await self._run_io(self.loader.clear_work_dir)
        if removed:
            log.info("removed %d temporary config copies left by an earlier run", removed)
        await self._finish_branch_move()
        await self.rollout.abort_left_over()
        head = await self._run_io(self.repo.head)
        candidates = list(dict.fromkeys([*self.ledger.startup_candidates(), head]))
        for commit in candidates:
            if not await self._run_io(self.repo.exists, commit):
                log.warning("start-up: commit %s is no longer in the config repo (rewritten "
                            "history?); trying the next known-good commit", commit[:10])
                continue
            try:
                with self._exclusive("startup", commit, "startup"):
                    # Serve what was serving, not whatever the branch says now; fall back
                    # through earlier good commits if it no longer loads, then the head.
                    await self._apply(commit, "startup", "startup")
                return
            except HostError:
                continue  # _exclusive has logged why
        log.error("no configuration could be applied; the host serves nothing until one is")

    async def _finish_branch_move(self) -> None:
        move = self.ledger.state.branch_move
        if not move:
            return
        try:
            outcome = await self._run_io(self.repo.finish_branch_move, move["from"], move["to"])
            log.info("start-up: branch move %s -> %s left by an earlier run: %s",
                     move["from"][:10], move["to"][:10], outcome)
        except HostError as exc:
            log.warning("start-up: could not finish moving the branch to %s: %s",
                        move["to"][:10], exc.message)
        self.ledger.branch_moved()
        await self.ledger.save()

    # --- queries ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        serving = self.registry.serving
        return serving is not None and serving.default is not None

    async def plan(self, ref: str) -> Plan:
        commit = await self._run_io(self.repo.resolve, ref)
        config = await self._run_io(self.loader.load, commit)
        return self._plan(config)

    async def plan_switch(self, name: str) -> Plan:
        """What making ``name`` the default model would change, as ``switch_model`` would
        commit it; nothing is written. The plan's commit is the base the switch starts from."""
        current = self._current_config()
        config = await self._run_io(self.editor.preview, current, "default_model", name,
                                    _model_exists(name), _model_usable(name))
        if config is None:  # already the default: what an apply of the serving commit does
            config = current or await self._run_io(self.loader.load,
                                                   await self._run_io(self.repo.head))
        return self._plan(config)

    # What the host says about itself: see report.py.

    def status(self) -> dict[str, Any]:
        return self.report.status()

    async def commits(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self.report.commits(limit)

    def effective(self) -> dict[str, Any]:
        return self.report.effective(self._require_config())

    def model_health(self, name: str) -> tuple[bool, dict[str, Any]]:
        return self.report.model_health(name)

    # --- commands --------------------------------------------------------------------------
    # ``who`` is recorded in the history and the log; ``author``, when the caller named one,
    # is the git author of a commit the host writes (else the repo's own identity).

    async def apply(self, ref: str, who: str,
                    canary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Apply ``ref``; with ``canary`` (overrides of the ``[canary]`` defaults, ``{}`` for
        none) serve it to a share of requests first, promoted or aborted by what it did."""
        async def run() -> dict[str, Any]:
            with self._exclusive("apply" if canary is None else "canary", ref, who) as busy:
                commit = await self._run_io(self.repo.resolve, ref)
                busy["commit"] = commit
                if canary is not None:
                    return await self.rollout.start(commit, who, canary, self._prepare)
                return await self._apply(commit, who, "apply")
        return await self._detached(run())

    # Deciding on a canary early: not _exclusive, as a canary refuses every other change and
    # the Rollout lets only one end happen.

    async def end_canary(self, who: str, promote: bool) -> dict[str, Any]:
        end = self.rollout.promote if promote else self.rollout.abort
        return await self._detached(end(who))

    async def rollback(self, ref: str | None, who: str, revert: bool = True,
                       author: str | None = None) -> dict[str, Any]:
        """Back to ``ref`` or the previous known-good commit. With ``revert`` (the default) a
        commit with that configuration is written on the branch, so the branch says what
        serves; without, the commit is pinned and automatic apply pauses until the branch
        gets a new commit."""
        async def run() -> dict[str, Any]:
            with self._exclusive("rollback", ref, who) as busy:
                target = await self._rollback_target(ref)
                busy["commit"] = target
                head = await self._run_io(self.repo.head)
                if not revert:
                    return await self._apply(target, who, "rollback", pause_watch_at=head)
                if await self._run_io(self.repo.tree_of, target) == await self._run_io(
                        self.repo.tree_of, head):
                    result = await self._apply(head, who, "rollback")
                else:
                    changed = await self._run_io(self.repo.changed_files, head, target)
                    await self._run_io(self.repo.check_editable, changed)
                    message = (f"Roll back to {target[:10]}\n\nThe configuration of {target} "
                               f"again, as a new commit on top of {head[:10]}.\n\n"
                               f"Requested-by: {who}")
                    new = await self._run_io(lambda: self.repo.write_commit(
                        head, message, self.repo.identity(author), config_from=target))
                    busy["commit"] = new
                    result = await self._apply(new, who, "rollback", move_from=head)
                return {**result, "rolled_back_to": target}
        return await self._detached(run())

    async def reload(self, who: str, commit_working_tree: bool = False,
                     message: str | None = None, author: str | None = None) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            with self._exclusive("reload", None, who) as busy:
                dirty = await self._run_io(self.repo.dirty_files)
                if dirty and not commit_working_tree:
                    raise Conflict(
                        "the config repo has uncommitted changes; commit them, or reload with "
                        "commit_working_tree=true",
                        code=Code.WORKING_TREE_DIRTY,
                        details={"files": dirty},
                    )
                if dirty:
                    await self._run_io(self.loader.load_working_tree)  # vet before committing
                    await self._run_io(lambda: self.repo.commit_working_tree(
                        message or "Commit working-tree changes on reload",
                        self.repo.identity(author)))
                commit = await self._run_io(self.repo.head)
                busy["commit"] = commit
                return await self._apply(commit, who, "reload")
        return await self._detached(run())

    async def switch_model(self, name: str, who: str,
                           author: str | None = None) -> dict[str, Any]:
        """Make ``name`` the default model by a commit, applied before the branch moves."""
        return await self._edit("switch", "default_model", name,
                                f"Switch the default model to {name}", who, author, name)

    async def set_model_setting(self, name: str, key: str, value: Any, who: str,
                                author: str | None = None) -> dict[str, Any]:
        """Change one backend setting of model ``name`` by a commit, like a switch."""
        return await self._edit("set", f"models.{name}.settings.{key}", value,
                                f"Set {key} = {value!r} for model {name}", who, author, name)

    async def reload_model(self, name: str, who: str) -> dict[str, Any]:
        """Load ``name`` again from disk at the serving commit, swapping it like any change."""
        async def run() -> dict[str, Any]:
            with self._exclusive("reload-model", None, who) as busy:
                # Read once the change is ours: a switch that ended meanwhile is not undone.
                serving = self.registry.serving
                if serving is None or name not in serving.generations:
                    known = serving is not None and name in serving.config.models
                    raise (Conflict if known else NotFound)(
                        f"model {name!r} is not loaded",
                        code=Code.MODEL_NOT_LOADED if known else Code.UNKNOWN_MODEL)
                busy["commit"] = serving.commit
                return await self._apply(serving.commit, who, "reload-model",
                                         force_reload={name})
        return await self._detached(run())

    # --- the order of a change --------------------------------------------------------------

    async def _edit(self, action: str, key: str, value: Any, message: str, who: str,
                    author: str | None, model: str) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            with self._exclusive(action, None, who) as busy:
                current = self._current_config()
                edit = await self._run_io(self.editor.edit, current, key, value, message, who,
                                          author, _model_exists(model), _model_usable(model))
                if edit is None and current is not None and self._serves_all(current):
                    log.info("%s by %s: %s is already %r; nothing to do", action, who, key,
                             value)
                    return {"commit": current.commit, "result": "unchanged", "action": action,
                            "message": f"{key} is already {value!r}; nothing changed"}
                if edit is None:  # already set, but not all of it serves: load what is missing
                    commit = current.commit if current else await self._run_io(self.repo.head)
                    return await self._apply(commit, who, action)
                busy["commit"] = edit.commit
                return await self._apply(edit.commit, who, action, config=edit.config,
                                         move_from=edit.base)
        return await self._detached(run())

    async def _prepare(self, commit: str, who: str, action: str,
                       config: HostConfig | None = None, force_reload: Collection[str] = (),
                       beside_only: bool = False) -> tuple[Operation, Plan, Prepared]:
        """Record the attempt; load, check and prepare the commit's snapshot beside the
        serving one. A failure is recorded, published and raised."""
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
                config = await self._run_io(self.loader.load, commit)
            plan = self._plan(config, force_reload)
            prepared = await self.transaction.prepare(config, plan, op, beside_only)
        except Exception as exc:
            try:
                error = await self._failed(exc, commit, who, action, started)
            except BaseException as unsaved:  # the failure could not be recorded either
                op.failed_by(unsaved, still_serving=self._serving_commit())
                raise
            op.phase("failed", reason=error.message, code=error.code,
                     still_serving=self._serving_commit())
            if error is exc:
                raise
            raise error from exc
        return op, plan, prepared

    async def _apply(self, commit: str, who: str, action: str, *,
                     config: HostConfig | None = None, force_reload: Collection[str] = (),
                     pause_watch_at: str | None = None,
                     move_from: str | None = None) -> dict[str, Any]:
        started = time.monotonic()
        op, plan, prepared = await self._prepare(commit, who, action, config, force_reload)
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
        """Record a failed apply; the error the caller gets (``_exclusive`` logs it)."""
        error = exc if isinstance(exc, HostError) else ApplyFailed(
            f"internal error while applying: {type(exc).__name__}: {exc}")
        if not isinstance(exc, HostError):
            log.error("%s of %s failed unexpectedly", action, commit[:10], exc_info=exc)
        duration = time.monotonic() - started
        await self.ledger.failed(commit, who=who, action=action, reason=error.message,
                                 duration_s=duration)
        error.details = _with_commit(error.details, commit)
        return error

    async def _move_branch(self, expected: str, new: str) -> dict[str, Any]:
        """After the commit point: never raises, whatever git says, so the switch happens."""
        try:
            await self._run_io(self.repo.move_branch, expected, new)
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

    async def _watch_apply(self, head: str) -> None:
        serving = self.registry.serving
        canary = serving is not None and serving.config.canary.watch  # as the stable says
        with self._exclusive("canary" if canary else "watch", head, "watch"):
            if canary:
                await self.rollout.start(head, "watch", {}, self._prepare)
            else:
                await self._apply(head, "watch", "watch")

    async def _rollback_target(self, ref: str | None) -> str:
        if ref:
            return await self._run_io(self.repo.resolve, ref)
        target = self.ledger.previous_good()
        if target is None:
            raise Conflict("there is no earlier known-good commit to roll back to",
                           code=Code.NO_ROLLBACK_TARGET)
        return target

    def _plan(self, config: HostConfig, force_reload: Collection[str] = ()) -> Plan:
        serving = self.registry.serving
        plan = make_plan(serving.config if serving else None,
                         serving.generations if serving else (), config, force_reload)
        admissions = self.transaction.memory.check(config, plan, serving)
        return replace(plan, memory=[a.to_dict() for a in admissions])

    def _serves_all(self, config: HostConfig) -> bool:
        serving = self.registry.serving
        return serving is not None and config.loaded_models <= set(serving.generations)

    # --- helpers ---------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self, action: str, commit: str | None,
                   who: str) -> Iterator[dict[str, Any]]:
        """One change at a time; every one that fails, at whatever step, is logged here."""
        self.rollout.refuse_change()
        if self._busy is not None:
            what = self._busy.get("commit") or self._busy["action"]
            raise Conflict(
                f"another apply is in progress ({self._busy['action']} of {what})",
                code=Code.APPLY_IN_PROGRESS,
                details=dict(self._busy),
            )
        self._busy = {"action": action, "commit": commit, "since": time.time()}
        started = time.monotonic()
        try:
            yield self._busy
        except Exception as exc:
            # Refusals before any apply (an unavailable model, an invalid working tree, no
            # rollback target) too: they name the commit that was serving.
            what = self._busy.get("commit") or self._serving_commit() or "-"
            reason = exc.message if isinstance(exc, HostError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s of %s by %s failed after %.2f s: %s", action, what[:10], who,
                        time.monotonic() - started, reason)
            raise
        finally:
            self._busy = None

    async def _detached(self, coro: Awaitable[T]) -> T:
        """Run to completion even if the caller goes away: an apply is never half done."""
        task = self._spawn(coro)
        return await asyncio.shield(task)

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _serving_commit(self) -> str | None:
        serving = self.registry.serving
        return serving.commit if serving else None

    def _current_config(self) -> HostConfig | None:
        serving = self.registry.serving
        return serving.config if serving else None

    def _require_config(self) -> HostConfig:
        config = self._current_config()
        if config is None:
            raise Unavailable("no configuration is applied yet", code=Code.NOT_READY)
        return config


def _model_exists(name: str) -> Callable[[HostConfig], None]:
    def check(config: HostConfig) -> None:
        if name not in config.models:
            raise NotFound(f"unknown model {name!r}", code=Code.UNKNOWN_MODEL,
                           details={"models": sorted(config.models)})
    return check


def _model_usable(name: str) -> Callable[[HostConfig], None]:
    def check(config: HostConfig) -> None:
        reason = config.models[name].unavailable
        if reason and name in config.required_models:
            raise ApplyFailed(f"model {name} is unavailable: {reason}; nothing was changed",
                              code=Code.MODEL_UNAVAILABLE, details={"model": name})
    return check


def _with_commit(details: Any, commit: str) -> dict[str, Any]:
    if isinstance(details, dict):
        return {**details, "commit": commit}
    return {"commit": commit} if details is None else {"commit": commit, "errors": details}
