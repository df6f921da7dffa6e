"""The core, assembled: plugins, config repo, state, registry, controller and speech service.

A front-end (the aiohttp app, a CLI, a Ray Serve replica) builds one ``Host``, calls
``start()``/``stop()`` around its own lifetime and talks to ``host.speech`` and ``host.control``.
Nothing here imports a web framework.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .change.control import Controller
from .change.state import StateStore
from .config.loader import ConfigLoader
from .config.repo import ConfigRepo
from .config.settings import ENV_PREFIX
from .errors import Code, ConfigInvalid
from .events import EventBus
from .limits import EdgeLimits
from .metrics import Metrics
from .plugins import BackendCatalog, discover
from .serving.arms import Arms
from .serving.registry import ModelRegistry
from .serving.speech import SpeechService

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("var/state")
DEFAULT_CONFIG_REPO = Path("var/config")
LOCAL_FILE_NAME = "local.toml"
OFF = ("0", "false", "no", "off")
ON = ("1", "true", "yes", "on")


@dataclass
class HostOptions:
    """How this process runs: where things are. Per-machine, never in the config repo."""

    config_repo: Path = DEFAULT_CONFIG_REPO
    state_dir: Path = DEFAULT_STATE_DIR
    branch: str = "main"
    subdir: str = ""
    # The host-local settings layer (outside git): defaults to <state_dir>/local.toml.
    local_file: Path | None = None
    plugins: list[str] | None = None  # allow-list; None loads every installed plugin
    control_token: str | None = None
    # A proxy or tunnel forwards to this port: token-less control is refused to everyone
    # (web/guard.py). Per-machine only, never from a commit: it can only be turned on.
    behind_proxy: bool = False
    # Signs git-push webhooks (POST /hooks/git); setting it turns them on.
    webhook_secret: str | None = None
    metrics: bool = True  # ALLTALK_METRICS=0 turns Prometheus metrics off (to measure them)
    # Told which commit to serve by a fleet (a Ray Serve replica's user_config): no start-up
    # choice of commit and no branch watch; it serves nothing until its first apply.
    directed: bool = False
    # What one HTTP or Wyoming peer may send, and how slowly (limits.py).
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    extra_plugins: list[tuple[str, object]] = field(default_factory=list)

    @property
    def local_path(self) -> Path:
        return self.local_file or self.state_dir / LOCAL_FILE_NAME

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> HostOptions:
        """Options from ``ALLTALK_*`` variables and the host-local file; overrides win."""
        env = os.environ if environ is None else environ
        opts = cls()
        for key, attr in (("CONFIG_REPO", "config_repo"), ("STATE_DIR", "state_dir"),
                          ("LOCAL_SETTINGS", "local_file")):
            if env.get(f"{ENV_PREFIX}_{key}"):
                setattr(opts, attr, Path(env[f"{ENV_PREFIX}_{key}"]))
        opts.branch = env.get(f"{ENV_PREFIX}_BRANCH", opts.branch)
        opts.subdir = env.get(f"{ENV_PREFIX}_SUBDIR", opts.subdir)
        for key, value in overrides.items():
            if value is not None:
                setattr(opts, key, value)
        local = _read_local(opts.local_path)
        allow = env.get(f"{ENV_PREFIX}_PLUGINS") or local.get("plugins")
        if isinstance(allow, str):
            allow = [p.strip() for p in allow.split(",") if p.strip()]
        opts.plugins = list(allow) if allow else None
        opts.control_token = env.get(f"{ENV_PREFIX}_CONTROL_TOKEN") or local.get("control_token")
        opts.webhook_secret = (env.get(f"{ENV_PREFIX}_WEBHOOK_SECRET")
                               or local.get("webhook_secret"))
        # Any source turns it on (the flag, the variable, the file); none turns it off.
        opts.behind_proxy = (opts.behind_proxy or _on(env.get(f"{ENV_PREFIX}_BEHIND_PROXY"))
                             or _local_flag(local, "behind_proxy", opts.local_path))
        if env.get(f"{ENV_PREFIX}_METRICS", "").strip().lower() in OFF:
            opts.metrics = False
        opts.limits = EdgeLimits.from_settings(env, local, ENV_PREFIX)
        return opts


class Host:
    def __init__(self, options: HostOptions, catalog: BackendCatalog | None = None) -> None:
        self.options = options
        self.catalog = catalog or discover(options.plugins, options.extra_plugins)
        repo = ConfigRepo(options.config_repo, subdir=options.subdir, branch=options.branch)
        self.events = EventBus()
        self.registry = ModelRegistry(events=self.events)
        self.metrics = Metrics(self) if options.metrics else None
        # Where requests go while a canary runs: the speech service routes and measures by
        # it, the controller's rollout starts and ends canaries in it.
        arms = Arms()
        self.speech = SpeechService(self.registry, observer=self.metrics, arms=arms)
        cache_dir = options.state_dir / "cache"
        self.control = Controller(
            repo=repo,
            loader=ConfigLoader(repo, self.catalog, options.local_path,
                                work_dir=options.state_dir / "tmp", cache_dir=cache_dir,
                                state_dir=options.state_dir),
            store=StateStore(options.state_dir),
            registry=self.registry,
            catalog=self.catalog,
            cache_dir=cache_dir,
            events=self.events,
            arms=arms,
        )
        if self.metrics is not None:
            self.events.listen(self.metrics.on_event)
            self.control.on_demand.on_wait = self.metrics.waited_for_load

    async def start(self) -> None:
        for plugin in self.catalog.plugins:
            if plugin.error:
                log.warning("plugin %s (%s) is not available: %s",
                            plugin.name, plugin.distribution, plugin.error)
        await self.control.start(choose_commit=not self.options.directed)

    async def begin_shutdown(self) -> None:
        """The first step of stopping, before a front waits for its open requests: no change
        applies from now (the one in progress is abandoned), and a load still running is
        ended by killing its worker, so a hung load cannot hold up the exit. ``stop()``
        follows."""
        self.control.abandon()
        killed = await asyncio.get_running_loop().run_in_executor(
            None, self.registry.workers.kill_loading)
        if killed:
            log.warning("shutting down: %d load(s) in progress abandoned, their workers "
                        "killed", killed)

    async def stop(self) -> None:
        self.events.close()
        await self.control.stop()
        await self.registry.close()


def _on(value: str | None) -> bool:
    if value is None or not value.strip():
        return False
    if value.strip().lower() in ON:
        return True
    if value.strip().lower() in OFF:
        return False
    raise ConfigInvalid(f"{ENV_PREFIX}_BEHIND_PROXY is 1 or 0, not {value[:40]!r}")


def _local_flag(local: Mapping[str, object], key: str, path: Path) -> bool:
    value = local.get(key, False)
    if not isinstance(value, bool):
        raise ConfigInvalid(f"{key} in the host-local file {path} is true or false, not "
                            f"{value!r}")
    return value


def _read_local(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid(f"host-local file {path} is not valid TOML: {exc}",
                            code=Code.INVALID_TOML) from None

