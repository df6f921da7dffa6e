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
The fleet's own ledger (the single host's ``state.json`` format) records the attempt, the
result and the known-good commits. It lives on the fleet's board in the cluster
(``board.py``), so any operator machine that reaches the cluster reads and writes the same
one; ``<state dir>/fleet/state.json`` keeps this machine's copy. What is deployed (the
``FleetSpec``) is read back from Ray's own record of the deploy, never from a local file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from ..change.ledger import Ledger
from ..change.state import BadState, StateStore, decode
from ..config.repo import ConfigRepo
from . import source
from .front import FLEET_PATH
from .spec import (
    APP_NAME,
    APPS_PATH,
    DEPLOYMENT,
    IMPORT_PATH,
    FleetSpec,
    NotDeployed,
    RolloutError,
    declared_commit,
    deployed_spec,
)

__all__ = [
    "APPS_PATH",
    "APP_NAME",
    "DEPLOYMENT",
    "IMPORT_PATH",
    "Fleet",
    "FleetSpec",
    "NotDeployed",
    "Progress",
    "RolloutError",
    "declared_commit",
    "deployed_spec",
]

# Told each time the fleet is looked at during a rollout: the commit, Ray's application
# status, the replicas' statuses so far.
Progress = Callable[[str, str | None, list[dict[str, Any]]], None]


def refusal_reason(body: str, limit: int = 500) -> str:
    """What a refusal from Ray's dashboard says, within ``limit`` characters. Its 500s carry a
    Python traceback, whose first lines name only files: the exception is its last line."""
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback (most recent call last)"):
        return lines[-1][:limit]
    return body.strip()[:limit]


class Fleet:
    """``async with Fleet(...) as fleet:`` the deployed fleet (its spec read from Ray, or
    ``spec`` for a deploy), the remote's commits (a bare clone in ``<state_dir>/fleet``) and
    the fleet's ledger (pulled from the board, pushed back after each rollout)."""

    def __init__(self, dashboard: str, serve: str, token: str | None = None, *,
                 state_dir: Path, spec: FleetSpec | None = None, timeout_s: float = 120.0,
                 progress: Progress | None = None, control_token: str | None = None,
                 fetch_timeout_s: float = 60.0) -> None:
        self.spec = spec
        self.state_dir = state_dir
        self.progress = progress
        self.dashboard = dashboard.rstrip("/")
        self.serve = serve.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        # The replicas' own control token: the board is a control route, as /control/status.
        self._control = {"Authorization": f"Bearer {control_token}"} if control_token else {}
        self.timeout_s = timeout_s
        self.fetch_timeout_s = fetch_timeout_s
        self.declared: str | None = None  # the commit Ray declared when this fleet was opened
        self.shared: str | None = None  # why the ledger could not be shared, if it was not
        # The board's ledger version this ledger was read at; None: not read.
        self._version: int | None = None
        self._open_fetch_used = False  # the fetch made on opening serves the first apply
        self._io = ThreadPoolExecutor(1, thread_name_prefix="alltalk-fleet")
        self._session: aiohttp.ClientSession | None = None
        self._repo: ConfigRepo | None = None
        self._ledger: Ledger | None = None

    async def __aenter__(self) -> Fleet:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            instance = await self._instance()
            self.declared = declared_commit(instance)
            if self.spec is None:
                self.spec = FleetSpec.from_ray(instance)
                if self.spec is None:
                    raise NotDeployed(f"nothing is deployed on the Ray cluster at "
                                      f"{self.dashboard}: run `alltalk-host ray deploy` first")
            cache = await self._sync(source.cache_dir(self.state_dir / "fleet",
                                                      self.spec.remote))
            self._repo = ConfigRepo(cache, subdir=self.spec.subdir, branch=self.spec.branch)
            await self._pull_ledger(instance)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._io.shutdown(wait=True)
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    @property
    def repo(self) -> ConfigRepo:
        if self._repo is None:
            raise RuntimeError("use Fleet as 'async with'")
        return self._repo

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("use Fleet as 'async with'")
        return self._ledger

    # --- commands ----------------------------------------------------------------------------

    async def apply(self, ref: str, who: str = "ray", action: str = "apply") -> dict[str, Any]:
        """Roll ``ref`` out; on any replica's failure, or a rollout that cannot finish, roll
        the fleet back to the previous known-good commit. The result says what each replica
        did."""
        try:
            result = await self._apply(ref, who, action)
        except RolloutError:
            await self._push_ledger()
            raise
        await self._push_ledger()
        if self.shared:
            result["ledger_not_shared"] = self.shared
        return result

    async def _apply(self, ref: str, who: str, action: str) -> dict[str, Any]:
        # The remote as it is now (opening fetched it; a later apply on the same fleet
        # fetches again); a HostError (400/404) for a name it does not have, and then
        # nothing is deployed.
        if self._open_fetch_used:
            await self._sync(self.repo.path)
        self._open_fetch_used = True
        commit = await self._run_io(self.repo.resolve, ref)
        await self._instance()  # Ray answers, before anything is recorded
        # What to go back to if this fails: the ledger's commit, else what Ray declares.
        previous = self.ledger.applied or self.declared
        started = time.monotonic()
        await self.ledger.attempt(commit)
        try:
            await self._deploy(commit)
            replicas = await self.wait_settled(commit)
        except (RolloutError, aiohttp.ClientError, TimeoutError) as exc:
            # Ray refused the deploy, gave up on it, could not be reached, or the fleet did
            # not settle in time (a node lost, a replica that cannot be placed): the commit is
            # recorded failed, as a single host records an apply that raised.
            reason = _reason(exc)
            await self.ledger.failed(commit, who=who, action=action, reason=reason,
                                     duration_s=time.monotonic() - started)
            if previous is None:
                # A first deploy that failed: Ray would go on restarting replicas that can
                # serve nothing. Nothing is deployed afterwards, as before it.
                await self._delete_app()
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
                               f"still declare {commit[:10]} (`ray status` says; the next "
                               "apply or rollback declares a good commit)") from exc
        result = {**result, "rolled_back_to": previous}
        try:
            result["after_rollback"] = await self.wait_settled(previous)
        except (RolloutError, aiohttp.ClientError, TimeoutError) as exc:
            # Declared: the replicas converge on it as they can (one still loading the failed
            # commit, or a replacement waiting for a node, takes it after), but not within
            # this command's wait.
            result["rollback_pending"] = _reason(exc)
        settled = "rollback_pending" not in result
        self.ledger.record_only(commit=previous, who=who, action="rollback",
                                result="applied" if settled else "declared",
                                reason=f"{commit[:10]} failed")
        # The ledger's commit is the one Ray declares, whether or not every replica has
        # taken it yet: what the fleet converges on.
        self.ledger.declared(previous)
        await self.ledger.save()
        return result

    async def rollback(self, who: str = "ray") -> dict[str, Any]:
        target = self.ledger.previous_good()
        if target is None:
            raise RolloutError("there is no earlier known-good commit to roll back to")
        return await self.apply(target, who, action="rollback")

    async def status(self) -> dict[str, Any]:
        instance = await self._instance()
        details = (instance.get("applications") or {}).get(APP_NAME)
        replicas = await self.replica_statuses(details)
        applied = self.ledger.applied
        running = [r for r in replicas if r.get("ray_state") == "RUNNING"]
        on_it = [r for r in running if r.get("commit") == applied]
        declared = declared_commit(instance)
        return {"application": details.get("status") if details else "NOT_DEPLOYED",
                "applied": applied, "declared": declared,
                "converged": declared == applied and len(on_it) == self.spec_.replicas,
                "wanted": self.spec_.replicas, "running": len(running), "serving": len(on_it),
                "known_good": self.ledger.state.known_good[-5:],
                "failed": self.ledger.state.failed, "replicas": replicas,
                "remote": self.spec_.remote, "root": str(self.spec_.root),
                "ledger_not_shared": self.shared}

    # --- Ray's REST API, the board -----------------------------------------------------------

    @property
    def spec_(self) -> FleetSpec:
        if self.spec is None:
            raise RuntimeError("use Fleet as 'async with'")
        return self.spec

    async def _deploy(self, commit: str) -> None:
        """Declare ``commit`` as the application's ``user_config``; RolloutError if Ray
        refuses, aiohttp.ClientError or TimeoutError if it cannot be told."""
        async with self._http.put(self.dashboard + APPS_PATH,
                                  json=self.spec_.deploy_config(commit),
                                  headers=self._auth) as resp:
            if resp.status != 200:
                raise RolloutError(f"Ray refused the deploy ({resp.status}): "
                                   f"{refusal_reason(await resp.text())}")

    async def _delete_app(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._http.delete(self.dashboard + APPS_PATH, headers=self._auth):
                pass

    async def _instance(self) -> dict[str, Any]:
        """Ray's whole answer: the applications, ``http_options``, the proxies."""
        async with self._http.get(self.dashboard + APPS_PATH, headers=self._auth) as resp:
            if resp.status != 200:
                raise RolloutError(f"Ray's REST API answered {resp.status}: "
                                   f"{(await resp.text())[:500]}")
            return dict(await resp.json())

    async def _app_details(self) -> dict[str, Any] | None:
        return ((await self._instance()).get("applications") or {}).get(APP_NAME)

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
                replicas = [r for r in await self.replica_statuses(details)
                            if r.get("ray_state") == "RUNNING"]
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

    async def replica_statuses(self, details: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Every replica Ray lists, with the status it last reported on the board (read
        through any proxy: the board is in the cluster, so no replica is missed because the
        proxy prefers another), and where Ray placed it. A running replica that has not
        reported is ``unreported``; one Ray does not run shows Ray's state."""
        deployment = (details or {}).get("deployments", {}).get(DEPLOYMENT, {})
        board = (await self._board())["replicas"] if deployment.get("replicas") else {}
        rows = []
        for listed in sorted(deployment.get("replicas", []), key=lambda r: r["replica_id"]):
            rid, ray_state = listed["replica_id"], listed.get("state")
            own = board.get(rid) or {"replica": rid, "state": "unreported", "target": None,
                                      "commit": None}
            if ray_state != "RUNNING" and own["state"] != "starting":
                own = {**own, "state": str(ray_state).lower()}
            rows.append({**own, "ray_state": ray_state,
                         "node": own.get("node") or listed.get("node_ip") or "",
                         "node_id": listed.get("node_id")})
        return rows

    async def _board(self) -> dict[str, Any]:
        """The board through the Serve proxy: every replica's report and the ledger. Empty
        when no replica answers (none running yet, or the proxy unreachable)."""
        empty: dict[str, Any] = {"replicas": {}, "ledger": None, "version": None}
        try:
            async with self._http.get(self.serve + FLEET_PATH, headers=self._control,
                                      timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    return {**empty, "error": f"{resp.status}: {(await resp.text())[:200]}"}
                return dict(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return {**empty, "error": _reason(exc)}

    async def _pull_ledger(self, instance: dict[str, Any]) -> None:
        """The board's ledger, when the fleet runs and has one, replaces this machine's copy;
        else this machine's copy is used (and shared at the next push)."""
        store = StateStore(self.state_dir / "fleet")
        self._version = None
        if (instance.get("applications") or {}).get(APP_NAME):
            board = await self._board()
            if board.get("error"):
                self.shared = f"the fleet's board could not be read ({board['error']})"
            elif board.get("ledger") is not None:
                data = json.dumps(board["ledger"]).encode()
                try:
                    decode(data)
                except BadState as exc:
                    raise RolloutError(f"the fleet's ledger on the board is unusable: "
                                       f"{exc}") from None
                await self._run_io(store.write, data)
                self._version = int(board["version"])
            else:
                self._version = 0
        self._ledger = Ledger(store, self._io)

    async def _push_ledger(self) -> None:
        """Share the ledger on the board; a conflict or an unreachable board is said in the
        result (``ledger_not_shared``), never lost: this machine's copy has it."""
        if self._version is None:
            # Nothing ran when this fleet was opened (a first deploy, or one after the
            # application was deleted): this ledger is the new deployment's, whatever an
            # earlier one left on the board.
            self._version = (await self._board()).get("version")
            if self._version is None:
                self.shared = "no replica answered, so the ledger stays on this machine"
                return
        data = StateStore.encode(self.ledger.state)
        try:
            async with self._http.put(self.serve + FLEET_PATH, headers=self._control,
                                      json={"ledger": json.loads(data),
                                            "version": self._version}) as resp:
                if resp.status == 200:
                    self._version = int((await resp.json())["version"])
                    self.shared = None
                    return
                self.shared = f"the board refused the ledger ({resp.status}): " \
                              f"{(await resp.text())[:300]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.shared = f"the board could not be reached: {_reason(exc)}"

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use Fleet as 'async with'")
        return self._session

    async def _sync(self, dest: Path) -> Path:
        """This machine's clone of the fleet's remote, fetched now."""
        try:
            return Path(await self._run_io(source.sync, self.spec_.remote, dest,
                                           self.fetch_timeout_s))
        except source.SourceError as exc:
            raise RolloutError(str(exc)) from None

    async def _run_io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


def _reason(exc: BaseException) -> str:
    """A failed rollout's reason, in words: a RolloutError says its own; a failure to reach
    Ray names its kind, as aiohttp's often say nothing (ServerDisconnectedError)."""
    if isinstance(exc, RolloutError):
        return str(exc)
    return f"Ray could not be reached: {type(exc).__name__}: {exc}".rstrip(": ")
