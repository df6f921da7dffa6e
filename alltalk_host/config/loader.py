"""Loading a commit's configuration: a private copy of its tree, then ``build_config``.

The copies live in a work folder of the host's own (``<state dir>/tmp``), so a host killed in
the middle of a load leaves them where the next start-up removes them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..plugins import BackendCatalog
from .repo import ConfigRepo
from .settings import HostConfig, WatchSettings, build_config, watch_settings_of


class ConfigLoader:
    """Builds a HostConfig for any commit of the repo, with the two extra layers on top."""

    def __init__(self, repo: ConfigRepo, catalog: BackendCatalog,
                 local_file: Path | None = None, work_dir: Path | None = None,
                 cache_dir: Path | None = None, state_dir: Path | None = None) -> None:
        self.repo = repo
        self.catalog = catalog
        self.local_file = local_file
        # Private copies of commits live here while they load; a killed host leaves them
        # behind, so start-up empties it (clear_work_dir).
        self.work_dir = work_dir
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "alltalk-cache"
        # Folders a commit's models_dir and outputs.dir may neither be nor hold (paths.py).
        self.own_dirs = tuple(p for p in (state_dir, repo.path,
                                          local_file.parent if local_file else None) if p)

    def clear_work_dir(self) -> int:
        """Remove copies left by a host that was killed while loading a commit."""
        if self.work_dir is None or not self.work_dir.is_dir():
            return 0
        removed = 0
        for path in self.work_dir.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                _remove_tree(path)
                removed += 1
        return removed

    def load(self, commit: str, replace: Mapping[str, str | bytes | None] | None = None
             ) -> HostConfig:
        """The config of ``commit``; ``replace`` swaps file contents first (to vet an edit:
        text, bytes, or None for a file removed)."""
        with self._tmp() as tmp:
            tree = self.repo.materialise(commit, Path(tmp))
            for name, content in (replace or {}).items():
                target = tree / name
                if content is None:
                    target.unlink(missing_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content, encoding="utf-8")
            return build_config(tree, commit, self.catalog, self.local_file, self.cache_dir,
                                self.own_dirs)

    def watch_settings(self, commit: str) -> WatchSettings:
        """The ``[watch]`` settings of ``commit``, validated on their own: what the branch
        watcher uses while nothing serves (change/watch.py)."""
        with self._tmp() as tmp:
            tree = self.repo.materialise(commit, Path(tmp))
            return watch_settings_of(tree, commit, self.local_file)

    def load_working_tree(self) -> HostConfig:
        """The config as it stands uncommitted on disk (validated before it is committed)."""
        with self._tmp() as tmp:
            tree = self.repo.copy_working_tree(Path(tmp))
            return build_config(tree, "working-tree", self.catalog, self.local_file,
                                self.cache_dir, self.own_dirs)

    def _tmp(self) -> tempfile.TemporaryDirectory[str]:
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=self.work_dir)


_TMP_PREFIX = "alltalk-config-"


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
