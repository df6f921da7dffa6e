"""Rolling a config commit across the fleet, from outside it: through Ray's REST API (a
declarative deploy, the Python equivalent of ``serve deploy``) and the replicas' own status.

No Ray import: this talks HTTP, so it runs wherever the dashboard and the Serve proxy can be
reached, with Ray's token when token auth is on.

Why declarative: ``serve.run`` makes every deploy a new code version, so replicas would be
replaced; a declarative deploy whose only change is ``user_config`` updates the replicas in
place, a few at a time, each calling ``reconfigure`` while the others serve.

A rollout: deploy the commit; wait until every replica has taken it or failed it; if any
failed, deploy the previous known-good commit again, so the fleet converges on one commit.
So too when the fleet does not settle in time, Ray gives up, or Ray cannot be reached in
mid-rollout: what Ray declares (``user_config``) may name the failed commit, and replicas
would keep converging on it.
The fleet's own ledger (``<state dir>/fleet/state.json``, the single host's format) records
the attempt, the result and the known-good commits.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..change.ledger import Ledger
from ..change.state import StateStore
from ..config.repo import ConfigRepo
from .front import REPLICA_HEADER, STATUS_PATH

APP_NAME = "alltalk"
DEPLOYMENT = "alltalk"  # deployment.DEPLOYMENT_NAME, without importing Ray
IMPORT_PATH = "alltalk_host.ray.deployment:build"
APPS_PATH = "/api/serve/applications/"
SPEC_FILE = "spec.json"  # beside the fleet's state.json: what `alltalk-host ray deploy` chose

# Told each time the fleet is looked at during a rollout: the commit, Ray's application
# status, the replicas' statuses so far.
Progress = Callable[[str, str | None, list[dict[str, Any]]], None]


class RolloutError(Exception):
    pass


@dataclass
class FleetSpec:
    """What the deployment is: where the replicas find the config repo, how many there are."""

    config_repo: Path
    state_dir: Path
    replicas: int = 2
    branch: str = "main"
    subdir: str = ""
    plugins: list[str] | None = None
    ray_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 0.5})

    def deploy_config(self, commit: str) -> dict[str, Any]:
        args: dict[str, Any] = {"config_repo": str(self.config_repo.resolve()),
                                "state_dir": str(self.state_dir.resolve()),
                                "branch": self.branch, "subdir": self.subdir}
        if self.plugins is not None:
            args["plugins"] = self.plugins
        return {"applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args,
            "deployments": [{"name": DEPLOYMENT, "num_replicas": self.replicas,
                             "ray_actor_options": self.ray_actor_options,
                             "user_config": {"commit": commit}}],
        }]}

    def save(self) -> Path:
        """Write the spec beside the fleet's ledger, so later commands need only the state
        folder; the path written."""
        path = self.state_dir / "fleet" / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**asdict(self), "config_repo": str(self.config_repo.resolve()),
                "state_dir": str(self.state_dir.resolve())}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> FleetSpec | None:
        """The spec saved in ``state_dir``; None when nothing was deployed from it."""
        path = state_dir / "fleet" / SPEC_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**{**data, "config_repo": Path(data["config_repo"]),
                      "state_dir": Path(data["state_dir"])})


class Fleet:
    def __init__(self, spec: FleetSpec, dashboard: str, serve: str, token: str | None = None,
                 timeout_s: float = 120.0, progress: Progress | None = None,
                 control_token: str | None = None) -> None:
        self.spec = spec
        self.progress = progress
        self.dashboard = dashboard.rstrip("/")
        self.serve = serve.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        # The replicas' own control token: /ray/status is a control route, as /control/status.
        self._control = {"Authorization": f"Bearer {control_token}"} if control_token else {}
        self.timeout_s = timeout_s
        self.repo = ConfigRepo(spec.config_repo, subdir=spec.subdir, branch=spec.branch)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="alltalk-fleet")
        self.ledger = Ledger(StateStore(spec.state_dir / "fleet"), self._io)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fleet:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._io.shutdown(wait=True)
        self.repo.close()

    # --- commands ----------------------------------------------------------------------------

    async def apply(self, ref: str, who: str = "ray", action: str = "apply") -> dict[str, Any]:
        """Roll ``ref`` out; on any replica's failure, or a rollout that cannot finish, roll
        the fleet back to the previous known-good commit. The result says what each replica
        did."""
        commit = await self._run_io(self.repo.resolve, ref)
        await self._app_details()  # Ray answers, before anything is recorded
        previous = self.ledger.applied
        started = time.monotonic()
        await self.ledger.attempt(commit)
        try:
            await self._deploy(commit)
            replicas = await self.wait_settled(commit)
        except (RolloutError, aiohttp.ClientError, TimeoutError) as exc:
            # Ray refused the deploy, gave up on it, could not be reached, or the fleet did
            # not settle in time: the commit is recorded failed, as a single host records an
            # apply that raised.
            reason = _reason(exc)
            await self.ledger.failed(commit, who=who, action=action, reason=reason,
                                     duration_s=time.monotonic() - started)
            if previous is None or previous == commit:
                raise RolloutError(reason) from exc
            result = {"commit": commit, "result": "failed", "reason": reason, "replicas": [],
                      "duration_s": round(time.monotonic() - started, 3)}
            return await self._roll_back(result, previous, who)
        failed = {r["replica"]: r["last_error"] for r in replicas if r["state"] == "failed"}
        duration = time.monotonic() - started
        if not failed:
            await self.ledger.applied_ok(commit, who=who, action=action, duration_s=duration)
            return {"commit": commit, "result": "applied", "replicas": replicas,
                    "duration_s": round(duration, 3)}
        reason = "; ".join(f"{rid}: {e['reason']}" for rid, e in failed.items() if e)
        await self.ledger.failed(commit, who=who, action=action, reason=reason,
                                 duration_s=duration)
        result = {"commit": commit, "result": "failed", "reason": reason,
                  "replicas": replicas, "duration_s": round(duration, 3)}
        if previous is None:
            return result
        return await self._roll_back(result, previous, who)

    async def _roll_back(self, result: dict[str, Any], previous: str,
                         who: str) -> dict[str, Any]:
        """Every replica on the old commit again: those that took the new one go back, those
        that failed it confirm the commit they kept serving; Ray declares the old one."""
        commit = result["commit"]
        try:
            await self._deploy(previous)
        except (RolloutError, aiohttp.ClientError, TimeoutError) as exc:
            raise RolloutError(f"{commit[:10]} failed ({result['reason']}), and so did "
                               f"deploying {previous[:10]} again: {_reason(exc)}; Ray may "
                               f"still declare {commit[:10]}") from exc
        result = {**result, "rolled_back_to": previous}
        try:
            result["after_rollback"] = await self.wait_settled(previous)
        except (RolloutError, aiohttp.ClientError, TimeoutError) as exc:
            # Declared: the replicas converge on it as they can (one still loading the failed
            # commit takes it after), but not within this command's wait.
            result["rollback_pending"] = _reason(exc)
        settled = "rollback_pending" not in result
        self.ledger.record_only(commit=previous, who=who, action="rollback",
                                result="applied" if settled else "declared",
                                reason=f"{commit[:10]} failed")
        await self.ledger.save()
        return result

    async def rollback(self, who: str = "ray") -> dict[str, Any]:
        target = self.ledger.previous_good()
        if target is None:
            raise RolloutError("there is no earlier known-good commit to roll back to")
        return await self.apply(target, who, action="rollback")

    async def status(self) -> dict[str, Any]:
        details = await self._app_details()
        replicas = await self.replica_statuses(details)
        return {"application": details.get("status") if details else "NOT_DEPLOYED",
                "applied": self.ledger.applied, "known_good": self.ledger.state.known_good[-5:],
                "failed": self.ledger.state.failed, "replicas": replicas}

    # --- Ray's REST API and the replicas -----------------------------------------------------

    async def _deploy(self, commit: str) -> None:
        """Declare ``commit`` as the application's ``user_config``; RolloutError if Ray
        refuses, aiohttp.ClientError or TimeoutError if it cannot be told."""
        async with self._http.put(self.dashboard + APPS_PATH, json=self.spec.deploy_config(commit),
                                  headers=self._auth) as resp:
            if resp.status != 200:
                raise RolloutError(f"Ray refused the deploy ({resp.status}): "
                                   f"{(await resp.text())[:500]}")

    async def _app_details(self) -> dict[str, Any] | None:
        async with self._http.get(self.dashboard + APPS_PATH, headers=self._auth) as resp:
            if resp.status != 200:
                raise RolloutError(f"Ray's REST API answered {resp.status}: "
                                   f"{(await resp.text())[:500]}")
            return (await resp.json()).get("applications", {}).get(APP_NAME)

    async def wait_settled(self, commit: str) -> list[dict[str, Any]]:
        """Until Ray says the application runs its replicas and each of them has taken
        ``commit`` or failed it (and kept its old one); their statuses."""
        deadline = time.monotonic() + self.timeout_s
        last: Any = None
        failed_since: float | None = None
        while time.monotonic() < deadline:
            details = await self._app_details()
            status = details.get("status") if details else None
            last = status
            replicas: list[dict[str, Any]] = []
            # Ray gave up (a replica with no commit to keep raised, again and again): no
            # point waiting out the timeout. Seen for a few seconds first, since right after
            # a deploy Ray may still show the previous deploy's failure.
            failed_since = (failed_since or time.monotonic()) if status == "DEPLOY_FAILED" \
                else None
            if failed_since is not None and time.monotonic() - failed_since > 3.0:
                raise RolloutError(f"Ray could not deploy {commit[:10]}: "
                                   f"{(details or {}).get('message') or 'no reason given'}")
            if status == "RUNNING":
                replicas = await self.replica_statuses(details)
                if replicas and all(r.get("target") == commit and r["state"] != "starting"
                                    for r in replicas):
                    if self.progress:
                        self.progress(commit, status, replicas)
                    return replicas
                last = replicas
            if self.progress:
                self.progress(commit, status, replicas)
            await asyncio.sleep(0.5)
        raise RolloutError(f"the fleet did not settle on {commit[:10]} within "
                           f"{self.timeout_s:.0f} s; last seen: {last}")

    async def replica_statuses(self, details: dict[str, Any] | None,
                               rounds: int = 10) -> list[dict[str, Any]]:
        """Each running replica's own status. Serve's proxy picks the replica, so several
        requests go out at once until every replica Ray lists has answered; one never
        reached is listed as ``unreached``."""
        deployment = (details or {}).get("deployments", {}).get(DEPLOYMENT, {})
        wanted = {r["replica_id"] for r in deployment.get("replicas", [])
                  if r.get("state") == "RUNNING"}
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(rounds):
            if wanted <= set(seen):
                break
            for answer in await asyncio.gather(*(self._one_status()
                                                 for _ in range(2 * len(wanted) or 1))):
                if answer is not None:
                    seen[answer["replica"]] = answer
        return [seen.get(rid, {"replica": rid, "state": "unreached", "target": None})
                for rid in sorted(wanted)]

    async def _one_status(self) -> dict[str, Any] | None:
        try:
            async with self._http.get(self.serve + STATUS_PATH, headers=self._control) as resp:
                if resp.status != 200 or REPLICA_HEADER not in resp.headers:
                    return None
                return await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return None

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use Fleet as 'async with'")
        return self._session

    async def _run_io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


def _reason(exc: BaseException) -> str:
    """A failed rollout's reason, in words: a RolloutError says its own; a failure to reach
    Ray names its kind, as aiohttp's often say nothing (ServerDisconnectedError)."""
    if isinstance(exc, RolloutError):
        return str(exc)
    return f"Ray could not be reached: {type(exc).__name__}: {exc}".rstrip(": ")
