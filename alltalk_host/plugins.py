"""Plugin discovery: entry points in group ``alltalk_host`` -> a catalog of backend classes.

We loop over the entry points ourselves (pluggy's load_setuptools_entrypoints stops at the first
broken plugin): a plugin that fails to import or register is recorded with its error and the host
still starts. Only a duplicate backend name stops start-up, because serving the wrong one silently
would be worse.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import PluginConflict

log = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    backends: list[str] = field(default_factory=list)
    error: str | None = None  # why it could not be used
    skipped: bool = False  # left out by the allow-list

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "backends": self.backends,
            "status": "skipped" if self.skipped else "failed" if self.error else "loaded",
            "error": self.error,
        }


@dataclass
class BackendCatalog:
    """What discovery found: backend classes by name, and a report on every plugin."""

    backends: dict[str, type[Backend]]
    plugins: list[PluginInfo]

    def get(self, name: str) -> type[Backend] | None:
        return self.backends.get(name)

    def why_missing(self, backend: str) -> str | None:
        """Why no backend called ``backend`` is usable, or None when one is."""
        if backend in self.backends:
            return None
        # Backends are usually named like the plugin's entry point (onnx, xtts): a plugin of
        # that name that failed to load, or was left out by the allow-list, is the reason.
        for plugin in self.plugins:
            if plugin.name == backend and plugin.error:
                return (f"backend {backend!r}: plugin {plugin.name} ({plugin.distribution}) "
                        f"failed to load: {plugin.error}")
            if plugin.name == backend and plugin.skipped:
                return (f"backend {backend!r}: plugin {plugin.name} is installed but left out "
                        "by the ALLTALK_PLUGINS allow-list")
        return (f"backend {backend!r} is not installed (installed backends: "
                f"{', '.join(sorted(self.backends)) or 'none'})")


def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def discover(
    allow: Collection[str] | None = None,
    extra: Iterable[tuple[str, object]] = (),
) -> BackendCatalog:
    """Load plugins from entry points (only those named in ``allow`` when given).

    ``extra`` registers in-process plugins (name, module-or-object) next to the installed ones,
    for embedding the host in another program.
    """
    pm = get_plugin_manager()
    infos: list[PluginInfo] = []
    for ep in entry_points(group=hookspecs.PROJECT):
        info = PluginInfo(ep.name, *_distribution(ep))
        infos.append(info)
        if allow is not None and ep.name not in allow:
            info.skipped = True
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # any failure of one plugin is that plugin's
            info.error = f"{type(exc).__name__}: {exc}"
            # The traceback goes to the log: "ImportError: libfoo" alone rarely says where.
            log.warning("plugin %s (%s) failed to load: %s", ep.name, info.distribution, exc,
                        exc_info=True)
    for name, obj in extra:
        infos.append(PluginInfo(name, "(in-process)", ""))
        pm.register(obj, name=name)

    backends: dict[str, type[Backend]] = {}
    owner: dict[str, PluginInfo] = {}
    by_name = {i.name: i for i in infos}
    for impl in pm.hook.alltalk_host_register_backends.get_hookimpls():
        info = by_name[impl.plugin_name]
        found: list[type[Backend]] = []
        try:
            impl.function(register=found.append)
            for cls in found:
                _check_backend_class(cls)
        except Exception as exc:  # logged with its traceback
            info.error = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %s failed to register its backends: %s", info.name, exc,
                        exc_info=True)
            continue
        for cls in found:
            if cls.name in backends:
                other = owner[cls.name]
                raise PluginConflict(
                    f"two plugins register a backend named {cls.name!r}: "
                    f"{other.name} (distribution {other.distribution}) and "
                    f"{info.name} (distribution {info.distribution}); uninstall one of them or "
                    "leave one out with the ALLTALK_PLUGINS allow-list"
                )
            backends[cls.name] = cls
            owner[cls.name] = info
            info.backends.append(cls.name)
    _check_pending(pm, by_name)
    return BackendCatalog(backends=backends, plugins=infos)


def _distribution(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown)", ""
    return dist.metadata["Name"], dist.version


def _check_backend_class(cls: Any) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a subclass of alltalk_host.Backend")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"backend {cls.__name__} does not implement: {missing}")
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise TypeError(f"backend {cls.__name__} has no name")
    if "speed" in cls.capabilities.parameters:
        raise TypeError(f"backend {cls.__name__} declares an option 'speed': speed is "
                        "SpeechRequest.speed, never an option")


def _check_pending(pm: pluggy.PluginManager, by_name: dict[str, PluginInfo]) -> None:
    """A misspelled hook name is a plugin bug: report it on that plugin, not as a crash."""
    known = {n for n in dir(hookspecs) if n.startswith("alltalk_host_")}
    for name, plugin in pm.list_name_plugin():
        for attr in dir(plugin):
            if attr.startswith("alltalk_host_") and attr not in known:
                info = by_name.get(name)
                if info is not None and info.error is None:
                    info.error = f"unknown hook {attr!r} (misspelled?)"
