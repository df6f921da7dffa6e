"""Applying configuration: plan, apply, roll back, reload, switch the default model, watch.

The Controller owns the transaction that takes the host from one commit to another. It is the
only writer of the serving snapshot and of the persisted state, and runs one apply at a time.
Git and config building run on one I/O thread; model loading on the registry's loading threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomlkit

from . import __version__
from .config.repo import ConfigRepo, actor
from .config.settings import ConfigLoader, HostConfig, flatten, repo_layer
from .errors import ApplyFailed, Conflict, HostError, NotFound
from .loading import load_model
from .plan import Plan, make_plan
from .plugins import BackendCatalog
from .registry import Generation, ModelRegistry, Serving
from .state import HostState, StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class WatchStatus:
    enabled: bool = False
    remote: str = ""
    last_checked: float | None = None
    branch_head: str | None = None
    last_error: str | None = None


class Controller:
    def __init__(self, repo: ConfigRepo, loader: ConfigLoader, store: StateStore,
                 registry: ModelRegistry, catalog: BackendCatalog, cache_dir: Path) -> None:
        self.repo = repo
        self.loader = loader
        self.store = store
        self.registry = registry
        self.catalog = catalog
        self.cache_dir = cache_dir
        self.state: HostState = store.load()
        self.watch = WatchStatus()
        self.loading: dict[str, dict[str, Any]] = {}  # models being loaded by the running apply
        self._busy: dict[str, Any] | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="alltalk-git")
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin serving in the background: the last good commit, then watch the branch."""
        self._spawn(self._startup())
        self._spawn(self._watch_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._io.shutdown(wait=True)
        self.repo.close()

    async def _startup(self) -> None:
        if self.state.applied:
            # Serve what was serving, not whatever the branch says now; fall back through
            # earlier good commits if it no longer loads (say, a model file was removed).
            candidates = [self.state.applied] + [
                c for c in reversed(self.state.known_good) if c != self.state.applied
            ]
        else:
            candidates = [await self._run_io(self.repo.head)]
        for commit in candidates:
            try:
                with self._exclusive("startup", commit):
                    await self._apply(commit, "startup", "startup")
                return
            except HostError as exc:
                log.error("start-up apply of %s failed: %s", commit[:10], exc.message)
        log.error("no configuration could be applied; the host serves nothing until one is")

    # --- queries ---------------------------------------------------------------------------

    async def plan(self, ref: str) -> Plan:
        commit = await self._run_io(self.repo.resolve, ref)
        config = await self._run_io(self.loader.load, commit)
        return make_plan(self._current_config(), config)

    async def commits(self, limit: int = 50) -> list[dict[str, Any]]:
        log_entries = await self._run_io(self.repo.log, limit)
        serving = self.registry.serving
        out = []
        for info in log_entries:
            entry = info.to_dict()
            entry["applied"] = info.hash == self.state.applied
            entry["serving"] = serving is not None and info.hash == serving.commit
            entry["known_good"] = info.hash in self.state.known_good
            failure = self.state.failed.get(info.hash)
            entry["failed"] = failure is not None
            if failure:
                entry["failure_reason"] = failure["reason"]
            out.append(entry)
        return out

    def effective(self) -> dict[str, Any]:
        config = self._require_config()
        values = config.redacted()
        flat = flatten(values)
        return {
            "commit": config.commit,
            "env": config.env,
            "settings": values,
            "keys": [
                {"key": k, "value": flat.get(k), "layer": config.sources.get(k, "default")}
                for k in sorted(flat)
            ],
        }

    def status(self) -> dict[str, Any]:
        serving = self.registry.serving
        config = serving.config if serving else None
        models: list[dict[str, Any]] = []
        if serving:
            models += [g.describe() for g in serving.generations.values()]
        models += [g.describe() for g in self.registry.draining]
        models += [{"name": n, "state": "loading", **info} for n, info in self.loading.items()]
        if config:
            shown = {m["name"] for m in models}
            models += [
                {"name": n, "backend": m.backend, "state": "configured"}
                for n, m in sorted(config.models.items()) if n not in shown
            ]
        last_failure = next(
            (h for h in reversed(self.state.history) if h["result"] == "failed"), None
        )
        return {
            "version": __version__,
            "applied_commit": self.state.applied,
            "attempted_commit": self.state.attempted,
            "serving_commit": serving.commit if serving else None,
            "env": config.env if config else None,
            "default_model": config.default_model if config else None,
            "ready": self.ready,
            "apply_in_progress": self._busy,
            "models": models,
            "plugins": [p.to_dict() for p in self.catalog.plugins],
            "watch": {**self.watch.__dict__, "paused_at": self.state.watch_paused_at},
            "config_repo": {"path": str(self.repo.path), "branch": self.repo.branch,
                            "subdir": self.repo.subdir},
            "last_failure": last_failure,
            "history": self.state.history[-20:],
        }

    @property
    def ready(self) -> bool:
        serving = self.registry.serving
        return serving is not None and serving.default is not None

    # --- commands --------------------------------------------------------------------------

    async def apply(self, ref: str, who: str) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            with self._exclusive("apply", ref) as busy:
                commit = await self._run_io(self.repo.resolve, ref)
                busy["commit"] = commit
                return await self._apply(commit, who, "apply")
        return await self._detached(run())

    async def rollback(self, ref: str | None, who: str) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            with self._exclusive("rollback", ref) as busy:
                if ref:
                    target = await self._run_io(self.repo.resolve, ref)
                else:
                    target = self.state.previous_good()
                    if target is None:
                        raise Conflict("there is no earlier known-good commit to roll back to",
                                       code="no_rollback_target")
                busy["commit"] = target
                # Pause automatic apply until the branch gets a commit it does not have now.
                head = await self._run_io(self.repo.head)
                return await self._apply(target, who, "rollback", pause_watch_at=head)
        return await self._detached(run())

    async def reload(self, who: str, commit_working_tree: bool = False,
                     message: str | None = None) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            with self._exclusive("reload", None) as busy:
                dirty = await self._run_io(self.repo.dirty_files)
                if dirty and not commit_working_tree:
                    raise Conflict(
                        "the config repo has uncommitted changes; commit them, or reload with "
                        "commit_working_tree=true",
                        code="working_tree_dirty",
                        details={"files": dirty},
                    )
                if dirty:
                    await self._run_io(self.loader.load_working_tree)  # vet before committing
                    await self._run_io(
                        self.repo.commit_working_tree,
                        message or "Commit working-tree changes on reload",
                        actor(who),
                    )
                commit = await self._run_io(self.repo.head)
                busy["commit"] = commit
                return await self._apply(commit, who, "reload")
        return await self._detached(run())

    async def switch_model(self, name: str, who: str) -> dict[str, Any]:
        """Make ``name`` the default model by writing a commit, then apply that commit."""
        async def run() -> dict[str, Any]:
            with self._exclusive("switch", None) as busy:
                commit = await self._run_io(
                    self._commit_setting, "default_model", name,
                    f"Switch the default model to {name}", who, _model_check(name))
                busy["commit"] = commit
                return await self._apply(commit, who, "switch")
        return await self._detached(run())

    async def set_model_setting(self, name: str, key: str, value: Any,
                                who: str) -> dict[str, Any]:
        """Change one backend setting of model ``name`` by a commit, then apply it."""
        async def run() -> dict[str, Any]:
            with self._exclusive("set", None) as busy:
                commit = await self._run_io(
                    self._commit_setting, f"models.{name}.settings.{key}", value,
                    f"Set {key} = {value!r} for model {name}", who, _model_check(name))
                busy["commit"] = commit
                return await self._apply(commit, who, "set")
        return await self._detached(run())

    async def reload_model(self, name: str, who: str) -> dict[str, Any]:
        """Load ``name`` again from disk at the serving commit, swapping it like any change."""
        serving = self.registry.serving
        if serving is None or name not in serving.generations:
            known = serving is not None and name in serving.config.models
            raise (Conflict if known else NotFound)(
                f"model {name!r} is not loaded", code="model_not_loaded" if known else
                "unknown_model")

        async def run() -> dict[str, Any]:
            with self._exclusive("reload-model", serving.commit):
                return await self._apply(serving.commit, who, "reload-model",
                                         force_reload={name})
        return await self._detached(run())

    async def check_branch(self) -> None:
        """One look at the branch (after fetching the remote, when set): apply a new head."""
        serving = self.registry.serving
        if serving is None or not serving.config.watch.enabled:
            self.watch.enabled = False
            return
        settings = serving.config.watch
        self.watch.enabled, self.watch.remote = True, settings.remote
        try:
            if settings.remote:
                head = await self._run_io(self.repo.fetch_and_fast_forward, settings.remote)
            else:
                head = await self._run_io(self.repo.head)
        except HostError as exc:
            self.watch.last_error = exc.message
            return
        self.watch.last_checked, self.watch.branch_head = time.time(), head
        self.watch.last_error = None
        if head == self.state.applied or head in self.state.failed or self._busy:
            return  # a failed commit is never retried automatically
        if head == self.state.watch_paused_at:
            return
        self.state.watch_paused_at = None
        try:
            with self._exclusive("watch", head):
                await self._apply(head, "watch", "watch")
        except HostError as exc:
            log.error("watch: applying %s failed: %s", head[:10], exc.message)

    # --- the transaction -------------------------------------------------------------------

    async def _apply(self, commit: str, who: str, action: str,
                     force_reload: Collection[str] = (),
                     pause_watch_at: str | None = None) -> dict[str, Any]:
        started = time.monotonic()
        self.state.attempted = commit
        await self._save()
        try:
            config = await self._run_io(self.loader.load, commit)
            plan = make_plan(self._current_config(), config, force_reload)
            serving = await self._prepare(config, plan)
        except Exception as exc:
            error = exc if isinstance(exc, HostError) else ApplyFailed(
                f"internal error while applying: {type(exc).__name__}: {exc}")
            if not isinstance(exc, HostError):
                log.exception("apply of %s failed unexpectedly", commit[:10])
            self.state.mark_failed(commit, error.message)
            self.state.record(commit=commit, actor=who, action=action, result="failed",
                              duration_s=time.monotonic() - started, reason=error.message)
            await self._save()
            error.details = _with_commit(error.details, commit)
            if error is exc:
                raise
            raise error from exc
        duration = time.monotonic() - started
        self.state.mark_applied(commit)
        if pause_watch_at is not None:
            self.state.watch_paused_at = pause_watch_at
        self.state.record(commit=commit, actor=who, action=action, result="applied",
                          duration_s=duration)
        try:
            await self._save()
        finally:
            # Published last, with nothing awaited after it: whoever sees the new snapshot
            # (ready, a new commit serving) can send the next command without a 409.
            self.registry.switch(serving)
            self.registry.release_holds()
        log.info("%s: applied %s in %.2f s (load %s, reload %s, unload %s)", action, commit[:10],
                 duration, plan.load, plan.reload, plan.unload)
        return {"commit": commit, "result": "applied", "action": action,
                "duration_s": round(duration, 4), "plan": plan.to_dict()}

    async def _prepare(self, config: HostConfig, plan: Plan) -> Serving:
        """Load what changes beside what serves; the snapshot that switches everything at once.

        Holds taken for low-memory swaps stay until the caller has switched to it.
        """
        current = self.registry.serving
        fresh: dict[str, Generation] = {}
        unloaded_first: dict[str, Generation] = {}
        try:
            for name in plan.reload:
                if config.models[name].low_memory_swap and current is not None:
                    # Not enough memory for two copies: its requests wait while it is replaced.
                    old = current.generations[name]
                    self.registry.hold(name)
                    await self.registry.drain(old, config.drain_deadline_s, config.commit)
                    unloaded_first[name] = old
            for name in [*plan.load, *plan.reload]:
                fresh[name] = await self._load(config.models[name], config)
        except BaseException:
            for gen in fresh.values():
                await self.registry.unload(gen)
            if unloaded_first and current is not None:
                await self._restore(current, unloaded_first)
            self.registry.release_holds()
            raise
        keep = {n: current.generations[n] for n in plan.keep} if current else {}
        return Serving(config, {**keep, **fresh})

    async def _load(self, model: Any, config: HostConfig) -> Generation:
        self.loading[model.name] = {"backend": model.backend, "commit": config.commit,
                                    "since": time.time()}
        try:
            instances = await asyncio.get_running_loop().run_in_executor(
                self.registry.loading, load_model, model, config, self.catalog, self.cache_dir)
        finally:
            self.loading.pop(model.name, None)
        return Generation(model, self.registry.next_number(model.name), config.commit, instances)

    async def _restore(self, current: Serving, unloaded: dict[str, Generation]) -> None:
        """After a failed unload-first swap, bring the old definitions back."""
        restored = dict(current.generations)
        for name, old in unloaded.items():
            try:
                restored[name] = await self._load(old.model, current.config)
            except HostError as exc:
                restored.pop(name, None)
                log.error("model %s could not be restored after a failed swap: %s",
                          name, exc.message)
        self.registry.switch(Serving(current.config, restored))

    # --- helpers ---------------------------------------------------------------------------

    def _commit_setting(self, key: str, value: Any, message: str, who: str,
                        check: Callable[[HostConfig], None] | None = None) -> str:
        """Runs on the I/O thread: set ``key`` (dotted) in the repo file and section that
        define it, vet the result like any commit, and commit it. Returns the commit to apply
        (the branch head when the value is already set)."""
        head = self.repo.head()
        config = self.loader.load(head)
        if check is not None:
            check(config)
        flat = flatten(config.values)
        if key in flat and flat[key] == value:
            return head
        layer = _defining_layer(config.sources, key)
        where = repo_layer(layer)
        if where is None:
            raise Conflict(
                f"{key} is set by the {layer} layer, which overrides the repo; remove it "
                "there to change it through the API",
                code="setting_overridden",
            )
        filename, section = where
        doc = tomlkit.parse(self.repo.read_file(head, filename))
        table: Any = doc
        for part in [section, *key.split(".")[:-1]]:
            if part not in table:
                table[part] = tomlkit.table()
            table = table[part]
        table[key.rsplit(".", 1)[-1]] = value
        content = tomlkit.dumps(doc)
        vetted = self.loader.load(head, replace={filename: content})
        if flatten(vetted.values).get(key) != value:
            raise Conflict(f"{key} is overridden by a higher layer", code="setting_overridden")
        return self.repo.commit_file(filename, content, message, actor(who),
                                     expected_head=head)

    @contextmanager
    def _exclusive(self, action: str, commit: str | None) -> Iterator[dict[str, Any]]:
        if self._busy is not None:
            what = self._busy.get("commit") or self._busy["action"]
            raise Conflict(
                f"another apply is in progress ({self._busy['action']} of {what})",
                code="apply_in_progress",
                details=dict(self._busy),
            )
        self._busy = {"action": action, "commit": commit, "since": time.time()}
        try:
            yield self._busy
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

    async def _watch_loop(self) -> None:
        while True:
            serving = self.registry.serving
            await asyncio.sleep(serving.config.watch.interval_s if serving else 1.0)
            try:
                await self.check_branch()
            except Exception:
                log.exception("watch check failed")

    def _current_config(self) -> HostConfig | None:
        serving = self.registry.serving
        return serving.config if serving else None

    def _require_config(self) -> HostConfig:
        config = self._current_config()
        if config is None:
            raise HostError("no configuration is applied yet", code="not_ready", status=503)
        return config

    async def _save(self) -> None:
        # Encoded here, where the state changes; written (with fsync) on the I/O thread.
        await self._run_io(self.store.write, self.store.encode(self.state))


def _model_check(name: str) -> Callable[[HostConfig], None]:
    def check(config: HostConfig) -> None:
        if name not in config.models:
            raise NotFound(f"unknown model {name!r}", code="unknown_model",
                           details={"models": sorted(config.models)})
    return check


def _defining_layer(sources: dict[str, str], key: str) -> str:
    """The layer defining ``key``, or for a new key the repo layer of its nearest sibling."""
    if key in sources:
        return sources[key]
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:depth]) + "."
        layers = {layer for k, layer in sources.items() if k.startswith(prefix)}
        repo = sorted(layer for layer in layers if layer.startswith("repo:"))
        if repo:
            return repo[-1]
    return sources.get(parts[0], "repo:settings.toml[default]")


def _with_commit(details: Any, commit: str) -> dict[str, Any]:
    if isinstance(details, dict):
        return {**details, "commit": commit}
    return {"commit": commit} if details is None else {"commit": commit, "errors": details}
