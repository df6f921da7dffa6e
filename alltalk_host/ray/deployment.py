"""The Ray Serve deployment: each replica builds the framework-free core, applies the commit it
is given as ``user_config`` and answers HTTP through ``front.py``.

Ray imports this on its workers through the application's ``import_path``
(``alltalk_host.ray.deployment:build``), with the ``args`` of the deploy config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from ..errors import Code, Unavailable
from ..host import HostOptions
from .front import RayFront
from .replica import Replica

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "alltalk"


@serve.deployment(name=DEPLOYMENT_NAME)
class AllTalkReplica:
    async def __init__(self, config_repo: str, state_dir: str, branch: str = "main",
                       subdir: str = "", plugins: list[str] | None = None) -> None:
        replica_id = serve.get_replica_context().replica_id.unique_id
        # Each replica keeps its own state and work folder; the config repo is shared.
        options = HostOptions.from_env(
            config_repo=Path(config_repo), state_dir=Path(state_dir) / "replicas" / replica_id,
            branch=branch, subdir=subdir, directed=True)
        if plugins is not None:
            options.plugins = plugins
        self.replica = Replica(options, replica_id)
        await self.replica.start()
        self.front = RayFront(self.replica, shared_dir=Path(state_dir))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.replica.reconfigure(user_config)

    async def __call__(self, request: Request) -> Response:
        return await self.front.handle(request)

    async def check_health(self) -> None:
        if self.replica.commit is None:
            raise Unavailable("the replica serves no commit", code=Code.NOT_READY)

    async def __del__(self) -> None:
        await self.replica.stop()


def build(args: dict[str, Any]) -> Application:
    """The application builder named by the deploy config's ``import_path``."""
    return AllTalkReplica.bind(**args)
