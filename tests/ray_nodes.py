"""Ray nodes started as an operator starts them on separate machines (``ray start --head``,
then ``ray start --address`` on each other machine), here on one machine, each in its own
working folder and process session, so a test can kill one node outright (every process of
it, as a machine that loses power) and start it again. ``ray stop`` is never used: it ends
every Ray process on the machine by name.

Two nodes on one machine cannot both listen on the same ports, so each gets free ones; on
separate machines Ray's defaults do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from alltalk_host.ray.local import free_port

from .helpers import ROOT


def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


class RayNode:
    """One node: ``ray start --block`` in ``workdir``, in a session of its own."""

    def __init__(self, workdir: Path, env: Mapping[str, str], *, head: bool = False,
                 address: str | None = None, num_cpus: int = 2,
                 dashboard_port: int | None = None) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.head = head
        self.address = address
        self.num_cpus = num_cpus
        self.gcs_port = free_port() if head else None
        self.dashboard_port = dashboard_port or (free_port() if head else None)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "ray-start.log"

    def start(self) -> RayNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [ray_bin(), "start", "--block", f"--num-cpus={self.num_cpus}",
                "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
        if self.head:
            args += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                     f"--ray-client-server-port={free_port()}"]
        else:
            args += [f"--address={self.address}"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, cwd=self.workdir, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def kill(self) -> None:
        """Every process of this node at once, with SIGKILL: a machine that went away."""
        if self.process is None:
            return
        session = self.process.pid
        for pid in _session_members(session):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


def _session_members(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces, so split after ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session:
            found.append(int(entry.name))
    return found


class TwoNodes:
    """A head and a worker node, a token shared by both; everything killed on leaving."""

    def __init__(self, root: Path, env: Mapping[str, str], num_cpus: int = 2,
                 worker_env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.worker_env = dict(worker_env or {})
        self.token = os.urandom(16).hex()
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="alltalk-ray2-"))
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(self.ray_tmp)}
        self.num_cpus = num_cpus
        self.head = RayNode(root / "head", {**self.env, "HOME": str(root / "head")}, head=True,
                            num_cpus=num_cpus)
        self.worker = self._worker()

    def _worker(self) -> RayNode:
        return RayNode(self.root / "worker", {**self.env, "HOME": str(self.root / "worker"),
                                              **self.worker_env},
                       address=self.head.gcs_address, num_cpus=self.num_cpus)

    def __enter__(self) -> TwoNodes:
        try:
            self.head.start()
            wait_for(lambda: _answers(self.head.dashboard), 90, "the head node's dashboard",
                     self.head.log)
            self.worker.start()
        except BaseException:
            self.close()
            raise
        return self

    def restart_worker(self) -> RayNode:
        self.worker.kill()
        self.worker = self._worker().start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for node in (self.worker, self.head):
            node.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/api/version", timeout=2):
            return True
    except urllib.error.HTTPError:  # 401 without the token: it answers
        return True
    except OSError:
        return False


def wait_for(check, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise TimeoutError(f"{what} was not ready within {timeout_s:g} s\n{tail}")
        time.sleep(0.5)


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float


def ray_cli(*args: str, cwd: Path) -> Run:
    """``alltalk-host ray ARGS`` in a child process, with none of the developer's ALLTALK_ or
    RAY_ variables and a HOME of its own (no ~/.ray/auth_token but the one given)."""
    started = time.monotonic()
    done = subprocess.run(_argv(args), cwd=cwd, env=_cli_env(cwd), capture_output=True,
                          text=True, timeout=240)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def ray_cli_start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """As ``ray_cli``, without waiting: ``communicate()`` for its output."""
    return subprocess.Popen(_argv(args), cwd=cwd, env=_cli_env(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _argv(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "alltalk_host", "ray", *args]


def _cli_env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALLTALK_", "RAY_"))}
    env["HOME"] = str(cwd)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
