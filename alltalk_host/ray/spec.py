"""What a fleet is: the ``FleetSpec`` (the same for every node), the deploy config Ray is
given for it and how it is read back from Ray, and the names Ray knows the fleet by. No Ray
import, no state: ``rollout.py`` does the rolling out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from . import source

APP_NAME = "alltalk"
DEPLOYMENT = "alltalk"  # deployment.DEPLOYMENT_NAME, without importing Ray
IMPORT_PATH = "alltalk_host.ray.deployment:build"
APPS_PATH = "/api/serve/applications/"

class RolloutError(Exception):
    pass


class NotDeployed(RolloutError):
    pass


@dataclass
class FleetSpec:
    """What the deployment is, the same for every node: the git remote the replicas fetch
    commits from, the root folder (the same absolute path on every node) under which each
    replica keeps its state and relative model and output folders resolve, how many
    replicas, and where Serve's proxies listen."""

    remote: str
    root: Path
    replicas: int = 2
    branch: str = "main"
    subdir: str = ""
    plugins: list[str] | None = None
    ray_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 0.5})
    max_replicas_per_node: int | None = None  # 1: one replica per machine
    http_host: str = "127.0.0.1"  # loopback unless the operator opens it
    http_port: int = 8000
    # Where Serve runs proxies: "EveryNode" (each machine answers), or "HeadOnly".
    proxy_location: str = "EveryNode"
    models_dir: str | None = None  # absolute, or under root; None: as each commit says
    outputs_dir: str | None = None
    control_token_sha256: str | None = None  # the control token's digest, never the token

    def __post_init__(self) -> None:
        source.check_remote(self.remote)
        if self.proxy_location not in ("EveryNode", "HeadOnly"):
            raise RolloutError(f"proxy_location must be EveryNode or HeadOnly, not "
                               f"{self.proxy_location!r}")
        if not Path(self.root).is_absolute():
            raise RolloutError(f"the fleet's root {str(self.root)!r} must be an absolute path, "
                               "the same on every node")

    def deploy_config(self, commit: str) -> dict[str, Any]:
        args: dict[str, Any] = {"remote": self.remote, "root": str(self.root),
                                "branch": self.branch, "subdir": self.subdir}
        for name in ("plugins", "models_dir", "outputs_dir", "control_token_sha256"):
            if getattr(self, name) is not None:
                args[name] = getattr(self, name)
        deployment: dict[str, Any] = {"name": DEPLOYMENT, "num_replicas": self.replicas,
                                      "ray_actor_options": self.ray_actor_options,
                                      "user_config": {"commit": commit}}
        if self.max_replicas_per_node is not None:
            deployment["max_replicas_per_node"] = self.max_replicas_per_node
        return {"http_options": {"host": self.http_host, "port": self.http_port},
                "proxy_location": self.proxy_location,
                "applications": [{"name": APP_NAME, "route_prefix": "/",
                                  "import_path": IMPORT_PATH, "args": args,
                                  "deployments": [deployment]}]}

    @classmethod
    def from_ray(cls, instance: dict[str, Any]) -> FleetSpec | None:
        """The spec Ray was last given, from its ``GET /api/serve/applications/``; None when
        nothing is deployed."""
        app = (instance.get("applications") or {}).get(APP_NAME) or {}
        config = app.get("deployed_app_config") or {}
        args = config.get("args") or {}
        if "remote" not in args:
            return None
        (deployment,) = config.get("deployments") or [{}]
        http = instance.get("http_options") or {}
        return cls(remote=args["remote"], root=Path(args["root"]),
                   replicas=int(deployment.get("num_replicas", 2)),
                   branch=args.get("branch", "main"), subdir=args.get("subdir", ""),
                   plugins=args.get("plugins"),
                   ray_actor_options=deployment.get("ray_actor_options") or {},
                   max_replicas_per_node=deployment.get("max_replicas_per_node"),
                   http_host=http.get("host", "127.0.0.1"), http_port=int(http.get("port", 8000)),
                   proxy_location=instance.get("proxy_location") or "EveryNode",
                   models_dir=args.get("models_dir"), outputs_dir=args.get("outputs_dir"),
                   control_token_sha256=args.get("control_token_sha256"))


async def deployed_spec(dashboard: str, token: str | None = None) -> FleetSpec | None:
    """What Ray was last told to deploy, or None: nothing else (no remote is fetched, no
    ledger read), so a deploy that changes a broken remote can still read it."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
            http.get(dashboard.rstrip("/") + APPS_PATH, headers=auth) as resp:
        if resp.status != 200:
            raise RolloutError(f"Ray's REST API answered {resp.status}: "
                               f"{(await resp.text())[:500]}")
        return FleetSpec.from_ray(dict(await resp.json()))


def declared_commit(instance: dict[str, Any]) -> str | None:
    """The commit Ray declares (the deployment's ``user_config``)."""
    app = (instance.get("applications") or {}).get(APP_NAME) or {}
    for deployment in (app.get("deployed_app_config") or {}).get("deployments") or []:
        commit = (deployment.get("user_config") or {}).get("commit")
        if isinstance(commit, str):
            return commit
    return None
