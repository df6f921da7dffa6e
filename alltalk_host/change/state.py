"""The host's memory across restarts, as a file: which commit it applied, which are known good
or failed, the history.

One JSON file in the state folder, replaced atomically (write, fsync, rename), so a crash at any
moment leaves either the previous state or the next one. A file that cannot be read as a state
(truncated, empty, wrong types, a folder) is moved aside with the reason logged, and the host
starts as if new: it then serves the branch head.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import StateUnwritable

log = logging.getLogger(__name__)

HISTORY_LIMIT = 500
STATE_FILE = "state.json"
_TMP_PREFIX = ".state-"
_HASH = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class HostState:
    applied: str | None = None  # the commit serving now
    attempted: str | None = None  # the last commit an apply started on
    known_good: list[str] = field(default_factory=list)  # oldest first, each once
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # commit -> reason, time
    history: list[dict[str, Any]] = field(default_factory=list)  # oldest first, bounded
    # Set by a rollback to the branch head of that moment: automatic apply waits for a new one.
    watch_paused_at: str | None = None
    # A branch move decided by an apply ({"from", "to"}): written with the applied commit, so
    # a host killed before the move finished completes it at start-up.
    branch_move: dict[str, str] | None = None
    # A canary in progress (canary.CanaryRun.to_state): a host that restarts finds it here and
    # aborts it, saying why (rollout.py).
    canary: dict[str, Any] | None = None


class BadState(Exception):
    """The state file exists but is not a state this host can use."""


def decode(data: bytes) -> HostState:
    """A HostState from the file's bytes, or BadState saying why not."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadState(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadState(f"expected a JSON object, found {type(raw).__name__}")
    state = HostState()
    checks = {
        "applied": _optional_hash, "attempted": _optional_hash,
        "watch_paused_at": _optional_hash, "known_good": _hash_list,
        "failed": _failures, "history": _history, "branch_move": _move,
        "canary": _canary,
    }
    for key, check in checks.items():
        if key in raw:
            if not check(raw[key]):
                raise BadState(f"{key} has the wrong type or form: {str(raw[key])[:80]!r}")
            setattr(state, key, raw[key])
    return state


def _optional_hash(v: Any) -> bool:
    return v is None or (isinstance(v, str) and bool(_HASH.match(v)))


def _hash_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(c, str) and _HASH.match(c) for c in v)


def _failures(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(f, dict) and isinstance(f.get("reason"), str)
        for k, f in v.items())


def _history(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(e, dict) and isinstance(e.get("result"), str) for e in v)


def _move(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and _optional_hash(v.get("from"))
                         and _optional_hash(v.get("to")) and v.get("to") is not None)


def _canary(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and isinstance(v.get("commit"), str)
                         and bool(_HASH.match(v["commit"])))


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / STATE_FILE

    def load(self) -> HostState:
        """The saved state; a fresh one if there is none or it is unusable (moved aside)."""
        for leftover in self.directory.glob(f"{_TMP_PREFIX}*"):  # a write a crash cut short
            leftover.unlink(missing_ok=True)
        if not self.path.exists() and not self.path.is_symlink():
            return HostState()
        try:
            return decode(self.path.read_bytes())
        except (BadState, OSError) as exc:
            aside = self.path.with_name(f"{STATE_FILE}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            log.error("state file %s is unusable (%s); moved it to %s and starting afresh "
                      "from the branch head", self.path, exc, aside.name)
            return HostState()

    @staticmethod
    def encode(state: HostState) -> bytes:
        """A snapshot of ``state``, taken where it is mutated (the event loop). Its fields
        are JSON values already: asdict's deep copy of 500 history entries doubled the cost of
        every state change."""
        top = {f.name: getattr(state, f.name) for f in fields(state)}
        return json.dumps(top, indent=1, sort_keys=True).encode()

    def write(self, data: bytes) -> None:
        """Replace the state file with ``data``; blocking (fsync), so callers run it off-loop.
        StateUnwritable (507) when the folder cannot take it, saying why but not where: the
        message reaches clients, and the folder's path is the operator's business."""
        try:
            self._write(data)
        except OSError as exc:
            log.error("cannot write the state file %s: %s", self.path, exc)
            raise StateUnwritable(
                f"the state folder cannot take the state file: "
                f"{exc.strerror or type(exc).__name__} (--state-dir; the server log names "
                "the folder)") from None

    def _write(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
