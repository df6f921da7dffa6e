"""The fleet on two Ray nodes, started as on two machines (docs/scale-out.md, "Several
machines"): a head and a worker node, each in its own working folder, one replica on each; the
config repo reachable only as a git:// remote (the operator's working copy is moved away once
its commits are pushed); the commands run by an operator in a third folder, and status asked
from a fourth. Commits roll out under load; the worker node is killed in the middle of a
rollout and started again.

What must hold: no request fails apart from those in flight on the killed node; the rollout
that lost its node is recorded failed and Ray declares the previous commit again, so when the
node returns its replacement serves the commit the ledger names, not the failed one; status
from another machine's folder says 2 of 2 replicas on two different nodes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alltalk_host.ray.local import free_port

from .helpers import ConfigRepoHelper
from .ray_nodes import TwoNodes, ray_cli, ray_cli_start, wait_for

HAVE_RAY = importlib.util.find_spec("ray") is not None
pytestmark = [
    pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install "
                                            "'alltalk-host[ray]' (make test does)"),
    pytest.mark.timeout(420),
]

CLIENTS = 4


class GitDaemon:
    """``git daemon`` serving the bare repos in ``base`` read-only on loopback: a remote that
    is no path of any node."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GitDaemon:
        self.process = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={self.base}",
             "--listen=127.0.0.1", f"--port={self.port}", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return self

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def test_two_nodes_roll_out_lose_a_node_and_converge(tmp_path: Path) -> None:
    # The operator's commits, pushed to the remote; then the working copy goes away.
    work = ConfigRepoHelper(tmp_path / "operator-work" / "config")
    first = work.initial
    second = work.change("lower", "models.toml", "default.models.reference.settings.pitch_hz",
                         120)
    work.set("models.toml", "default.models.reference.settings.pitch_hz", 180)
    work.set("models.toml", "default.models.reference.settings.load_seconds", 4)
    third = work.commit("higher, slow to load")
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "--quiet", "--bare", str(work.path),
                    str(served / "config.git")], check=True)
    work.repo.close()
    shutil.move(tmp_path / "operator-work", tmp_path / "moved-away")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALLTALK_", "RAY_"))}
    http_port = free_port()
    # A setting in one node's environment, which on one host would be a settings layer: the
    # fleet ignores it (its replicas would otherwise refuse every commit).
    odd = {"ALLTALK_DEFAULT_MODEL": "no-such-model"}
    with GitDaemon(served) as daemon, TwoNodes(tmp_path / "nodes", env,
                                               worker_env=odd) as nodes:
        operator = tmp_path / "operator"
        operator.mkdir()
        token_file = operator / "ray-token"
        token_file.write_text(nodes.token)
        serve = f"http://127.0.0.1:{http_port}"
        flags = ["--address", nodes.head.dashboard, "--serve-url", serve,
                 "--token-file", str(token_file)]

        def ray(*args: str, cwd: Path = operator) -> Any:
            return ray_cli(*args, "--state-dir", str(cwd / "state"), *flags, cwd=cwd)

        root = tmp_path / "fleet-root"  # the same absolute path "on every node"
        run = ray("deploy", "--remote", daemon.url("config.git"), "--root", str(root),
                  "--models-dir", "models", "--replicas", "2", "--max-replicas-per-node", "1",
                  "--plugins", "reference",
                  # two nodes on one machine cannot both listen on one port
                  "--proxy-location", "HeadOnly", "--commit", first, "--timeout", "180")
        assert run.code == 0, run
        assert f"2 replicas serve {first[:7]}" in run.out, run
        nodes_of = {r["replica"]: r["node_id"] for r in status(ray)["replicas"]}
        assert len(set(nodes_of.values())) == 2, nodes_of  # one replica on each node
        # Each replica cloned the remote into its own folder under the fleet's root, and
        # took its models folder from the deploy, resolved under that root.
        for rid in nodes_of:
            assert (root / "replicas" / rid / "config.git" / "HEAD").is_file()
            assert (root / "replicas" / rid / "local.toml").read_text().startswith(
                'models_dir = "models"')

        load = Load(serve)
        load.start()
        elsewhere = tmp_path / "second-operator"
        elsewhere.mkdir()
        try:
            time.sleep(1.0)
            run = ray("apply", second[:10])
            assert run.code == 0, run
            assert f"2 replicas serve {second[:7]}" in run.out, run

            # The worker node dies while the replicas load the third commit.
            # It cannot settle with a node gone: a short --timeout keeps the test short.
            rollout = ray_cli_start("apply", third, "--timeout", "8", "--state-dir",
                                    str(operator / "state"), *flags, cwd=operator)
            time.sleep(2.0)
            killed_at = time.monotonic()
            nodes.worker.kill()
            out, err = rollout.communicate(timeout=200)
            rolled_back_at = time.monotonic()
            assert rollout.returncode == 1, (out, err)
            assert f"rollout of {third[:7]} failed" in out, (out, err)
            assert f"rolled back to {second[:7]}" in out, (out, err)

            # Ray declares the previous commit; the ledger names it and the failure.
            seen = status(ray)
            assert seen["declared"] == second and seen["applied"] == second, seen
            assert third in seen["failed"], seen

            # The node comes back: its new replica takes what Ray declares.
            nodes.restart_worker()
            wait_for(lambda: status(ray, cwd=elsewhere)["converged"], 150,
                     "the fleet converging after the node returned")
        finally:
            answers = load.stop()

        final = status(ray, cwd=elsewhere)
        assert (final["serving"], final["wanted"], final["applied"]) == (2, 2, second), final
        assert len({r["node_id"] for r in final["replicas"]
                    if r["ray_state"] == "RUNNING"}) == 2, final
        words = ray("status", cwd=elsewhere)
        assert "2 of 2 replicas serve the fleet's commit" in words.out, words

    # No request failed but those in flight on the node that was killed.
    codes = Counter(code for _, code, _, _ in answers)
    failed = [a for a in answers if a[1] != 200]
    assert codes[200] >= 20, codes
    assert len(failed) <= CLIENTS, (codes, failed)
    assert all(killed_at - 1 <= t <= killed_at + 30 for t, *_ in failed), (killed_at, failed)
    # After the rollback, no answer came from the commit whose rollout failed.
    late = {commit for t, code, commit, _ in answers if t > rolled_back_at and code == 200}
    assert late and third not in late, late


def status(ray: Any, cwd: Path | None = None) -> dict[str, Any]:
    run = ray("status", "--json", **({"cwd": cwd} if cwd else {}))
    assert run.code == 0, run
    return dict(json.loads(run.out))


class Load:
    """CLIENTS clients speaking through the Serve proxy until stopped, in a thread of their
    own; every answer kept as (when, status, commit, replica)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[float, int, str | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[tuple[float, int, str | None, str | None]]:
        self._stop.set()
        self._thread.join(120)
        return self.answers

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await asyncio.gather(*(self._client(http, n) for n in range(CLIENTS)))

    async def _client(self, http: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                async with http.post(self.base + "/tts",
                                     json={"text": f"Client {n}, request {i}."}) as resp:
                    await resp.read()
                    self.answers.append((time.monotonic(), resp.status,
                                         resp.headers.get("X-AllTalk-Commit"),
                                         resp.headers.get("X-AllTalk-Replica")))
            except (aiohttp.ClientError, TimeoutError):
                self.answers.append((time.monotonic(), 0, None, None))
