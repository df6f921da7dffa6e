"""The branch watcher: with ``[watch] enabled``, apply new commits on the branch as they appear.

Every ``interval_s`` it fetches the remote (when ``watch.remote`` is set) and looks at the
branch head. A new head is applied with the same checks as a manual apply. A commit that failed
is never retried automatically, and after a rollback it waits until the branch has a commit it
did not have then. The fetch is a child process with a timeout, outside the I/O thread: a
remote that hangs cannot stall applies or state saves, and stopping the host kills it.

Its settings are the serving config's ``[watch]``. While nothing serves (the first commit
failed, and no earlier one ever served) there is no such config, yet a pushed fix must still
apply: the watcher then reads ``[watch]`` from the branch head itself, validated on its own
(with the host-local file and ``ALLTALK_`` variables on top, as always), so the commit that
failed for another reason still says where to fetch from and how often. When even those cannot
be read it uses the defaults: the local branch only, polling off, a signed webhook still looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any

from ..config.repo import ConfigRepo
from ..config.settings import WatchSettings
from ..errors import Code, HostError
from ..serving.registry import ModelRegistry
from .ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class WatchStatus:
    enabled: bool = False
    remote: str = ""
    last_checked: float | None = None
    branch_head: str | None = None
    last_error: str | None = None
    paused_at: str | None = None


# While nothing serves and the branch head's own [watch] cannot be read.
DEFAULT_WATCH = WatchSettings(enabled=False, interval_s=5.0, remote="", fetch_timeout_s=30.0)
_IDLE_S = 1.0  # the first look while nothing serves, before the head's settings are read


class BranchWatcher:
    def __init__(self, repo: ConfigRepo, ledger: Ledger, registry: ModelRegistry,
                 io: Executor, apply: Callable[[str], Awaitable[Any]],
                 busy: Callable[[], bool],
                 settings_of: Callable[[str], WatchSettings] | None = None) -> None:
        """``settings_of(commit)``: the ``[watch]`` settings of a commit, read on their own
        (used while nothing serves)."""
        self.repo = repo
        self._settings_of = settings_of
        self._head_settings: tuple[str, WatchSettings] | None = None  # (head, its [watch])
        self.ledger = ledger
        self.registry = registry
        self._io = io
        self._apply = apply
        self._busy = busy
        self.status = WatchStatus()
        self._poked: asyncio.Task[None] | None = None
        self._again = False  # a push arrived while a poked look was running

    def poke(self) -> bool:
        """Look at the branch now (a push said it moved), whatever the polling interval.

        Pushes that arrive while a look or an apply runs coalesce: one more look follows,
        which applies the newest head. True when this started a look, False when it joined
        one already under way."""
        if self._poked is not None and not self._poked.done():
            self._again = True
            return False
        self._poked = asyncio.ensure_future(self._look_until_quiet())
        return True

    async def _look_until_quiet(self) -> None:
        while True:
            self._again = False
            while self._busy():  # an apply is running: look once it is done
                await asyncio.sleep(0.05)
            try:
                await self.check(pushed=True)
            except Exception:
                log.exception("watch: a look at the branch after a push failed")
            if not self._again:
                return

    def close(self) -> None:
        if self._poked is not None:
            self._poked.cancel()

    def describe(self) -> dict[str, Any]:
        return {**asdict(self.status), "paused_at": self.ledger.watch_paused_at}

    async def run(self) -> None:
        while True:
            serving = self.registry.serving
            if serving is not None:
                interval = serving.config.watch.interval_s
            else:  # the head's own polling interval, once it is known
                known = self._head_settings
                interval = known[1].interval_s if known else _IDLE_S
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:
                log.exception("watch check failed")

    async def settings(self) -> WatchSettings:
        """The serving config's ``[watch]``; while nothing serves, the branch head's own."""
        serving = self.registry.serving
        if serving is not None:
            return serving.config.watch
        if self._settings_of is None:
            return DEFAULT_WATCH
        loop = asyncio.get_running_loop()
        head = await loop.run_in_executor(self._io, self.repo.head)
        if self._head_settings is None or self._head_settings[0] != head:
            try:
                found = await loop.run_in_executor(self._io, self._settings_of, head)
            except HostError as exc:
                log.warning("watch: nothing serves and the [watch] settings of %s do not "
                            "validate (%s): using the defaults", head[:10], exc.message)
                found = DEFAULT_WATCH
            self._head_settings = (head, found)  # read once per head, not once a second
        return self._head_settings[1]

    async def check(self, pushed: bool = False) -> None:
        """One look at the branch (after fetching the remote, when set): apply a new head.

        ``pushed``: a signed webhook said the branch moved, so look even when polling is
        off."""
        try:
            settings = await self.settings()
        except HostError as exc:
            self.status.last_error = exc.message
            return
        if not (settings.enabled or pushed):
            self.status.enabled = False
            return
        self.status.enabled = settings.enabled
        self.status.remote = settings.remote
        loop = asyncio.get_running_loop()
        try:
            if settings.remote:
                await self._fetch(settings.remote, settings.fetch_timeout_s)
                head = await loop.run_in_executor(self._io, self.repo.fast_forward,
                                                  settings.remote)
            else:
                head = await loop.run_in_executor(self._io, self.repo.head)
        except HostError as exc:
            self.status.last_error = exc.message
            log.warning("watch: %s", exc.message)
            return
        self.status.last_checked, self.status.branch_head = time.time(), head
        self.status.last_error = None
        if head == self.ledger.applied or self.ledger.is_failed(head) or self._busy():
            return  # a failed commit is never retried automatically
        if head == self.ledger.watch_paused_at:
            return
        self.ledger.resume_watch()
        try:
            await self._apply(head)
        except HostError as exc:
            self.status.last_error = f"applying {head[:10]} failed: {exc.message}"

    async def _fetch(self, remote: str, timeout: float) -> None:
        # The remote comes from a commit: a configured remote's name only (its URL is the
        # owner's), and after --end-of-options, so git never reads it as an option.
        await asyncio.get_running_loop().run_in_executor(self._io, self.repo.check_remote,
                                                         remote)
        proc = await asyncio.create_subprocess_exec(
            "git", "-C", str(self.repo.path), "fetch", "--quiet", "--end-of-options", remote,
            self.repo.branch,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            process_group=0,  # its own group, so _kill reaches the helpers it starts
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            raise HostError(f"fetch from {remote!r} did not finish in {timeout:g} s",
                            code=Code.FETCH_FAILED) from None
        except asyncio.CancelledError:  # the host is stopping: never wait for a remote
            _kill(proc)
            raise
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip()
            raise HostError(f"fetch from {remote!r} failed: {detail}", code=Code.FETCH_FAILED)


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the fetch and every process it started. ``git fetch`` talks to an HTTP(S) remote
    through a helper (``git remote-http``) that holds the connection and our stderr pipe:
    killing git alone leaves it waiting on the hung remote for ever, one more per attempt,
    and ``proc.wait()`` (which waits for the pipe to close) hangs with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
