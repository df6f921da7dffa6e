"""The host's memory across restarts: which commit it applied, which are known good or failed.

One JSON file in the state folder, replaced atomically (write, fsync, rename), so a crash at any
moment leaves either the previous state or the next one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HISTORY_LIMIT = 500
STATE_FILE = "state.json"


@dataclass
class HostState:
    applied: str | None = None  # the commit serving now
    attempted: str | None = None  # the last commit an apply started on
    known_good: list[str] = field(default_factory=list)  # oldest first, each once
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # commit -> reason, time
    history: list[dict[str, Any]] = field(default_factory=list)  # oldest first, bounded
    # Set by a rollback to the branch head of that moment: automatic apply waits for a new one.
    watch_paused_at: str | None = None

    def record(self, *, commit: str | None, actor: str, action: str, result: str,
               duration_s: float, reason: str | None = None) -> None:
        entry = {"time": time.time(), "actor": actor, "action": action, "commit": commit,
                 "result": result, "duration_s": round(duration_s, 4)}
        if reason:
            entry["reason"] = reason
        self.history.append(entry)
        del self.history[:-HISTORY_LIMIT]

    def mark_applied(self, commit: str) -> None:
        self.applied = commit
        self.failed.pop(commit, None)
        if commit in self.known_good:
            self.known_good.remove(commit)
        self.known_good.append(commit)
        del self.known_good[:-HISTORY_LIMIT]

    def mark_failed(self, commit: str, reason: str) -> None:
        self.failed[commit] = {"reason": reason, "time": time.time()}

    def previous_good(self) -> str | None:
        """The known-good commit applied before the current one."""
        for commit in reversed(self.known_good):
            if commit != self.applied:
                return commit
        return None


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / STATE_FILE

    def load(self) -> HostState:
        if not self.path.exists():
            return HostState()
        data = json.loads(self.path.read_text(encoding="utf-8"))
        known = HostState.__dataclass_fields__
        return HostState(**{k: v for k, v in data.items() if k in known})

    @staticmethod
    def encode(state: HostState) -> bytes:
        """A snapshot of ``state``, taken where it is mutated (the event loop)."""
        return json.dumps(asdict(state), indent=1, sort_keys=True).encode()

    def write(self, data: bytes) -> None:
        """Replace the state file with ``data``; blocking (fsync), so callers run it off-loop."""
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.directory)
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
