"""A live alltalk-host for the tools: a config repo made from the template, `alltalk-host serve`
in a child process on a free loopback port, and the wait until it is ready.

The child runs from the repository root with this process's environment (PYTHONPATH included,
so it serves the same tree) minus ``ALLTALK_*`` variables, so a developer's settings do not leak
into a measurement.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import git
import tomlkit

from alltalk_host.config.template import init_from_template
from alltalk_host.plugins import discover

ROOT = Path(__file__).resolve().parent.parent


def new_config_repo(path: Path) -> Path:
    """A config repo at ``path`` made from the template, as `serve --init-config` makes it."""
    init_from_template(path, discover())
    return path


def set_key(path: Path, dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a TOML file, creating the tables on the way."""
    doc = tomlkit.parse(path.read_text())
    *parents, last = dotted.split(".")
    table: Any = doc
    for part in parents:
        table = table.setdefault(part, tomlkit.table())
    table[last] = value
    path.write_text(tomlkit.dumps(doc))


def commit(repo_path: Path, message: str) -> str:
    """Commit everything in the working tree; the new commit's hash."""
    with git.Repo(repo_path) as repo:
        repo.git.add("-A")
        repo.index.commit(message)
        return repo.head.commit.hexsha


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`alltalk-host serve` on loopback, started and ready when the constructor returns.

    Use it as a context manager, or call ``stop()``. ``args`` are more `serve` flags,
    ``env`` more environment variables (``ALLTALK_*`` ones included), ``output`` where its
    log goes (default: this process's).
    """

    def __init__(self, config_repo: Path, state_dir: Path, log_level: str = "warning",
                 ready_timeout_s: float = 120.0, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, output: IO[bytes] | None = None) -> None:
        self.port = free_port()
        # Where a failure to start points the reader: the log file, or this process's output.
        name = getattr(output, "name", None)
        self._log = f"its log: {name}" if isinstance(name, str) else "its log is above"
        self.base = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ALLTALK_")}
        environ.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "alltalk_host", "serve", "--config-repo",
             str(config_repo), "--state-dir", str(state_dir), "--port", str(self.port),
             "--log-level", log_level, *args], env=environ, cwd=ROOT,
            stdout=output, stderr=subprocess.STDOUT if output is not None else None)
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode} before "
                                   f"it was ready ({self._log})")
            try:
                with urllib.request.urlopen(f"{self.base}/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:  # not listening yet, or 503 while the first apply runs
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not become ready within {timeout_s:.0f} s "
                           f"({self._log})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
