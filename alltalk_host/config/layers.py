"""A commit's settings files as Dynaconf layers, with the owner's two layers on top.

The layers, lowest first:
  1. the commit's config folder: ``settings.toml``, then every other ``*.toml`` there in name
     order (the template has ``models.toml``; ``voices.toml`` is the voice library's, read
     by voices.py, not a layer), each with ``[default]`` and per-environment
     sections (``[development]``, ``[production]``, ...; ``ALLTALK_ENV`` picks one);
  2. the host-local file, outside git: flat TOML for machine specifics and secrets;
  3. ``ALLTALK_``-prefixed environment variables (``ALLTALK_MODELS__joe__settings__speed=1.1``).

The commit's files are untrusted: they are scanned (untrusted.py) before Dynaconf sees them,
and Dynaconf reads copies of them alone, in a folder of their own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf, Validator
from dynaconf.loaders.env_loader import load_from_env

from ..errors import Code, ConfigInvalid
from .untrusted import refuse_untrusted
from .values import Layer
from .voices import VOICES_FILE

# The largest settings file read (the template's are a few kilobytes).
MAX_TOML_BYTES = 1_048_576

ENV_PREFIX = "ALLTALK"
SETTINGS_FILE = "settings.toml"


@dataclass(frozen=True)
class Loaded:
    settings: Dynaconf  # not validated yet
    tree: Path  # the folder Dynaconf read the commit's files from
    raw_files: list[tuple[Path, dict[str, Any]]]  # each commit file as parsed, in order
    local_data: dict[str, Any]  # the host-local file as parsed ({} without one)


def load_layers(tree: Path, local_file: Path | None, validators: list[Validator]) -> Loaded:
    """The commit's files in ``tree``, then the host-local file and the environment, in one
    Dynaconf instance (validators attached, not run). Raises ConfigInvalid for a file that is
    not TOML or that steers the loader; Dynaconf's own errors propagate."""
    tree = _layers_alone(tree, _layer_files(tree))
    files = _layer_files(tree)
    raw_files = [(f, _check_toml(f, f.name)) for f in files]
    refuse_untrusted([(f.name, data) for f, data in raw_files], global_env=ENV_PREFIX.lower())
    settings = Dynaconf(
        settings_files=[str(f) for f in files],  # absolute: no parent-folder lookups
        root_path=str(tree),
        environments=True,
        envvar_prefix=ENV_PREFIX,
        env_switcher=f"{ENV_PREFIX}_ENV",
        merge_enabled=True,
        load_dotenv=False,
        loaders=[],  # the extra layers are added below, explicitly
        validators=validators,
    )
    local_data: dict[str, Any] = {}
    if local_file is not None and local_file.is_file():
        local_data = _check_toml(local_file, f"host-local file {local_file}")
        settings.update(local_data, loader_identifier=f"host-local:{local_file}", merge=True)
    load_from_env(settings, ENV_PREFIX, identifier="env", silent=False)
    return Loaded(settings, tree, raw_files, local_data)


def layers_of(tree: Path, raw_files: list[tuple[Path, dict[str, Any]]], env: str,
              local_data: dict[str, Any]) -> list[tuple[Layer, Mapping[str, Any]]]:
    """Every layer's raw data, lowest first, in the order Dynaconf merges them."""
    layers: list[tuple[Layer, Mapping[str, Any]]] = []
    for path, data in raw_files:
        name = path.relative_to(tree).as_posix()
        for section in ("default", env, "global"):
            table = data.get(section)
            if isinstance(table, dict) and (section != env or env != "default"):
                layers.append((Layer("repo", name, section), table))
    if local_data:
        layers.append((Layer("host-local"), local_data))
    layers.append((Layer("env"), _env_keys()))
    return layers


def _env_keys() -> dict[str, Any]:
    """The keys ``ALLTALK_`` variables set, as nested tables (values are not needed)."""
    out: dict[str, Any] = {}
    prefix = f"{ENV_PREFIX}_"
    for name in os.environ:
        if not name.startswith(prefix) or len(name) == len(prefix):
            continue
        parts = name[len(prefix):].split("__")
        table = out
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                break
        else:
            table[parts[-1]] = True
    return out


def _layer_files(tree: Path) -> list[Path]:
    first = tree / SETTINGS_FILE
    if not first.is_file():
        raise ConfigInvalid(f"the config folder has no {SETTINGS_FILE}",
                            code=Code.CONFIG_UNREADABLE)
    rest = sorted(p for p in tree.glob("*.toml")
                  if p.name not in (SETTINGS_FILE, VOICES_FILE) and p.is_file())
    return [first, *rest]


def _layers_alone(tree: Path, files: list[Path]) -> Path:
    """Copies of the layer files in a fresh folder of their own: Dynaconf imports and runs a
    ``dynaconf_hooks.py`` it finds next to a file it loaded, and a commit may carry one.
    ``mkdtemp`` makes a new folder, so no name in the commit can be it."""
    clean = Path(tempfile.mkdtemp(prefix="layers-", dir=tree))
    for path in files:
        shutil.copyfile(path, clean / path.name)
    return clean


def _check_toml(path: Path, label: str) -> dict[str, Any]:
    """Parse once ourselves so a syntax error names the file and line.

    A settings file is a few kilobytes; one from a commit is untrusted, so it is refused past
    MAX_TOML_BYTES (never read into memory whole) and when nested deeper than the parser
    recurses (tomllib raises RecursionError there, not a syntax error)."""
    size = path.stat().st_size
    if size > MAX_TOML_BYTES:
        raise ConfigInvalid(f"{label} is {size} bytes; a settings file may have at most "
                            f"{MAX_TOML_BYTES}", code=Code.INVALID_TOML)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(f"{label} is not valid TOML: {exc}", code=Code.INVALID_TOML) from None
    except RecursionError:
        raise ConfigInvalid(f"{label} nests arrays or tables too deeply to read",
                            code=Code.INVALID_TOML) from None
