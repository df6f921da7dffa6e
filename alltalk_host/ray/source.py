"""Where a fleet's commits come from: one git remote that every node reaches (a URL, or a path
that is the same on every node), cloned by each replica into its own folder and fetched when
a rollout names a commit it does not have. No shared file system, no Ray here.

Why a remote and not files shipped through Ray: the config repo already lives in git and is
usually pushed somewhere; a clone carries every commit, voices included, verified by git's
own hashes; a replacement replica on a new machine needs nothing but the URL. The operator's
CLI resolves names (``main``, a short hash) against the same remote, so the fleet can only be
told a commit it can fetch.

The URL is the operator's (a CLI flag), but it travels through Ray's deploy config, so it is
checked as untrusted all the same: no option-looking or control characters, and git may use
only the ordinary transports (``GIT_ALLOW_PROTOCOL``: never ``ext::``, which runs a command).
Every git call has a deadline and is killed with the helpers it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from pathlib import Path

ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
MAX_URL = 1024
FETCH_REFS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]


class SourceError(Exception):
    """The remote cannot be used or reached; the message says which and why."""


def remote_problem(url: object) -> str | None:
    """Why ``url`` is refused as a fleet's remote (None when it is fine)."""
    if not isinstance(url, str) or not url.strip():
        return "must be a git URL or an absolute path"
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        return "has control characters"
    if url.startswith("-"):
        return "starts with '-'"
    if "::" in url.split("/", 1)[0]:  # ext::, fd::, any remote helper named in the URL
        return "names a git remote helper ('X::'); use https://, ssh://, git:// or a path"
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ALLOWED_PROTOCOLS.split(":"):
            return f"uses {scheme}://; use one of {ALLOWED_PROTOCOLS.replace(':', ', ')}"
        return None
    if ":" in url.split("/", 1)[0]:  # scp-like user@host:path (ssh)
        return None
    if not Path(url).is_absolute():
        return ("is a relative path, which would resolve differently on every node; give an "
                "absolute path or a URL")
    return None


def check_remote(url: str) -> str:
    problem = remote_problem(url)
    if problem:
        raise SourceError(f"the fleet's remote {str(url)[:80]!r} {problem}")
    return url


def cache_dir(root: Path, url: str) -> Path:
    """A bare clone of ``url`` under ``root``, one per URL."""
    return root / f"remote-{hashlib.sha256(url.encode()).hexdigest()[:12]}.git"


def sync(url: str, dest: Path, timeout_s: float = 60.0) -> Path:
    """A bare clone of ``url`` at ``dest`` with every branch and tag of the remote; cloned the
    first time, fetched after. The path."""
    check_remote(url)
    if not (dest / "HEAD").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        _git(["init", "--quiet", "--bare", str(dest)], timeout_s, url)
    _git(["-C", str(dest), "fetch", "--quiet", "--prune", "--no-write-fetch-head",
          "--end-of-options", url, *FETCH_REFS], timeout_s, url)
    return dest


def _env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
            # ssh may not ask anything either: a node has no one to answer
            "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")}


def _git(args: list[str], timeout_s: float, url: str) -> None:
    process = subprocess.Popen(["git", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    try:
        _, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # git talks to an HTTP remote through a helper that holds the pipe: end them all
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise SourceError(f"git did not reach the fleet's remote {url[:80]!r} within "
                          f"{timeout_s:g} s") from None
    if process.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise SourceError(f"git could not fetch from the fleet's remote {url[:80]!r}: "
                          f"{detail[-1] if detail else 'exit ' + str(process.returncode)}")
