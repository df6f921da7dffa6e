"""Writing to the config repo: the commits the host makes, and moving the branch to them.

Setting edits and rollbacks are built by plumbing (blob, a temporary index, commit-tree): the
working tree, the user's index and every ref stay as they are while a commit is made, so a
crash, a failing hook or a stale index.lock cannot leave the repo half-edited. A commit joins
the branch only through ``move_branch``, a compare-and-swap of the ref after the commit has been
applied, which brings a checkout of the branch along as ``git merge --ff`` would.

A mixin of ``ConfigRepo``: it shares that class's GitPython handle and the lock around it.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import git
from gitdb.base import IStream

from ..errors import Code, Conflict, HostError

HOST_ACTOR = git.Actor("alltalk-host", "alltalk-host@localhost")


class RepoWriting:
    path: Path
    subdir: str
    branch: str
    _repo: git.Repo
    _lock: threading.Lock

    def _path(self, name: str) -> str:
        raise NotImplementedError

    def _scope(self) -> list[str]:
        raise NotImplementedError

    # --- writing: the user's working tree ------------------------------------------------

    def commit_working_tree(self, message: str, author: git.Actor) -> str:
        """Commit every change in the config folder (and nothing outside it), as ``author``.

        The user's own changes, so an ordinary ``git commit`` with their hooks; if git refuses
        (a hook fails), the changes are unstaged again and the reason is the error."""
        with self._lock:
            self._check_checked_out()
            self._repo.git.add("-A", "--", *self._scope())
            try:
                return self._commit(message, author, self._scope())
            except git.GitCommandError as exc:
                self._repo.git.reset("-q", "--", *self._scope())
                detail = (exc.stderr or exc.stdout or "").strip() or str(exc)
                raise Conflict(f"git refused the commit: {detail}",
                               code=Code.COMMIT_REFUSED) from None

    def copy_working_tree(self, dest: Path) -> Path:
        """The config folder as it is on disk now, for validating it before it is committed."""
        src = self.path / self.subdir if self.subdir else self.path
        shutil.copytree(
            src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "*.local.*")
        )
        return dest

    # --- writing: commits the host makes, by plumbing -------------------------------------
    # These never touch the working tree or the user's index while they build a commit, so a
    # crash, a failing hook or a stale index.lock cannot leave the repo half-edited. A commit
    # joins the branch only through move_branch, after it has been applied.

    def check_editable(self, names: list[str]) -> None:
        """Refuse before an edit that move_branch could not carry into the checkout."""
        with self._lock:
            if not self._checked_out():
                return
            lock = Path(self._repo.git_dir) / "index.lock"
            if lock.exists():
                raise Conflict(
                    f"{lock} exists: another git command is running in the config repo, or "
                    "one crashed; if none is running, delete the file and try again",
                    code=Code.REPO_LOCKED,
                )
            paths = [self._path(n) for n in names]
            # Not stripped: " M name" starts with a space, and the name at a fixed column.
            changed = [line[3:] for line in self._repo.git.status(
                "--porcelain", "--", *paths).splitlines() if line.strip()]
            if changed:
                raise Conflict(
                    f"{', '.join(paths)} has uncommitted changes in {self.path}; commit or "
                    "discard them first",
                    code=Code.WORKING_TREE_DIRTY,
                    details={"files": changed},
                )

    def write_commit(self, parent: str, message: str, author: git.Actor, *,
                     files: Mapping[str, str | bytes | None] | None = None,
                     config_from: str | None = None) -> str:
        """A commit on top of ``parent`` that is on no branch: ``parent``'s tree with ``files``
        (names in the config folder) replaced (text, bytes, or None: removed), or with the
        config folder as it is in ``config_from`` (a rollback that writes the old
        configuration as a new commit)."""
        with self._lock, tempfile.TemporaryDirectory(prefix="alltalk-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if config_from is not None and not self.subdir:
                tree = self._repo.commit(config_from).tree.hexsha
            else:
                self._repo.git.read_tree(parent, env=env)
                if config_from is not None:  # only the config folder goes back in time
                    self._repo.git.rm("--cached", "-r", "-q", "--ignore-unmatch", "--",
                                      self.subdir, env=env)
                    self._repo.git.read_tree(f"--prefix={self.subdir}/",
                                             f"{config_from}:{self.subdir}", env=env)
                for name, content in (files or {}).items():
                    if content is None:
                        self._repo.git.update_index("--force-remove", "--", self._path(name),
                                                    env=env)
                        continue
                    data = content.encode("utf-8") if isinstance(content, str) else content
                    blob = self._repo.odb.store(IStream("blob", len(data), io.BytesIO(data)))
                    self._repo.git.update_index(
                        "--add", "--cacheinfo", f"100644,{blob.hexsha.decode()},{self._path(name)}",
                        env=env)
                tree = self._repo.git.write_tree(env=env)
            return self._repo.git.commit_tree(tree, "-p", parent, "-m", message,
                                              env=_identity_env(author))

    def changed_files(self, old: str, new: str) -> list[str]:
        """Names (in the config folder) of files that differ between two commits."""
        with self._lock:
            out = self._repo.git.diff("--name-only", old, new, "--", self.subdir or ".")
        prefix = f"{self.subdir}/" if self.subdir else ""
        return [line[len(prefix):] for line in out.splitlines() if line.strip()]

    def move_branch(self, expected: str, new: str) -> None:
        """Point the branch at ``new`` if it still points at ``expected`` (compare-and-swap),
        and bring a checkout of the branch along, as ``git merge --ff`` would.

        Raises Conflict (``branch_moved``) when the branch is elsewhere; a git error when the
        branch moved but its checkout could not follow."""
        with self._lock:
            try:
                self._repo.git.update_ref(f"refs/heads/{self.branch}", new, expected,
                                          "-m", "alltalk-host: applied")
            except git.GitCommandError:
                now = self._repo.heads[self.branch].commit.hexsha
                if now == new:
                    self._sync_checkout(expected, new)
                    return
                raise Conflict(
                    f"branch {self.branch} moved to {now[:10]} while {new[:10]} was applied; "
                    "it was left there",
                    code=Code.BRANCH_MOVED,
                    details={"branch_head": now, "applied": new},
                ) from None
            self._sync_checkout(expected, new)

    def finish_branch_move(self, expected: str, new: str) -> str:
        """Complete a move_branch that a killed host left half done; what was found."""
        with self._lock:
            head = self._repo.heads[self.branch].commit.hexsha
        if head == expected:
            self.move_branch(expected, new)
            return "moved"
        if head != new:
            return "branch moved elsewhere since"
        with self._lock:
            if self._checked_out() and self._index_tree() == self._repo.commit(
                    expected).tree.hexsha:
                self._sync_checkout(expected, new)
                return "checkout synced"
        return "already done"

    def identity(self, name: str | None) -> git.Actor:
        """The author of a commit the host writes: the caller when named, else the repo's
        own user.name / user.email, else the host."""
        if name:
            return actor(name)
        with self._lock:
            # The repo's own config only: a global identity names whoever set up the machine,
            # not someone who made this change.
            reader = self._repo.config_reader("repository")
            user = reader.get_value("user", "name", "") or ""
            email = reader.get_value("user", "email", "") or ""
        return git.Actor(str(user), str(email or HOST_ACTOR.email)) if user else HOST_ACTOR

    def fast_forward(self, remote: str) -> str:
        """Move the local branch to what was fetched from ``remote`` when that is a fast
        forward (and, if it is checked out, the working tree has no changes in the way)."""
        upstream = f"{remote}/{self.branch}"
        with self._lock:
            try:  # by its full ref, then by hash: nothing from the config reaches an argument
                target = self._repo.commit(f"refs/remotes/{upstream}").hexsha
            except (ValueError, git.BadName) as exc:
                raise HostError(f"nothing fetched from {upstream}: {exc}",
                                code=Code.FETCH_FAILED) from None
            if self._checked_out():
                if not self._repo.is_dirty(untracked_files=False):
                    try:
                        self._repo.git.merge("--ff-only", target)
                    except git.GitCommandError as exc:
                        raise HostError(
                            f"cannot fast-forward {self.branch} to {upstream}: "
                            f"{exc.stderr.strip()}", code=Code.FETCH_FAILED) from exc
            else:
                head = self._repo.heads[self.branch].commit.hexsha
                if head != target and self._repo.is_ancestor(head, target):
                    self._repo.git.update_ref(f"refs/heads/{self.branch}", target, head)
            return self._repo.heads[self.branch].commit.hexsha


    def _checked_out(self) -> bool:
        """Whether this repo has a working tree whose HEAD is the branch."""
        if self._repo.bare:
            return False
        head = self._repo.head
        return not head.is_detached and head.ref.name == self.branch

    def _check_checked_out(self) -> None:
        if self._repo.bare:
            raise Conflict("the config repo is bare: push commits to it instead",
                           code=Code.BARE_REPO)
        if not self._checked_out():
            raise Conflict(
                f"the config repo's working tree is not on branch {self.branch!r}",
                code=Code.WRONG_BRANCH,
            )

    def _index_tree(self) -> str:
        return self._repo.git.write_tree()

    def _sync_checkout(self, old: str, new: str) -> None:
        if self._checked_out():
            # A two-way merge of the index and files from old to new: what checkout does.
            self._repo.git.read_tree("-m", "-u", old, new)

    def _commit(self, message: str, author: git.Actor, pathspec: list[str]) -> str:
        """Commit only ``pathspec``: changes the user staged elsewhere stay staged, uncommitted."""
        if not self._repo.git.diff("--cached", "--name-only", "--", *pathspec).strip():
            raise Conflict("nothing to commit", code=Code.NOTHING_TO_COMMIT)
        with self._repo.git.custom_environment(
            GIT_COMMITTER_NAME=HOST_ACTOR.name, GIT_COMMITTER_EMAIL=HOST_ACTOR.email
        ):
            self._repo.git.commit(
                "--only", "-m", message, f"--author={author.name} <{author.email}>",
                "--", *pathspec,
            )
        return self._repo.head.commit.hexsha


def actor(name: str | None) -> git.Actor:
    """The git identity for a change made on someone's behalf."""
    if not name:
        return HOST_ACTOR
    safe = re.sub(r"[<>\n]", "", name)[:80] or HOST_ACTOR.name
    return git.Actor(safe, HOST_ACTOR.email)


def _identity_env(author: git.Actor) -> dict[str, str]:
    return {"GIT_AUTHOR_NAME": author.name or HOST_ACTOR.name,
            "GIT_AUTHOR_EMAIL": author.email or HOST_ACTOR.email,
            "GIT_COMMITTER_NAME": HOST_ACTOR.name, "GIT_COMMITTER_EMAIL": HOST_ACTOR.email}
