"""The config repository: a local git repo (path, optional subfolder, branch), via GitPython.

This module owns every git operation the host performs: naming commits, reading their trees in
isolation, the branch log, and the commits the host itself writes. GitPython objects are not
thread-safe, so one lock serialises them; callers run these methods off the event loop.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import git

from ..errors import BadRequest, Conflict, HostError, NotFound

HOST_ACTOR = git.Actor("alltalk-host", "alltalk-host@localhost")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@{}~^-]*$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{4,40}$")


@dataclass(frozen=True)
class CommitInfo:
    hash: str
    author: str
    email: str
    date: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "commit": self.hash,
            "short": self.hash[:10],
            "author": self.author,
            "email": self.email,
            "date": self.date,
            "message": self.message,
        }


def actor(name: str | None) -> git.Actor:
    """The git identity for a change made on someone's behalf."""
    if not name:
        return HOST_ACTOR
    safe = re.sub(r"[<>\n]", "", name)[:80] or HOST_ACTOR.name
    return git.Actor(safe, HOST_ACTOR.email)


class ConfigRepo:
    def __init__(self, path: Path, *, subdir: str = "", branch: str = "main") -> None:
        self.path = Path(path).resolve()
        self.subdir = subdir.strip("/")
        self.branch = branch
        self._lock = threading.Lock()
        try:
            self._repo = git.Repo(self.path, search_parent_directories=False)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise BadRequest(
                f"config repo {self.path} is not a git repository; create one with "
                f"'alltalk-host config init {self.path}'",
                code="not_a_git_repo",
            ) from None
        if branch not in [h.name for h in self._repo.heads]:
            raise BadRequest(
                f"config repo {self.path} has no branch {branch!r}", code="branch_not_found"
            )

    def close(self) -> None:
        """Stop the git helper processes GitPython keeps running."""
        with self._lock:
            self._repo.close()

    # --- reading -------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """Full hash of a commit named by full or short hash, branch or tag."""
        ref = (ref or "").strip()
        if not ref or not _REF_RE.match(ref):
            raise BadRequest(f"{ref!r} is not a commit name", code="bad_commit_name")
        with self._lock:
            if len(ref) == 40 and _HEX_RE.match(ref):
                # A full hash: one in-process object lookup, no git subprocess.
                try:
                    if self._repo.odb.info(bytes.fromhex(ref)).type == b"commit":
                        return ref.lower()
                except (ValueError, git.BadObject, git.BadName):
                    pass
                raise NotFound(f"no commit {ref!r} in config repo {self.path}",
                               code="unknown_commit")
            if _HEX_RE.match(ref):
                candidates = self._commits_with_prefix(ref)
                if len(candidates) > 1:
                    raise Conflict(
                        f"short hash {ref!r} is ambiguous: it matches {len(candidates)} commits",
                        code="ambiguous_commit",
                        details={"candidates": sorted(candidates)},
                    )
            try:
                return self._repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
            except git.GitCommandError:
                raise NotFound(
                    f"no commit {ref!r} in config repo {self.path}", code="unknown_commit"
                ) from None

    def _commits_with_prefix(self, prefix: str) -> set[str]:
        try:
            out = self._repo.git.rev_parse(f"--disambiguate={prefix.lower()}")
        except git.GitCommandError:
            return set()
        found = set()
        for sha in out.split():
            if self._repo.git.cat_file("-t", sha) == "commit":
                found.add(sha)
        return found

    def head(self) -> str:
        with self._lock:
            return self._repo.heads[self.branch].commit.hexsha

    def log(self, limit: int = 50) -> list[CommitInfo]:
        with self._lock:
            return [
                CommitInfo(
                    hash=c.hexsha,
                    author=c.author.name or "",
                    email=c.author.email or "",
                    date=datetime.fromtimestamp(c.committed_date, UTC).isoformat(),
                    message=c.message.strip(),
                )
                for c in self._repo.iter_commits(self.branch, max_count=limit)
            ]

    def materialise(self, commit: str, dest: Path) -> Path:
        """Write the config folder of ``commit`` into ``dest``: never the live working tree.

        Files named ``*.local.*`` are left out: Dynaconf would merge them as an extra layer, and
        the only host-local layer lives outside git.
        """
        with self._lock:
            tree = self._repo.commit(commit).tree
            if self.subdir:
                try:
                    tree = tree / self.subdir
                except KeyError:
                    raise HostError(
                        f"commit {commit[:10]} has no folder {self.subdir!r}",
                        code="config_invalid",
                        status=422,
                    ) from None
            for blob in tree.traverse():
                if blob.type != "blob" or ".local." in blob.name:
                    continue
                rel = PurePosixPath(blob.path).relative_to(tree.path) if tree.path else blob.path
                target = dest / str(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob.data_stream.read())
        return dest

    def read_file(self, commit: str, name: str) -> str:
        """One file of the config folder at ``commit``."""
        path = f"{self.subdir}/{name}" if self.subdir else name
        with self._lock:
            return self._repo.git.show(f"{commit}:{path}")

    def dirty_files(self) -> list[str]:
        """Uncommitted changes (untracked files included) in the config folder."""
        with self._lock:
            if self._repo.bare:
                return []
            out = self._repo.git.status("--porcelain", "--untracked-files=all", "--", self._scope())
        return sorted(line[3:] for line in out.splitlines() if line.strip())

    # --- writing -------------------------------------------------------------------------

    def commit_working_tree(self, message: str, author: git.Actor) -> str:
        """Commit every change in the config folder (and nothing outside it), as ``author``."""
        with self._lock:
            self._check_writable()
            self._repo.git.add("-A", "--", self._scope())
            return self._commit(message, author, self._scope())

    def commit_file(self, name: str, content: str, message: str, author: git.Actor,
                    expected_head: str) -> str:
        """Write one file of the config folder and commit just that file on the branch.

        Refuses when the branch moved since ``expected_head`` (the commit the change was
        validated against) or when that file has uncommitted edits that would be lost.
        """
        rel = f"{self.subdir}/{name}" if self.subdir else name
        with self._lock:
            self._check_writable()
            if self._repo.heads[self.branch].commit.hexsha != expected_head:
                raise Conflict(
                    "the branch moved while the change was prepared; try again",
                    code="branch_moved",
                )
            if self._repo.git.status("--porcelain", "--", rel).strip():
                raise Conflict(
                    f"{rel} has uncommitted changes in {self.path}; commit or discard them first",
                    code="working_tree_dirty",
                    details={"files": [rel]},
                )
            (self.path / rel).write_text(content, encoding="utf-8")
            self._repo.git.add("--", rel)
            return self._commit(message, author, rel)

    def copy_working_tree(self, dest: Path) -> Path:
        """The config folder as it is on disk now, for validating it before it is committed."""
        src = self.path / self.subdir if self.subdir else self.path
        shutil.copytree(
            src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "*.local.*")
        )
        return dest

    def fetch_and_fast_forward(self, remote: str) -> str:
        """Fetch the branch from ``remote``; fast-forward the local branch when that is safe."""
        with self._lock:
            try:
                self._repo.remote(remote).fetch(self.branch)
            except (ValueError, git.GitCommandError) as exc:
                raise HostError(f"fetch from {remote!r} failed: {exc}",
                                code="fetch_failed") from exc
            upstream = f"{remote}/{self.branch}"
            head = self._repo.head
            on_branch = not head.is_detached and self._repo.active_branch.name == self.branch
            if on_branch and not self._repo.is_dirty(untracked_files=False):
                try:
                    self._repo.git.merge("--ff-only", upstream)
                except git.GitCommandError as exc:
                    raise HostError(
                        f"cannot fast-forward {self.branch} to {upstream}: {exc.stderr.strip()}",
                        code="fetch_failed",
                    ) from exc
            return self._repo.heads[self.branch].commit.hexsha

    def _scope(self) -> str:
        return self.subdir or "."

    def _check_writable(self) -> None:
        if self._repo.bare:
            raise Conflict("the config repo is bare: push commits to it instead", code="bare_repo")
        if self._repo.head.is_detached or self._repo.active_branch.name != self.branch:
            raise Conflict(
                f"the config repo's working tree is not on branch {self.branch!r}",
                code="wrong_branch",
            )

    def _commit(self, message: str, author: git.Actor, pathspec: str) -> str:
        """Commit only ``pathspec``: changes the user staged elsewhere stay staged, uncommitted."""
        if not self._repo.git.diff("--cached", "--name-only", "--", pathspec).strip():
            raise Conflict("nothing to commit", code="nothing_to_commit")
        with self._repo.git.custom_environment(
            GIT_COMMITTER_NAME=HOST_ACTOR.name, GIT_COMMITTER_EMAIL=HOST_ACTOR.email
        ):
            self._repo.git.commit(
                "--only", "-m", message, f"--author={author.name} <{author.email}>",
                "--", pathspec,
            )
        return self._repo.head.commit.hexsha


def init_repo(path: Path, template: Path, branch: str = "main") -> str:
    """Create a config repo at ``path`` from the template folder, with an initial commit."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise Conflict(f"{path} exists and is not empty", code="path_exists")
    shutil.copytree(template, path, dirs_exist_ok=True)
    repo = git.Repo.init(path, initial_branch=branch)
    repo.git.add("-A")
    commit = repo.index.commit(
        "Initial configuration from the alltalk-host template",
        author=HOST_ACTOR,
        committer=HOST_ACTOR,
    )
    repo.close()
    return commit.hexsha
