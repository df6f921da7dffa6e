"""Changing one setting by a commit: what the API's model switch and setting toggles do.

An edit starts from the applied commit, changes the key in the file and section that define it
(tomlkit keeps comments and layout), is vetted like any commit, and is written as a commit that
is on no branch yet. The caller applies that commit by hash and moves the branch to it only if
the apply succeeds, so a failed change leaves the branch, the index and the working tree as they
were. Runs on the I/O thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import tomlkit

from ..errors import Code, Conflict
from .loader import ConfigLoader
from .repo import ConfigRepo
from .settings import HostConfig
from .values import flatten

_MISSING = object()


@dataclass(frozen=True)
class Edit:
    commit: str  # the new commit, on no branch until it has been applied
    base: str  # the commit it was made from: the applied commit and the branch head
    config: HostConfig  # the new commit's config, vetted


@dataclass(frozen=True)
class _Change:
    base: str
    file: str
    content: str
    config: HostConfig  # vetted; its commit is still ``base``


class SettingsEditor:
    def __init__(self, repo: ConfigRepo, loader: ConfigLoader) -> None:
        self.repo = repo
        self.loader = loader

    def edit(self, applied: HostConfig | None, key: str, value: Any, message: str,
             who: str, author: str | None, check: Callable[[HostConfig], None] | None = None,
             vet: Callable[[HostConfig], None] | None = None) -> Edit | None:
        """The commit setting ``key`` (dotted) to ``value``; None when it already has it.

        ``check`` vets the config before and after the change (say, that a model exists),
        ``vet`` the changed one only (that the model could load: checked afresh). Refused
        with ``branch_diverged`` when the branch head is not the applied commit: an edit of
        what serves must not carry unapplied (or rolled-back) changes.
        """
        change = self._change(applied, key, value, check, vet)
        if change is None:
            return None
        # The trailer keeps who asked, whoever the git author is.
        commit = self.repo.write_commit(change.base, f"{message}\n\nRequested-by: {who}",
                                        self.repo.identity(author),
                                        files={change.file: change.content})
        return Edit(commit=commit, base=change.base, config=replace(change.config, commit=commit))

    def preview(self, applied: HostConfig | None, key: str, value: Any,
                check: Callable[[HostConfig], None] | None = None,
                vet: Callable[[HostConfig], None] | None = None) -> HostConfig | None:
        """The vetted config ``edit`` would commit, with nothing written (to plan a switch);
        None when ``key`` already has ``value``. Refused as ``edit`` would refuse it."""
        change = self._change(applied, key, value, check, vet)
        return None if change is None else change.config

    def edit_files(self, applied: HostConfig | None, files: Mapping[str, str | bytes | None],
                   message: str, who: str, author: str | None,
                   vet: Callable[[HostConfig], None] | None = None) -> Edit:
        """The commit that writes ``files`` (text, bytes, None: removed) over the applied
        commit, vetted like any commit (``vet`` too); refused like ``edit`` when the branch
        has moved on from what serves. The voice library's uploads and removals."""
        head = self._base(applied)
        self.repo.check_editable(list(files))
        vetted = self.loader.load(head, replace=files)
        if vet is not None:
            vet(vetted)
        commit = self.repo.write_commit(head, f"{message}\n\nRequested-by: {who}",
                                        self.repo.identity(author), files=files)
        return Edit(commit=commit, base=head, config=replace(vetted, commit=commit))

    def _base(self, applied: HostConfig | None) -> str:
        """The branch head, which an edit starts from; Conflict if it is not what serves."""
        head = self.repo.head()
        if applied is not None and applied.commit != head:
            raise Conflict(
                f"branch {self.repo.branch} is at {head[:10]} but {applied.commit[:10]} is "
                f"applied, so a change made now would carry changes that do not serve. Apply "
                f"the branch head (alltalk-host config apply {head[:10]}) or bring the branch "
                f"back to what serves (alltalk-host config rollback {applied.commit[:10]}), "
                "then try again",
                code=Code.BRANCH_DIVERGED,
                details={"branch_head": head, "applied": applied.commit},
            )
        return head

    def _change(self, applied: HostConfig | None, key: str, value: Any,
                check: Callable[[HostConfig], None] | None,
                vet: Callable[[HostConfig], None] | None) -> _Change | None:
        head = self._base(applied)
        config = applied if applied is not None else self.loader.load(head)
        if check is not None:
            check(config)
        if flatten(config.values).get(key, _MISSING) == value:
            return None
        layer = config.layer_for_edit(key)
        if not layer.in_repo:
            raise Conflict(
                f"{key} is set by the {layer} layer, which overrides the repo; remove it "
                "there to change it through the API",
                code=Code.SETTING_OVERRIDDEN,
            )
        self.repo.check_editable([layer.file])
        doc = tomlkit.parse(self.repo.read_file(head, layer.file))
        table: Any = doc
        for part in [layer.section, *key.split(".")[:-1]]:
            if part not in table:
                table[part] = tomlkit.table()
            table = table[part]
        table[key.rsplit(".", 1)[-1]] = value
        content = tomlkit.dumps(doc)
        vetted = self.loader.load(head, replace={layer.file: content})
        if flatten(vetted.values).get(key) != value:
            raise Conflict(f"{key} is overridden by a higher layer",
                           code=Code.SETTING_OVERRIDDEN)
        for test in (check, vet):
            if test is not None:
                test(vetted)
        return _Change(base=head, file=layer.file, content=content, config=vetted)
