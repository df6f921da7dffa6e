"""The outputs folder: generated audio files that clients fetch by URL afterwards.

Files are written atomically (a temporary name, then a rename) so a client never reads half a
file; names are sanitised so nothing leaves the folder; retention (count and age) keeps the
disk from filling.
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadRequest, NotFound

NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,100}$")  # what clients may choose
FILE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,160}$")  # what the store serves
SUFFIXES = (".wav", ".mp3", ".opus", ".aac", ".flac", ".pcm")


@dataclass(frozen=True)
class Retention:
    max_files: int = 500
    max_age_s: float = 86400.0


class OutputStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self._lock = threading.Lock()
        self._counter = itertools.count()

    def write(self, stem: str, data: bytes, suffix: str = ".wav", timestamp: bool = True,
              retention: Retention | None = None) -> Path:
        """Store ``data`` as ``stem[_YYYYmmdd_HHMMSS_n].suffix``; return its path."""
        if not NAME_RE.match(stem):
            raise BadRequest("output_file_name may use only letters, digits and '_' "
                             "(at most 100)", code="bad_file_name")
        if suffix not in SUFFIXES:
            raise BadRequest(f"unsupported output type {suffix!r}", code="bad_file_name")
        self.folder.mkdir(parents=True, exist_ok=True)
        if timestamp:
            # The counter keeps two requests in one second from overwriting each other.
            stem = f"{stem}_{time.strftime('%Y%m%d_%H%M%S')}_{next(self._counter) % 10000}"
        target = self.folder / f"{stem}{suffix}"
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.prune(retention or Retention(), keep=target)
        return target

    def resolve(self, name: str) -> Path:
        """The stored file called ``name``; NotFound for anything else, including escapes."""
        if not FILE_RE.match(name) or name.startswith("."):
            raise NotFound(f"no output file {name!r}", code="file_not_found")
        path = (self.folder / name).resolve()
        if path.parent != self.folder or not path.is_file():
            raise NotFound(f"no output file {name!r}", code="file_not_found")
        return path

    def prune(self, retention: Retention, keep: Path | None = None) -> int:
        """Delete files past the age limit, then the oldest beyond the count limit."""
        with self._lock:
            try:
                entries = [(p.stat().st_mtime, p) for p in self.folder.iterdir()
                           if p.is_file() and p.suffix in SUFFIXES]
            except FileNotFoundError:
                return 0
            entries.sort()
            now = time.time()
            doomed = [p for mtime, p in entries if now - mtime > retention.max_age_s]
            alive = [p for _, p in entries if p not in doomed]
            doomed += alive[: max(0, len(alive) - retention.max_files)]
            removed = 0
            for path in doomed:
                if path != keep:
                    path.unlink(missing_ok=True)
                    removed += 1
            return removed


class OutputStores:
    """One store per outputs folder (the folder is a setting, so a commit may change it)."""

    def __init__(self) -> None:
        self._stores: dict[Path, OutputStore] = {}

    def get(self, folder: Path) -> OutputStore:
        store = self._stores.get(folder)
        if store is None:
            store = self._stores[folder] = OutputStore(folder)
        return store
