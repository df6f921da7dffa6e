"""The outputs folder: generated audio files that clients fetch by URL afterwards.

Files are written atomically (a temporary name, then a rename) so a client never reads half a
file; names are sanitised so nothing leaves the folder; retention (count and age) keeps the
disk from filling. Retention deletes only files this host wrote: each is recorded in the
folder's record file, since the folder may hold the user's own audio too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadRequest, Code, NotFound, OutputsUnwritable

NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,100}$")  # what clients may choose
FILE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,160}$")  # what the store serves
SUFFIXES = (".wav", ".mp3", ".opus", ".aac", ".flac", ".pcm")
# The names of the files the host wrote, one a line. A dot name: never served, never pruned.
RECORD = ".alltalk-host-written"


@dataclass(frozen=True)
class Retention:
    max_files: int = 500
    max_age_s: float = 86400.0


def check_stem(stem: str) -> None:
    """Refuse a client's file name before any work is done for it."""
    if not NAME_RE.match(stem):
        raise BadRequest("output_file_name may use only letters, digits and '_' "
                         "(at most 100)", code=Code.BAD_FILE_NAME)


class OutputStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self._lock = threading.Lock()
        self._counter = itertools.count()

    def write(self, stem: str, data: bytes, suffix: str = ".wav", timestamp: bool = True,
              retention: Retention | None = None) -> Path:
        """Store ``data`` as ``stem_YYYYmmdd_HHMMSS_n.suffix`` (``stem.suffix`` without
        ``timestamp``: see ``_fixed``); return its path."""
        check_stem(stem)
        if suffix not in SUFFIXES:
            raise BadRequest(f"unsupported output type {suffix!r}", code=Code.BAD_FILE_NAME)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            target, claimed = ((self._claim(stem, suffix), True) if timestamp
                               else self._fixed(stem, suffix))
            fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)  # over the empty file that claimed the name
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                if claimed:
                    target.unlink(missing_ok=True)
                raise
            with self._lock, (self.folder / RECORD).open("a", encoding="utf-8") as record:
                record.write(target.name + "\n")
            self.prune(retention or Retention(), keep=target)
        except OSError as exc:
            raise self._unwritable(exc) from None
        return target

    def _claim(self, stem: str, suffix: str) -> Path:
        """A new ``stem_YYYYmmdd_HHMMSS_n`` name, created empty so nobody else takes it.

        The counter keeps two requests in one second apart; creating the file exclusively
        keeps apart the writers the counter does not know: Ray's replicas share this folder,
        each with its own counter, and a host restarted within the second starts at 0 again.
        """
        stamped = f"{stem}_{time.strftime('%Y%m%d_%H%M%S')}"
        for _ in range(10000):
            target = self.folder / f"{stamped}_{next(self._counter) % 10000}{suffix}"
            try:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                continue
            return target
        raise FileExistsError(f"every name {stamped}_N{suffix} is taken")

    def _fixed(self, stem: str, suffix: str) -> tuple[Path, bool]:
        """``stem.suffix`` (AllTalk's ``output_file_timestamp=false``), and whether it was
        claimed new: a file of that name this host wrote is replaced, as the client asked; one
        it did not write (the user's own, anyone's) is never touched, and the next free
        ``stem_N.suffix`` is claimed instead. AllTalk's clients read the reply's URL, not the
        name they sent."""
        with self._lock:
            ours = set(self._recorded())
        for n in range(10000):
            target = self.folder / (f"{stem}{suffix}" if n == 0 else f"{stem}_{n}{suffix}")
            if target.name in ours:
                return target, False
            try:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                continue
            return target, True
        raise FileExistsError(f"every name {stem}_N{suffix} is taken")

    def resolve(self, name: str) -> Path:
        """The stored file called ``name``; NotFound for anything else, including escapes."""
        # Audio only: the folder is a setting, and may hold other files of the owner's.
        if not FILE_RE.match(name) or name.startswith(".") or not name.endswith(SUFFIXES):
            raise NotFound(f"no output file {name!r}", code=Code.FILE_NOT_FOUND)
        path = (self.folder / name).resolve()
        if path.parent != self.folder or not path.is_file():
            raise NotFound(f"no output file {name!r}", code=Code.FILE_NOT_FOUND)
        return path

    def prune(self, retention: Retention, keep: Path | None = None) -> int:
        """Delete the host's files past the age limit, then the oldest beyond the count."""
        with self._lock:
            names = self._recorded()
            entries = []
            for name in names:
                with contextlib.suppress(OSError):  # deleted by hand meanwhile: forget it
                    entries.append(((self.folder / name).stat().st_mtime, self.folder / name))
            entries.sort()
            now = time.time()
            doomed = [p for mtime, p in entries if now - mtime > retention.max_age_s]
            alive = [p for _, p in entries if p not in doomed]
            doomed += alive[: max(0, len(alive) - retention.max_files)]
            doomed = [p for p in doomed if p != keep]
            for path in doomed:
                path.unlink(missing_ok=True)
            survivors = [p.name for _, p in entries if p not in doomed]
            if len(survivors) != len(names):
                self._rewrite_record(survivors)
            return len(doomed)

    def problem(self) -> str | None:
        """Why files cannot be written here (None when they can): tries one."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(prefix=".probe-", dir=self.folder):
                pass
        except OSError as exc:
            return self._unwritable(exc).message
        return None

    def _recorded(self) -> list[str]:
        try:
            lines = (self.folder / RECORD).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        # A name recorded twice (a name without timestamp, written again) counts once.
        return [n for n in dict.fromkeys(lines) if FILE_RE.match(n) and not n.startswith(".")]

    def _rewrite_record(self, names: list[str]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in names))
        os.replace(tmp, self.folder / RECORD)

    def _unwritable(self, exc: OSError) -> OutputsUnwritable:
        # Anonymous clients read this: the folder's path is for the log and /control/status.
        reason = exc.strerror or type(exc).__name__
        return OutputsUnwritable(f"the outputs folder cannot take files: {reason} "
                                 "(outputs.dir in the config)")


class OutputStores:
    """One store per outputs folder (the folder is a setting, so a commit may change it)."""

    def __init__(self) -> None:
        self._stores: dict[Path, OutputStore] = {}

    def get(self, folder: Path) -> OutputStore:
        store = self._stores.get(folder)
        if store is None:
            store = self._stores[folder] = OutputStore(folder)
        return store
