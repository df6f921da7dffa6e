"""The Controller: what the front-ends call to change or inspect configuration.

It decides which commit each command applies and runs one change at a time; the pieces of a
change live elsewhere: the ApplySequence takes a commit through the order of an apply
(``sequence.py``), the ApplyTransaction loads and checks models (``apply.py``), the Ledger
records and saves state (``ledger.py``), the SettingsEditor writes setting commits
(``config/editor.py``), the BranchWatcher follows the branch (``watch.py``), the Rollout starts
and ends canaries (``rollout.py``). A second change while one runs gets 409
``apply_in_progress``, and any change during a canary 409 ``canary_in_progress``.

Each command reads as its steps: find the commit (git on the one I/O thread, a hop per step
rather than per git call), name it as the change's commit, apply it. Model loading runs on the
registry's threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..config.editor import SettingsEditor
from ..config.loader import ConfigLoader
from ..config.repo import ConfigRepo
from ..config.settings import HostConfig
from ..errors import Code, Conflict, HostError, NotFound, Unavailable
from ..events import EventBus
from ..plugins import BackendCatalog
from ..serving.arms import Arms
from ..serving.registry import ModelRegistry
from .apply import ApplyTransaction
from .ledger import Ledger
from .on_demand import OnDemand
from .plan import Plan
from .repo_steps import model_exists, model_usable, reload_head, write_revert
from .report import HostReport
from .rollout import Rollout
from .sequence import ApplySequence
from .state import StateStore
from .voice_steps import edit_files, removal_files, upload_files
from .watch import BranchWatcher

log = logging.getLogger(__name__)
T = TypeVar("T")
# What the change that holds the lock is: action, commit (once known), since. Shown in the
# status and in the 409 of a change that has to wait.
Busy = dict[str, Any]


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
        self.sequence = ApplySequence(repo, loader, registry, self.ledger, self.transaction,
                                      events, self._io, self._spawn)
        # The first half of an apply: a canary's start is an apply that stops after it.
        self._prepare = self.sequence.prepare
        self.rollout = Rollout(registry, self.ledger, arms or Arms(), events, self._spawn)
        self.on_demand = OnDemand(registry, self.transaction, busy=self._changing)
        registry.on_demand = self.on_demand.ensure
        self.watcher = BranchWatcher(
            repo, self.ledger, registry, self._io, apply=self._watch_apply,
            busy=self._changing,
            settings_of=loader.watch_settings)
        self._busy: Busy | None = None
        self._abandoned = False  # shutting down: no change starts, none in progress applies
        self.report = HostReport(repo, registry, catalog, self.ledger, self.transaction,
                                 self.watcher, self._io, busy=lambda: self._busy,
                                 ready=lambda: self.ready, canary=self.rollout.describe,
                                 on_demand=self.on_demand)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, choose_commit: bool = True) -> None:
        """Begin serving in the background: the last good commit, then watch the branch.

        Without ``choose_commit`` (a fleet member, told its commit by whoever rolls the fleet
        out) nothing is applied and the branch is not watched: two replicas that each chose
        would serve different commits."""
        self.on_demand.start()
        if not choose_commit:
            await self._run_io(self.loader.clear_work_dir)
            return
        self._spawn(self._startup())
        self._spawn(self.watcher.run())

    def abandon(self) -> None:
        """At shutdown, before anything waits: stop the watcher, refuse every change from now
        on, and cancel the one in progress (with the start-up apply). A change cancelled
        before its commit point is never applied; its load, if it still runs, ends when its
        worker is killed (``WorkerGroup.kill_loading``) or the host's process does."""
        self._abandoned = True
        self.watcher.close()
        self.on_demand.stop()
        for task in list(self._tasks):
            task.cancel()

    async def stop(self) -> None:
        self.watcher.close()
        self.on_demand.stop()
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
        await self.sequence.finish_branch_move()
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
                    await self.sequence.apply(commit, "startup", "startup")
                return
            except HostError:
                continue  # _exclusive has logged why
        log.error("no configuration could be applied; the host serves nothing until one is")

    # --- queries ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        serving = self.registry.serving
        return serving is not None and serving.default is not None

    async def plan(self, ref: str) -> Plan:
        config = await self._run_io(lambda: self.loader.load(self.repo.resolve(ref)))
        return self.sequence.plan(config)

    async def plan_switch(self, name: str) -> Plan:
        """What making ``name`` the default model would change, as ``switch_model`` would
        commit it; nothing is written. The plan's commit is the base the switch starts from."""
        current = self._current_config()
        config = await self._run_io(self.editor.preview, current, "default_model", name,
                                    model_exists(name), model_usable(name))
        if config is None:  # already the default: what an apply of the serving commit does
            config = current or await self._run_io(
                lambda: self.loader.load(self.repo.head()))
        return self.sequence.plan(config)

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
    # is the git author of a commit the host writes (else the repo's own identity). Each
    # names its commit in ``busy`` as soon as it knows it.

    async def apply(self, ref: str, who: str,
                    canary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Apply ``ref``; with ``canary`` (overrides of the ``[canary]`` defaults, ``{}`` for
        none) serve it to a share of requests first, promoted or aborted by what it did."""
        async def steps(busy: Busy) -> dict[str, Any]:
            commit = busy["commit"] = await self._run_io(self.repo.resolve, ref)
            if canary is not None:
                return await self.rollout.start(commit, who, canary, self._prepare)
            return await self.sequence.apply(commit, who, "apply")
        return await self._command("apply" if canary is None else "canary", ref, who, steps)

    # Deciding on a canary early: not a _command, as a canary refuses every other change and
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
        async def steps(busy: Busy) -> dict[str, Any]:
            target = busy["commit"] = await self._rollback_target(ref)
            head = await self._run_io(self.repo.head)
            if not revert:
                return await self.sequence.apply(target, who, "rollback", pause_watch_at=head)
            new = await self._run_io(write_revert, self.repo, head, target, who, author)
            if new is None:  # the head has the target's configuration already
                result = await self.sequence.apply(head, who, "rollback")
            else:
                busy["commit"] = new
                result = await self.sequence.apply(new, who, "rollback", move_from=head)
            return {**result, "rolled_back_to": target}
        return await self._command("rollback", ref, who, steps)

    async def reload(self, who: str, commit_working_tree: bool = False,
                     message: str | None = None, author: str | None = None) -> dict[str, Any]:
        async def steps(busy: Busy) -> dict[str, Any]:
            commit = busy["commit"] = await self._run_io(reload_head, self.repo, self.loader,
                                                     commit_working_tree, message, author)
            return await self.sequence.apply(commit, who, "reload")
        return await self._command("reload", None, who, steps)

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

    async def put_voice(self, name: str, wav: bytes, fields: Mapping[str, str | None],
                        who: str, author: str | None = None, replace: bool = False
                        ) -> dict[str, Any]:
        """Add voice ``name`` to the library (or replace its sample) by a commit, applied
        before the branch moves, like a switch. ``wav`` is the normalised sample."""
        verb = "Replace" if replace else "Add"
        return await self._files_edit(
            "voice-replace" if replace else "voice-add",
            f"{verb} the voice {name}",
            lambda config: upload_files(self.repo, config, name, wav, fields, replace), who,
            author)

    async def edit_voice(self, name: str, new_name: str | None,
                         fields: Mapping[str, str | None], who: str,
                         author: str | None = None) -> dict[str, Any]:
        """Rename voice ``name`` and/or change its fields by a commit."""
        what = f"Rename the voice {name} to {new_name}" if new_name and new_name != name \
            else f"Edit the voice {name}"
        return await self._files_edit(
            "voice-edit", what,
            lambda config: edit_files(self.repo, config, name, new_name, fields), who, author)

    async def remove_voice(self, name: str, who: str,
                           author: str | None = None) -> dict[str, Any]:
        """Remove voice ``name`` from the library (not from the history) by a commit."""
        return await self._files_edit("voice-remove", f"Remove the voice {name}",
                                      lambda config: removal_files(self.repo, config, name),
                                      who, author)

    async def _files_edit(self, action: str, message: str,
                          files: Callable[[HostConfig], Mapping[str, str | bytes | None]],
                          who: str, author: str | None) -> dict[str, Any]:
        async def steps(busy: Busy) -> dict[str, Any]:
            def write() -> Any:
                current = self._current_config()
                config = current if current is not None else self.loader.load(self.repo.head())
                return self.editor.edit_files(current, files(config), message, who, author)

            edit = await self._run_io(write)
            busy["commit"] = edit.commit
            return await self.sequence.apply(edit.commit, who, action, config=edit.config,
                                             move_from=edit.base)
        return await self._command(action, None, who, steps)

    async def reload_model(self, name: str, who: str) -> dict[str, Any]:
        """Load ``name`` again from disk at the serving commit, swapping it like any change."""
        async def steps(busy: Busy) -> dict[str, Any]:
            # Read once the change is ours: a switch that ended meanwhile is not undone.
            serving = self.registry.serving
            if serving is None or name not in serving.generations:
                known = serving is not None and name in serving.config.models
                raise (Conflict if known else NotFound)(
                    f"model {name!r} is not loaded",
                    code=Code.MODEL_NOT_LOADED if known else Code.UNKNOWN_MODEL)
            busy["commit"] = serving.commit
            return await self.sequence.apply(serving.commit, who, "reload-model",
                                             force_reload={name})
        return await self._command("reload-model", None, who, steps)

    async def _edit(self, action: str, key: str, value: Any, message: str, who: str,
                    author: str | None, model: str) -> dict[str, Any]:
        async def steps(busy: Busy) -> dict[str, Any]:
            current = self._current_config()
            edit = await self._run_io(self.editor.edit, current, key, value, message, who,
                                      author, model_exists(model), model_usable(model))
            if edit is not None:
                busy["commit"] = edit.commit
                return await self.sequence.apply(edit.commit, who, action, config=edit.config,
                                                 move_from=edit.base)
            if current is not None and self._serves_all(current):
                log.info("%s by %s: %s is already %r; nothing to do", action, who, key, value)
                return {"commit": current.commit, "result": "unchanged", "action": action,
                        "message": f"{key} is already {value!r}; nothing changed"}
            # Already set, but not all of it serves: load what is missing.
            commit = current.commit if current else await self._run_io(self.repo.head)
            return await self.sequence.apply(commit, who, action)
        return await self._command(action, None, who, steps)

    async def _watch_apply(self, head: str) -> None:
        # Not detached: its caller, the watcher, goes away only when the host stops.
        serving = self.registry.serving
        canary = serving is not None and serving.config.canary.watch  # as the stable says
        with self._exclusive("canary" if canary else "watch", head, "watch"):
            if canary:
                await self.rollout.start(head, "watch", {}, self._prepare)
            else:
                await self.sequence.apply(head, "watch", "watch")

    async def _rollback_target(self, ref: str | None) -> str:
        if ref:
            return await self._run_io(self.repo.resolve, ref)
        target = self.ledger.previous_good()
        if target is None:
            raise Conflict("there is no earlier known-good commit to roll back to",
                           code=Code.NO_ROLLBACK_TARGET)
        return target

    # --- one change at a time ---------------------------------------------------------------

    async def _command(self, action: str, ref: str | None, who: str,
                       steps: Callable[[Busy], Awaitable[T]]) -> T:
        """A caller's change: ``steps`` while it holds the one change lock, detached."""
        async def run() -> T:
            with self._exclusive(action, ref, who) as busy:
                return await steps(busy)
        return await self._detached(run())

    @contextmanager
    def _exclusive(self, action: str, commit: str | None, who: str) -> Iterator[Busy]:
        """One change at a time; every one that fails, at whatever step, is logged here."""
        if self._abandoned:
            raise Unavailable("the host is shutting down", code=Code.SHUTTING_DOWN)
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
        """Run to completion even if the caller goes away: an apply is never half done. One
        abandoned at shutdown answers its caller 503 ``shutting_down``."""
        task = self._spawn(coro)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._abandoned and task.cancelled() and not (current and current.cancelling()):
                raise Unavailable("the host is shutting down: this change was abandoned and "
                                  "not applied", code=Code.SHUTTING_DOWN) from None
            raise

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # --- what serves -----------------------------------------------------------------------

    def _changing(self) -> bool:
        """A change or a canary is in progress."""
        return self._busy is not None or self.rollout.running is not None

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

    def _serves_all(self, config: HostConfig) -> bool:
        serving = self.registry.serving
        return serving is not None and config.loaded_models <= set(serving.generations)

