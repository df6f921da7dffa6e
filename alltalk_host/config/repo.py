"""The config repository: a local git repo (path, optional subfolder, branch), via GitPython.

Together with ``repo_write.py`` (the commits the host writes, and moving the branch) this owns
every git operation the host performs; this half reads: naming commits, reading their trees in
isolation, the branch log, the state of the working tree. GitPython objects are not
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

from ..errors import BadRequest, Code, Conflict, HostError, NotFound
from .repo_write import HOST_ACTOR, RepoWriting

_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@{}~^-]*$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{4,40}$")
# ``watch.remote`` comes from a commit: a remote *name* configured in the repo (its URL is the
# owner's, in .git/config), never a URL or anything git could read as an option.
REMOTE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
REMOTE_NAME_RULE = ("a remote name configured in the config repo (like 'origin'): letters, "
                    "digits, '_', '-' and single '.' inside, at most 64; not a URL")


def is_remote_name(value: str) -> bool:
    return len(value) <= 64 and REMOTE_NAME_RE.match(value) is not None


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


class ConfigRepo(RepoWriting):
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
                code=Code.NOT_A_GIT_REPO,
            ) from None
        if branch not in [h.name for h in self._repo.heads]:
            raise BadRequest(
                f"config repo {self.path} has no branch {branch!r}", code=Code.BRANCH_NOT_FOUND
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
            raise BadRequest(f"{ref!r} is not a commit name", code=Code.BAD_COMMIT_NAME)
        with self._lock:
            if len(ref) == 40 and _HEX_RE.match(ref):
                # A full hash: one in-process object lookup, no git subprocess.
                try:
                    if self._repo.odb.info(bytes.fromhex(ref)).type == b"commit":
                        return ref.lower()
                except (ValueError, git.BadObject, git.BadName):
                    pass
                raise NotFound(f"no commit {ref!r} in config repo {self.path}",
                               code=Code.UNKNOWN_COMMIT)
            if _HEX_RE.match(ref):
                candidates = self._commits_with_prefix(ref)
                if len(candidates) > 1:
                    raise Conflict(
                        f"short hash {ref!r} is ambiguous: it matches {len(candidates)} commits",
                        code=Code.AMBIGUOUS_COMMIT,
                        details={"candidates": sorted(candidates)},
                    )
            try:
                return self._repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
            except git.GitCommandError:
                raise NotFound(
                    f"no commit {ref!r} in config repo {self.path}", code=Code.UNKNOWN_COMMIT
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

    def check_remote(self, remote: str) -> None:
        """Refuse a remote that is not a valid name or not configured in this repo."""
        if not is_remote_name(remote):
            raise HostError(f"watch.remote {remote[:64]!r} is not {REMOTE_NAME_RULE}",
                            code=Code.FETCH_FAILED)
        with self._lock:
            names = {r.name for r in self._repo.remotes}
        if remote not in names:
            raise HostError(f"the config repo has no remote named {remote!r} (it has "
                            f"{sorted(names) or 'none'}): add it with 'git remote add'",
                            code=Code.FETCH_FAILED)

    def head(self) -> str:
        with self._lock:
            return self._repo.heads[self.branch].commit.hexsha

    def added_in(self, commit: str, folder: str) -> dict[str, str]:
        """The commit that last added each file now under ``folder`` (in the config folder)
        as of ``commit``: file name in the config folder -> hash."""
        with self._lock:
            out = self._repo.git.log("--format=%H", "--name-only", "--diff-filter=A", commit,
                                     "--", self._path(folder))
        added: dict[str, str] = {}
        current = ""
        prefix = f"{self.subdir}/" if self.subdir else ""
        for line in out.splitlines():
            if len(line) == 40 and all(c in "0123456789abcdef" for c in line):
                current = line
            elif line and current:
                added.setdefault(line.removeprefix(prefix), current)  # newest first
        return added

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
                        code=Code.CONFIG_INVALID,
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
        """One file of the config folder at ``commit``, exactly as committed."""
        with self._lock:
            blob = self._repo.commit(commit).tree / self._path(name)
            return blob.data_stream.read().decode("utf-8")

    def tree_of(self, commit: str) -> str:
        with self._lock:
            return self._repo.commit(commit).tree.hexsha

    def exists(self, commit: str) -> bool:
        """Whether ``commit`` (a full hash) is a commit in this repo (after a force-push the
        one a host remembers may be gone)."""
        try:
            self.resolve(commit)
        except HostError:
            return False
        return True

    def dirty_files(self) -> list[str]:
        """Uncommitted changes (untracked files included) in the config folder; ignored files
        and ``*.local.*`` files are never part of the config, so they are not listed."""
        with self._lock:
            if self._repo.bare:
                return []
            out = self._repo.git.status("--porcelain", "--untracked-files=all", "--",
                                        *self._scope())
        return sorted(line[3:] for line in out.splitlines() if line.strip())

    def _path(self, name: str) -> str:
        return f"{self.subdir}/{name}" if self.subdir else name

    def _scope(self) -> list[str]:
        return [self.subdir or ".", ":(exclude,glob)**/*.local.*"]


def init_repo(path: Path, template: Path, branch: str = "main") -> str:
    """Create a config repo at ``path`` from the template folder, with an initial commit."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise Conflict(f"{path} exists and is not empty", code=Code.PATH_EXISTS)
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
