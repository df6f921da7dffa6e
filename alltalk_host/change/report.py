"""What the host says about itself: status, the commit log with marks, the effective settings,
one model's health. Read-only views over the parts the Controller owns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .. import __version__
from ..config.canary import CANARY
from ..config.repo import CommitInfo, ConfigRepo
from ..config.settings import HostConfig
from ..config.values import flatten
from ..errors import Code, NotFound
from ..plugins import BackendCatalog
from ..serving.generation import GenerationState
from ..serving.registry import ModelRegistry
from .apply import ApplyTransaction
from .ledger import Ledger
from .on_demand import OnDemand
from .watch import BranchWatcher


class HostReport:
    """The host's read-only views of itself. (``testing.Report`` is a plugin's conformance
    report, a name plugin authors use: this one is named for the host.)"""

    def __init__(self, repo: ConfigRepo, registry: ModelRegistry, catalog: BackendCatalog,
                 ledger: Ledger, transaction: ApplyTransaction, watcher: BranchWatcher,
                 io: Executor, busy: Callable[[], dict[str, Any] | None],
                 ready: Callable[[], bool], canary: Callable[[], dict[str, Any]],
                 on_demand: OnDemand) -> None:
        self.repo = repo
        self.registry = registry
        self.catalog = catalog
        self.ledger = ledger
        self.transaction = transaction
        self.watcher = watcher
        self._io = io
        self._busy = busy
        self._ready = ready
        self._canary = canary
        self.on_demand = on_demand

    def model_health(self, name: str) -> tuple[bool, dict[str, Any]]:
        """Whether ``name`` serves now, and what to say about it."""
        serving = self.registry.serving
        gen = serving.generations.get(name) if serving else None
        if gen is not None:
            workers = gen.workers()
            state = _workers_state(workers)
            return state == "ready", {
                "name": name, "state": state, "generation": gen.number, "commit": gen.commit,
                "in_flight": gen.running + gen.waiting, "running": gen.running,
                "waiting": gen.waiting, "isolation": gen.model.workers.isolation,
                "workers": workers}
        if name in self.transaction.loading:
            return False, {"name": name, "state": GenerationState.LOADING}
        if serving is None or name not in serving.config.models:
            raise NotFound(f"unknown model {name!r}", code=Code.UNKNOWN_MODEL)
        model = serving.config.models[name]
        state = "unavailable" if model.unavailable else "not_loaded"
        return False, {"name": name, "state": state, **model.availability,
                       "on_demand": serving.config.loads_on_demand(name)}

    async def commits(self, limit: int = 50) -> list[dict[str, Any]]:
        entries = await asyncio.get_running_loop().run_in_executor(self._io, self.repo.log,
                                                                 limit)
        serving = self.registry.serving
        return marked(entries, self.ledger, serving.commit if serving else None)

    def effective(self, config: HostConfig) -> dict[str, Any]:
        values = config.redacted()
        flat = flatten(values)
        return {
            "commit": config.commit,
            "env": config.env,
            "settings": values,
            "keys": [{"key": k, "value": flat.get(k), "layer": str(config.sources[k])}
                     for k in sorted(flat)],
        }

    def status(self) -> dict[str, Any]:
        serving = self.registry.serving
        config = serving.config if serving else None
        models: list[dict[str, Any]] = []
        if serving:
            models += [{**g.describe(), **serving.config.models[n].availability,
                        **self.on_demand.describe(g, serving.config)}
                       for n, g in serving.generations.items()]
        models += [{**g.describe(), "arm": CANARY} for g in self.registry.canary_only()]
        models += [g.describe() for g in self.registry.draining]
        models += [{"name": n, "state": GenerationState.LOADING, **info}
                   for n, info in self.transaction.loading.items()]
        if config:
            shown = {m["name"] for m in models}
            models += [{"name": n, "backend": m.backend, "state": "configured", **m.availability,
                        "on_demand": config.loads_on_demand(n)}
                       for n, m in sorted(config.models.items()) if n not in shown]
        return {
            "version": __version__,
            "applied_commit": self.ledger.applied,
            "attempted_commit": self.ledger.state.attempted,
            "serving_commit": serving.commit if serving else None,
            "env": config.env if config else None,
            "default_model": config.default_model if config else None,
            "ready": self._ready(),
            "apply_in_progress": self._busy(),
            "canary": self._canary(),
            "models": models,
            "on_demand": {"enabled": config.on_demand.enabled if config else None,
                          "loading": self.on_demand.loading(), "loads": self.on_demand.loads,
                          "failures": self.on_demand.failures,
                          "unloads": dict(self.on_demand.unloads)},
            "plugins": [p.to_dict() for p in self.catalog.plugins],
            "watch": self.watcher.describe(),
            "config_repo": {"path": str(self.repo.path), "branch": self.repo.branch,
                            "subdir": self.repo.subdir},
            "last_failure": self.ledger.last_failure(),
            "history": self.ledger.recent(20),
        }



def _workers_state(workers: list[dict[str, Any]]) -> str:
    """A serving model's health by its workers: ready while one takes calls (or it runs
    inline), restarting while one is on its way back, else failed (its workers gave up)."""
    states = {w.get("state") for w in workers}
    if not workers or "ready" in states:
        return "ready"
    return "restarting" if states & {"restarting", "loading"} else "failed"


def marked(entries: list[CommitInfo], ledger: Ledger, serving: str | None) -> list[dict[str, Any]]:
    """The log's commits with the ledger's marks: what ``config log`` shows for one host, and
    ``ray log`` for a fleet (its own ledger, the commit it rolled out)."""
    out = []
    for info in entries:
        entry: dict[str, Any] = info.to_dict()
        entry["applied"] = info.hash == ledger.applied
        entry["serving"] = info.hash == serving
        entry["known_good"] = ledger.is_known_good(info.hash)
        failure = ledger.failure(info.hash)
        entry["failed"] = failure is not None
        if failure:
            entry["failure_reason"] = failure["reason"]
        out.append(entry)
    return out
