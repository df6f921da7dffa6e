"""What a command asks of the config repo before it applies: the commit a rollback by revert
writes, the working tree a reload commits, the checks a setting edit makes of the model it
names. Plain blocking calls: the controller runs each on its one I/O thread, in one hop.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.loader import ConfigLoader
from ..config.repo import ConfigRepo
from ..config.settings import HostConfig
from ..errors import ApplyFailed, Code, Conflict, NotFound


def write_revert(repo: ConfigRepo, head: str, target: str, who: str,
                 author: str | None) -> str | None:
    """A commit on ``head`` with ``target``'s configuration; None if ``head`` has it."""
    if repo.tree_of(target) == repo.tree_of(head):
        return None
    # Refused before writing: a commit the branch could not move to would be left over.
    repo.check_editable(repo.changed_files(head, target))
    message = (f"Roll back to {target[:10]}\n\nThe configuration of {target} again, as a "
               f"new commit on top of {head[:10]}.\n\nRequested-by: {who}")
    return repo.write_commit(head, message, repo.identity(author), config_from=target)


def reload_head(repo: ConfigRepo, loader: ConfigLoader, commit_dirty: bool,
                message: str | None, author: str | None) -> str:
    """The commit a reload applies: the head, once the working tree's changes are committed
    (``commit_dirty``); changes left uncommitted are 409, as a reload would not serve them."""
    dirty = repo.dirty_files()
    if dirty and not commit_dirty:
        raise Conflict(
            "the config repo has uncommitted changes; commit them, or reload with "
            "commit_working_tree=true",
            code=Code.WORKING_TREE_DIRTY,
            details={"files": dirty},
        )
    if dirty:
        loader.load_working_tree()  # vet before committing
        repo.commit_working_tree(message or "Commit working-tree changes on reload",
                                 repo.identity(author))
    return repo.head()


def model_exists(name: str) -> Callable[[HostConfig], None]:
    def check(config: HostConfig) -> None:
        if name not in config.models:
            raise NotFound(f"unknown model {name!r}", code=Code.UNKNOWN_MODEL,
                           details={"models": sorted(config.models)})
    return check


def model_usable(name: str) -> Callable[[HostConfig], None]:
    """Only a model the config must serve: an optional one may be unavailable."""
    def check(config: HostConfig) -> None:
        reason = config.models[name].unavailable
        if reason and name in config.required_models:
            raise ApplyFailed(f"model {name} is unavailable: {reason}; nothing was changed",
                              code=Code.MODEL_UNAVAILABLE, details={"model": name})
    return check
