"""One replica of the fleet: the core (``Host``) told its commit from outside, and what it says
about how that went. No Ray here, so its rules are tested without a cluster.

Ray Serve hands every replica the deployment's ``user_config`` (``{"commit": ...}``) at start
and at each rollout, and calls ``reconfigure`` with it. The commit is applied with the core's
own transaction (load beside, warm up, check, switch), whose slow parts run on the core's
threads, so requests already on this replica keep being served meanwhile. A commit that fails
leaves the replica serving the one it had, and it says so in its status; it does not raise,
because Ray would then replace the replica, dropping what it serves. Only a replica that has
nothing to keep (its first commit failed) raises, so Ray reports the deployment as failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BadRequest, Code, HostError
from ..host import Host, HostOptions
from . import source
from .board import Board

log = logging.getLogger(__name__)


def local_settings(models_dir: str | None, outputs_dir: str | None) -> str:
    """A replica's host-local layer (TOML): the fleet's folders, which win over a commit's.
    Relative ones resolve against the fleet's root, the replica's working folder."""
    lines = [f"models_dir = {json.dumps(models_dir)}"] if models_dir else []
    if outputs_dir:
        lines += ["[outputs]", f"dir = {json.dumps(outputs_dir)}"]
    return "\n".join(lines) + "\n"


class ReplicaState:
    STARTING = "starting"  # no commit applied yet
    SERVING = "serving"  # serves the commit it was last told
    FAILED = "failed"  # the commit it was last told failed; it serves the one before


@dataclass(frozen=True)
class Failure:
    commit: str
    reason: str
    code: str
    time: float


class Replica:
    def __init__(self, options: HostOptions, replica_id: str, host: Host | None = None, *,
                 node: str = "", remote: str | None = None, board: Board | None = None) -> None:
        """``node`` names the machine in statuses and refusals; ``remote`` is fetched into
        the host's config repo when told a commit it lacks; ``board`` is where the replica
        reports its status for the whole fleet to see."""
        if not options.directed:
            raise ValueError("a replica's host must be directed (HostOptions.directed)")
        self.id = replica_id
        self.node = node
        self.remote = remote
        self.board = board
        self.host = host or Host(options)
        self.target: str | None = None  # the commit it was last told
        self.last_error: Failure | None = None  # kept after a later success, for the status
        self._failed = False  # the last commit it was told failed

    async def start(self) -> None:
        await self.host.start()
        await self.report()

    async def stop(self) -> None:
        if self.board is not None:
            await asyncio.to_thread(self.board.forget, self.id)
        await self.host.begin_shutdown()
        await self.host.stop()

    async def report(self) -> None:
        """Tell the fleet's board how this replica is (at start, after each commit, and at
        each of Ray's health checks, so generations loaded on demand show too)."""
        if self.board is not None:
            await asyncio.to_thread(self.board.report, self.status())

    @property
    def commit(self) -> str | None:
        serving = self.host.registry.serving
        return serving.commit if serving else None

    @property
    def state(self) -> str:
        if self.commit is None:
            return ReplicaState.STARTING
        if self._failed:
            return ReplicaState.FAILED
        return ReplicaState.SERVING

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve ``user_config["commit"]``; on failure keep serving the commit it had."""
        commit = user_config.get("commit") if isinstance(user_config, Mapping) else None
        if not isinstance(commit, str) or not commit:
            raise BadRequest(f"user_config must be {{'commit': HASH}}, not {user_config!r}",
                             code=Code.BAD_REQUEST)
        self.target = commit
        try:
            await self._fetch(commit)
            await self.host.control.apply(commit, f"ray:{self.id}")
        except HostError as exc:
            where = f"on {self.node}: " if self.node else ""
            self.last_error = Failure(commit, where + exc.message, str(exc.code), time.time())
            self._failed = True
            await self.report()
            if self.commit is None:
                raise  # nothing to keep serving: let Ray say the replica failed to start
            log.warning("replica %s: commit %s failed, still serving %s: %s", self.id,
                        commit[:10], (self.commit or "-")[:10], exc.message)
            return
        self._failed = False
        self.target = self.commit  # the full hash, however it was named
        await self.report()
        log.info("replica %s serves %s", self.id, (self.commit or "-")[:10])

    async def _fetch(self, commit: str) -> None:
        """Fetch the fleet's remote into this replica's repo when it lacks ``commit``."""
        repo = self.host.control.repo
        if self.remote is None or await asyncio.to_thread(repo.exists, commit):
            return
        try:
            await asyncio.to_thread(source.sync, self.remote, repo.path)
        except source.SourceError as exc:
            raise HostError(str(exc), code=Code.FETCH_FAILED) from None

    def status(self) -> dict[str, Any]:
        """What ``alltalk-host ray status`` shows per replica."""
        serving = self.host.registry.serving
        return {
            "replica": self.id,
            "node": self.node,
            "state": self.state,
            "commit": self.commit,
            "target": self.target,
            "generations": ({name: gen.number for name, gen in serving.generations.items()}
                            if serving else {}),
            "last_error": asdict(self.last_error) if self.last_error else None,
        }
