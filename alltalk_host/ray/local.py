"""A local Ray cluster owned by one child process, for the tests, ``tools/bench_ray.py`` and a
single machine: it starts the cluster (``ray.init``) and Serve's HTTP proxy on chosen loopback
ports, prints one JSON line with the addresses, and shuts the whole cluster down when its
standard input closes (the owner ended it, or died).

``ray stop`` would end every Ray process on the machine by name, other people's too; this ends
only the cluster it started. ``HOME`` (where Ray keeps its token, ``~/.ray/auth_token``) points
into ``root``; ``RAY_TMPDIR`` into a short folder of its own under the system's temp folder
(Ray's sockets live there, and a Unix socket path may not pass 107 bytes), removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass
class ClusterInfo:
    dashboard: str  # Ray's REST API (deploys, status): http://127.0.0.1:PORT
    serve: str  # Serve's HTTP proxy: http://127.0.0.1:PORT
    token: str | None  # Ray's auth token, when token auth is on


class LocalCluster:
    """``with LocalCluster(root) as info:`` a cluster for the block; shut down on leaving it."""

    def __init__(self, root: Path, num_cpus: int = 4, env: Mapping[str, str] | None = None,
                 start_timeout_s: float = 120.0, dashboard_port: int = 0,
                 serve_port: int = 0) -> None:
        self.root = root
        self.num_cpus = num_cpus
        self.ports = (dashboard_port, serve_port)  # 0: a free one
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[str] | None = None
        self.log_path = root / "cluster.log"

    def __enter__(self) -> ClusterInfo:
        self.root.mkdir(parents=True, exist_ok=True)
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="alltalk-ray-"))
        env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": str(self.ray_tmp),
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", **self.env}
        self._log: IO[str] = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "alltalk_host.ray.local", "--ray-tmp", str(self.ray_tmp),
             "--num-cpus", str(self.num_cpus), "--dashboard-port", str(self.ports[0]),
             "--serve-port", str(self.ports[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
            # Its own session: a Ctrl-C in the owner's terminal reaches the owner only, which
            # then shuts the cluster down in order (closing stdin), not Ray's processes at once.
            start_new_session=True)
        try:
            line = _read_line(self.process, self.start_timeout_s)
            return ClusterInfo(**json.loads(line))
        except RuntimeError as exc:
            self.close()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\n{tail}") from None
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout_s: float = 60.0) -> None:
        """Ask the owner to shut the cluster down (close its stdin); kill it if it hangs."""
        process = self.process
        if process is None:
            return
        self.process = None
        try:
            if process.stdin:
                process.stdin.close()
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        finally:
            if process.stdout:
                process.stdout.close()
            self._log.close()
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    import selectors

    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = process.stdout.readline()
            if line:
                return line
            break
        if process.poll() is not None:
            break
    raise RuntimeError(f"the local Ray cluster did not start (exit code {process.poll()}); "
                       "see cluster.log in its folder")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own(ray_tmp: Path, num_cpus: int, dashboard_port: int = 0, serve_port: int = 0) -> None:
    """In the child: start, report, wait for stdin to close, shut down."""
    import ray
    from ray import serve

    dashboard_port, serve_port = dashboard_port or free_port(), serve_port or free_port()
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=dashboard_port, _temp_dir=str(ray_tmp),
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        token_file = Path.home() / ".ray" / "auth_token"
        info: dict[str, Any] = {
            "dashboard": f"http://127.0.0.1:{dashboard_port}",
            "serve": f"http://127.0.0.1:{serve_port}",
            "token": token_file.read_text().strip() if token_file.is_file() else None,
        }
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until the owner closes it, or dies
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ray-tmp", type=Path, required=True)
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--dashboard-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--serve-port", type=int, default=0, help="0: a free port")
    args = parser.parse_args()
    _own(args.ray_tmp, args.num_cpus, args.dashboard_port, args.serve_port)


if __name__ == "__main__":
    main()
