"""The Ray Serve deployment: each replica builds the framework-free core, applies the commit it
is given as ``user_config`` and answers HTTP through ``front.py``.

Ray imports this on its workers through the application's ``import_path``
(``alltalk_host.ray.deployment:build``), with the ``args`` of the deploy config
(``rollout.FleetSpec.deploy_config``). Everything a replica needs comes from those args, the
same on every node, never from the node's environment: the remote it clones its commits from,
the root folder under which its state, and any relative ``models_dir`` or ``outputs.dir``,
resolve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.experimental import internal_kv
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from ..config.settings import ENV_PREFIX
from ..errors import Code, Unavailable
from ..host import HostOptions
from . import source
from .board import Board
from .front import RayFront
from .replica import Replica, local_settings

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "alltalk"
KV_NAMESPACE = "alltalk-host"


class GcsStore:
    """The board's table in Ray's GCS (its internal key-value store): it lives as long as the
    cluster, whichever nodes come and go, and every replica reaches it."""

    def __init__(self, app: str) -> None:
        self.prefix = f"{app}/"

    def get(self, key: str) -> bytes | None:
        return internal_kv._internal_kv_get(self.prefix + key, namespace=KV_NAMESPACE)

    def put(self, key: str, value: bytes) -> None:
        internal_kv._internal_kv_put(self.prefix + key, value, overwrite=True,
                                     namespace=KV_NAMESPACE)

    def delete(self, key: str) -> None:
        internal_kv._internal_kv_del(self.prefix + key, namespace=KV_NAMESPACE)

    def keys(self, prefix: str) -> list[str]:
        found = internal_kv._internal_kv_list(self.prefix + prefix, namespace=KV_NAMESPACE)
        return [(k.decode() if isinstance(k, bytes) else k)[len(self.prefix):] for k in found]


@serve.deployment(name=DEPLOYMENT_NAME)
class AllTalkReplica:
    async def __init__(self, remote: str, root: str, branch: str = "main", subdir: str = "",
                       plugins: list[str] | None = None, models_dir: str | None = None,
                       outputs_dir: str | None = None,
                       control_token_sha256: str | None = None) -> None:
        context = serve.get_replica_context()
        replica_id = context.replica_id.unique_id
        node = (f"node {ray.get_runtime_context().get_node_id()[:8]} "
                f"({socket.gethostname()}, {ray.util.get_node_ip_address()})")
        # Every node alike: a node's own ALLTALK_ variables (a settings layer on one host)
        # would make its replicas differ from the others', so they are set aside, and said.
        ignored = sorted(k for k in os.environ if k.startswith(ENV_PREFIX + "_"))
        for key in ignored:
            del os.environ[key]
        if ignored:
            log.warning("%s: ignoring this node's %s: a fleet's settings come from its "
                        "commits and the deploy", replica_id, ", ".join(ignored))
        top = Path(root)
        state = top / "replicas" / replica_id
        state.mkdir(parents=True, exist_ok=True)
        # A commit's relative models_dir and outputs.dir resolve against the working folder:
        # the fleet's root, the same path on every node, not wherever Ray started the worker.
        os.chdir(top)
        (state / "local.toml").write_text(local_settings(models_dir, outputs_dir))
        repo = state / "config.git"
        try:
            await asyncio.to_thread(source.sync, remote, repo)
        except source.SourceError as exc:
            raise Unavailable(f"{node}: {exc}", code=Code.FETCH_FAILED) from None
        options = HostOptions(config_repo=repo, state_dir=state, branch=branch, subdir=subdir,
                              local_file=state / "local.toml", plugins=plugins, directed=True)
        self.board = Board(GcsStore(context.app_name))
        self.replica = Replica(options, replica_id, node=node, remote=remote, board=self.board)
        await self.replica.start()
        self.front = RayFront(self.replica, shared_dir=top, board=self.board,
                              token_sha256=control_token_sha256)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.replica.reconfigure(user_config)

    async def __call__(self, request: Request) -> Response:
        return await self.front.handle(request)

    async def check_health(self) -> None:
        await self.replica.report()
        if self.replica.commit is None:
            raise Unavailable("the replica serves no commit", code=Code.NOT_READY)

    async def __del__(self) -> None:
        await self.replica.stop()


def build(args: dict[str, Any]) -> Application:
    """The application builder named by the deploy config's ``import_path``."""
    return AllTalkReplica.bind(**args)
