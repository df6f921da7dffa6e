"""The fleet's shared notes, kept in the cluster rather than on any one machine: each replica's
own status (written by the replica when it changes and at each health check), and the fleet's
ledger (written by whichever operator's CLI ran a rollout). Any replica reads them all, so one
request through any Serve proxy shows every replica, wherever Ray placed it, and any operator
machine that reaches the cluster finds the same ledger.

The store is a key-value table: Ray's GCS in a cluster (``deployment.py``), a dict in tests.
No Ray here. The ledger carries a version: a write that names an older one is refused, so two
operators' rollouts never silently overwrite each other's record.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

LEDGER_KEY = "ledger"
REPLICA_PREFIX = "replica/"


class Store(Protocol):
    """A key-value table; blocking calls (the front runs them off the event loop)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...


class MemoryStore:
    """A dict: one process's table, for tests and a front without Ray."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.data if k.startswith(prefix)]


class LedgerConflict(Exception):
    """Another operator wrote the ledger since it was read."""


class Board:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()  # one replica's check-and-write, atomic in its process

    def report(self, status: dict[str, Any]) -> None:
        """A replica's own status, stamped with when it was written."""
        self.store.put(REPLICA_PREFIX + status["replica"],
                       json.dumps({**status, "reported": time.time()}).encode())

    def forget(self, replica_id: str) -> None:
        self.store.delete(REPLICA_PREFIX + replica_id)

    def replicas(self) -> dict[str, dict[str, Any]]:
        found = {}
        for key in self.store.keys(REPLICA_PREFIX):
            raw = self.store.get(key)
            if raw is not None:
                found[key[len(REPLICA_PREFIX):]] = json.loads(raw)
        return found

    def ledger(self) -> tuple[dict[str, Any] | None, int]:
        """The fleet's ledger (the single host's state.json form) and its version; (None, 0)
        before any operator wrote one."""
        raw = self.store.get(LEDGER_KEY)
        if raw is None:
            return None, 0
        entry = json.loads(raw)
        return entry["state"], int(entry["version"])

    def write_ledger(self, state: dict[str, Any], expect: int) -> int:
        """Write ``state`` if the ledger is still at version ``expect``; the new version."""
        with self._lock:
            _, version = self.ledger()
            if version != expect:
                raise LedgerConflict(f"the fleet's ledger is at version {version}, not "
                                     f"{expect}: another operator changed it meanwhile")
            self.store.put(LEDGER_KEY, json.dumps({"state": state,
                                                   "version": version + 1}).encode())
            return version + 1
