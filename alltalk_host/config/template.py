"""The config template shipped inside the package, fitted to what is installed here.

``alltalk-host config init`` (and ``serve --init-config``) start a config repo from it. The
template names models of several backends; a fresh install may have only some of them. So the
copy that is committed comments out the models whose backend is not installed, with a line
naming the package that provides it (``# package: ...`` in the model's own comment block), and
makes the default model one that can load here. Nothing here imports a plugin: the catalog
says which backends exist, each backend's ``check_available`` whether a model could load.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tomlkit

from ..errors import ConfigInvalid
from ..plugins import BackendCatalog
from .models import parse_models
from .repo import init_repo

MODELS_FILE = "models.toml"
SETTINGS_FILE = "settings.toml"
_HEADER = re.compile(r"^\[default\.models\.([A-Za-z0-9_-]+)(\.[^\]]+)?\]\s*$")
_ANY_HEADER = re.compile(r"^\[")
COMMENTED = "#: "  # what starts each line of a model that is commented out
_PACKAGE = re.compile(r"^#\s*package:\s*(\S+)")


def template_dir() -> Path:
    """The packaged template folder (a real folder: the wheel installs it unzipped)."""
    return Path(str(resources.files("alltalk_host") / "config_template"))


@dataclass
class Fitted:
    """What fitting the template changed, in words for the person who ran ``config init``."""

    default_model: str
    commented_out: dict[str, str] = field(default_factory=dict)  # model -> why
    unavailable: dict[str, str] = field(default_factory=dict)  # kept, but cannot load here
    default_changed_from: str | None = None
    nothing_loads: bool = False

    def lines(self) -> list[str]:
        out = [f"model {name}: commented out, {why}"
               for name, why in self.commented_out.items()]
        out += [f"model {name}: kept, but it cannot load here yet: {why}"
                for name, why in self.unavailable.items()]
        if self.default_changed_from:
            out.append(f"default model: {self.default_model} (the template's "
                       f"{self.default_changed_from} cannot load here)")
        if self.nothing_loads:
            out.append("no model of the template can load here, so the host will not start "
                       "serving: install a backend plugin (alltalk-host-reference is the "
                       "smallest), uncomment its model and commit")
        return out


def init_from_template(path: Path, catalog: BackendCatalog, branch: str = "main",
                       template: Path | None = None) -> tuple[str, Fitted]:
    """A config repo at ``path`` from the template fitted to ``catalog``: (commit, what
    changed)."""
    with tempfile.TemporaryDirectory(prefix="alltalk-template-") as tmp:
        folder = Path(tmp) / "template"
        shutil.copytree(template or template_dir(), folder)
        fitted = fit(folder, catalog)
        return init_repo(path, folder, branch), fitted


def fit(folder: Path, catalog: BackendCatalog) -> Fitted:
    """Rewrite the template in ``folder`` in place for the backends in ``catalog``."""
    models_file, settings_file = folder / MODELS_FILE, folder / SETTINGS_FILE
    models_text = models_file.read_text(encoding="utf-8")
    raw = tomllib.loads(models_text).get("default", {}).get("models", {})
    commented: dict[str, str] = {}
    for name, table in raw.items():
        backend = str(table.get("backend", ""))
        if catalog.get(backend) is None and not _failed_plugin(catalog, backend):
            # (a plugin left out by ALLTALK_PLUGINS is as good as not installed here)
            models_text, why = _comment_out(models_text, name, backend)
            commented[name] = why
    models_file.write_text(models_text, encoding="utf-8")

    settings = tomlkit.parse(settings_file.read_text(encoding="utf-8"))
    defaults = settings["default"]
    wanted = str(defaults.get("default_model", ""))
    models_dir = Path(os.environ.get("ALLTALK_MODELS_DIR")
                      or str(defaults.get("models_dir", "models"))).expanduser().resolve()
    remaining = {n: t for n, t in raw.items() if n not in commented}
    with tempfile.TemporaryDirectory(prefix="alltalk-template-cache-") as cache:
        try:
            models = parse_models(remaining, catalog, models_dir, Path(cache))
        except ConfigInvalid as exc:  # an installed backend refuses the template's settings
            raise ConfigInvalid(f"the config template does not validate here: {exc.message}",
                                details=exc.details) from None
    unavailable = {n: m.unavailable for n, m in models.items() if m.unavailable}
    loadable = [n for n in models if n not in unavailable]
    fitted = Fitted(default_model=wanted, commented_out=commented,
                    unavailable={n: str(why) for n, why in unavailable.items()},
                    nothing_loads=not loadable)
    if wanted not in loadable and loadable:
        fitted.default_model, fitted.default_changed_from = loadable[0], wanted
        item = tomlkit.string(loadable[0])
        item.comment(f"the template's {wanted} cannot load here; switch back once it can")
        defaults["default_model"] = item
        settings_file.write_text(tomlkit.dumps(settings), encoding="utf-8")
    return fitted


def _failed_plugin(catalog: BackendCatalog, backend: str) -> bool:
    """A plugin of that name is installed but broken: its models stay, reported unavailable
    with the plugin's error, rather than vanish as if it were not installed."""
    return any(p.name == backend and p.error for p in catalog.plugins)


def _comment_out(text: str, name: str, backend: str) -> tuple[str, str]:
    """``text`` with model ``name``'s tables commented out, and the reason given."""
    lines = text.splitlines(keepends=True)
    start = end = None
    for i, line in enumerate(lines):
        match = _HEADER.match(line)
        if start is None and match and match.group(1) == name:
            start = i
        elif start is not None and _ANY_HEADER.match(line) and not (
                match and match.group(1) == name):
            end = i
            break
    if start is None:
        return text, "not found in the template"
    end = len(lines) if end is None else end
    # The model's own comment block (right above its header) belongs to it: it may name
    # the package; the next model's block, right above the next header, does not.
    while end > start and lines[end - 1].startswith("#"):
        end -= 1
    first = start
    while first > 0 and lines[first - 1].startswith("#"):
        first -= 1
    package = next((m.group(1) for line in lines[first:start]
                    if (m := _PACKAGE.match(line))), None)
    why = (f"backend {backend!r} is not installed (it comes with {package})" if package
           else f"no installed plugin provides backend {backend!r}")
    note = (f"# NOT INSTALLED here: {why}.\n# To use it, install that, remove the "
            f"'{COMMENTED}' that starts each of its lines and commit.\n")
    # A prefix of its own, so uncommenting the model leaves its real comments alone.
    body = [line if line.startswith("#") or not line.strip() else f"{COMMENTED}{line}"
            for line in lines[start:end]]
    return "".join([*lines[:start], note, *body, *lines[end:]]), why
