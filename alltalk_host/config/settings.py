"""From one commit to a validated, immutable HostConfig.

The layers, lowest first:
  1. the commit's config folder: ``settings.toml``, then every other ``*.toml`` there in name
     order (the template has ``models.toml``), each with ``[default]`` and per-environment
     sections (``[development]``, ``[production]``, ...; ``ALLTALK_ENV`` picks one);
  2. the host-local file, outside git: flat TOML for machine specifics and secrets;
  3. ``ALLTALK_``-prefixed environment variables (``ALLTALK_MODELS__joe__settings__speed=1.1``).

Each load builds a fresh Dynaconf instance from a private copy of the commit's tree and runs every
validator, the backends' own included, before anything is swapped. A live settings object is never
reloaded: it is replaced.
"""

from __future__ import annotations

import json
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator
from dynaconf.loaders.env_loader import load_from_env
from dynaconf.utils.inspect import get_history

from ..errors import ConfigInvalid
from ..outputs import Retention
from ..plugins import BackendCatalog
from .repo import ConfigRepo

ENV_PREFIX = "ALLTALK"
SETTINGS_FILE = "settings.toml"
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SECRET_RE = re.compile(r"(token|secret|password|api_?key)$", re.IGNORECASE)
REDACTED = "***"
# Keys Dynaconf adds about itself, not ours to show or diff.
_INTERNAL_KEYS = {"load_dotenv", "env", "settings_module"}

# Per-model keys the host reads itself; everything under ``settings`` belongs to the backend.
MODEL_HOST_KEYS = {
    "backend", "settings", "instances", "keep_loaded", "low_memory_swap",
    "default_voice", "default_speed", "default_language",
}
SPEED_RANGE = (0.25, 4.0)

def _strings(value: Any) -> bool:
    return all(isinstance(v, str) for v in value)


HOST_VALIDATORS = [
    Validator("default_model", must_exist=True, is_type_of=str),
    Validator("models", must_exist=True, is_type_of=dict),
    Validator("max_text_length", default=2000, is_type_of=int, gte=1, lte=1_000_000),
    Validator("default_language", default="en", is_type_of=str),
    Validator("drain_deadline_s", default=30.0, is_type_of=(int, float), gte=0),
    Validator("queue_limit", default=64, is_type_of=int, gte=0),
    Validator("warmup_text", default="The quick brown fox jumps over the lazy dog.",
              is_type_of=str, len_min=1),
    Validator("models_dir", default="models", is_type_of=str),
    Validator("watch.enabled", default=False, is_type_of=bool),
    Validator("watch.interval_s", default=5.0, is_type_of=(int, float), gt=0),
    Validator("watch.remote", default="", is_type_of=str),
    Validator("outputs.dir", default="var/outputs", is_type_of=str, len_min=1),
    Validator("outputs.max_files", default=500, is_type_of=int, gte=1, lte=1_000_000),
    Validator("outputs.max_age_s", default=86400, is_type_of=(int, float), gt=0),
    # Front-end settings: AllTalk-compatible and OpenAI-compatible routes.
    Validator("alltalk.legacy_api", default=False, is_type_of=bool),
    Validator("alltalk.narrator_voice", default="", is_type_of=str),
    Validator("alltalk.preview_text", default="Hello, this is a preview of my voice.",
              is_type_of=str, len_min=1),
    Validator("openai.models", default={}, is_type_of=dict),
    Validator("openai.voices", default={}, is_type_of=dict),
    # The HTTP front-end's boundary (read by alltalk_host.web.policy).
    Validator("http.trusted_origins", default=[], is_type_of=list, condition=_strings),
    Validator("http.allowed_hosts", default=[], is_type_of=list, condition=_strings),
    Validator("http.cors_origins", default=["*"], is_type_of=list, condition=_strings),
    Validator("http.max_body_bytes", default=1_048_576, is_type_of=int, gte=1024,
              lte=64 * 1_048_576),
]


@dataclass(frozen=True)
class ModelDef:
    name: str
    backend: str
    settings: dict[str, Any]  # as written in the config
    parsed: Any = field(compare=False)  # the backend's validated form of ``settings``
    instances: int = 1
    keep_loaded: bool = False
    low_memory_swap: bool = False
    default_voice: str | None = None
    default_speed: float = 1.0
    default_language: str | None = None

    def load_signature(self) -> str:
        """Equal signatures mean an already-loaded model can keep serving unchanged."""
        return json.dumps(
            {"backend": self.backend, "settings": self.settings, "instances": self.instances},
            sort_keys=True,
            default=str,
        )


@dataclass(frozen=True)
class WatchSettings:
    enabled: bool
    interval_s: float
    remote: str


@dataclass(frozen=True)
class HostConfig:
    commit: str
    env: str
    values: dict[str, Any]  # the effective settings, plain data
    default_model: str
    models: dict[str, ModelDef]
    max_text_length: int
    default_language: str
    drain_deadline_s: float
    queue_limit: int
    warmup_text: str
    models_dir: Path
    watch: WatchSettings
    outputs_dir: Path
    output_retention: Retention
    # Kept to answer "where did this value come from?" on demand; never read for values.
    _settings: Dynaconf = field(repr=False, compare=False)
    _tree: Path = field(repr=False, compare=False)

    @cached_property
    def sources(self) -> dict[str, str]:
        """Dotted key -> the layer its value came from (computed when first asked)."""
        return _sources(self._settings, self.values, self._tree)

    @property
    def loaded_models(self) -> set[str]:
        """The models this config keeps in memory: the default and those marked keep_loaded."""
        return {self.default_model} | {n for n, m in self.models.items() if m.keep_loaded}

    def redacted(self) -> dict[str, Any]:
        return redact(self.values)


class ConfigLoader:
    """Builds a HostConfig for any commit of the repo, with the two extra layers on top."""

    def __init__(self, repo: ConfigRepo, catalog: BackendCatalog,
                 local_file: Path | None = None) -> None:
        self.repo = repo
        self.catalog = catalog
        self.local_file = local_file

    def load(self, commit: str, replace: Mapping[str, str] | None = None) -> HostConfig:
        """The config of ``commit``; ``replace`` swaps file contents first (to vet an edit)."""
        with tempfile.TemporaryDirectory(prefix="alltalk-config-") as tmp:
            tree = self.repo.materialise(commit, Path(tmp))
            for name, content in (replace or {}).items():
                (tree / name).write_text(content, encoding="utf-8")
            return build_config(tree, commit, self.catalog, self.local_file)

    def load_working_tree(self) -> HostConfig:
        """The config as it stands uncommitted on disk (validated before it is committed)."""
        with tempfile.TemporaryDirectory(prefix="alltalk-config-") as tmp:
            tree = self.repo.copy_working_tree(Path(tmp))
            return build_config(tree, "working-tree", self.catalog, self.local_file)


def build_config(tree: Path, commit: str, catalog: BackendCatalog,
                 local_file: Path | None) -> HostConfig:
    files = _layer_files(tree)
    for f in files:
        _check_toml(f, f.name)
    settings = Dynaconf(
        settings_files=[str(f) for f in files],  # absolute: no parent-folder lookups
        root_path=str(tree),
        environments=True,
        envvar_prefix=ENV_PREFIX,
        env_switcher=f"{ENV_PREFIX}_ENV",
        merge_enabled=True,
        load_dotenv=False,
        loaders=[],  # the extra layers are added below, explicitly
        validators=HOST_VALIDATORS,
    )
    try:
        if local_file is not None and local_file.is_file():
            data = _check_toml(local_file, f"host-local file {local_file}")
            settings.update(data, loader_identifier=f"host-local:{local_file}", merge=True)
        load_from_env(settings, ENV_PREFIX, identifier="env", silent=False)
        settings.validators.validate_all()
    except ValidationError as exc:
        raise ConfigInvalid(
            f"commit {commit[:10]}: settings do not validate",
            code="validation_failed",
            details=[str(d[1]) for d in exc.details] or [str(exc)],
        ) from None
    except ConfigInvalid:
        raise
    except Exception as exc:  # noqa: BLE001 - Dynaconf raises many kinds on bad input
        raise ConfigInvalid(f"commit {commit[:10]}: {exc}", code="config_unreadable") from None

    values = _plain(settings)
    models = _parse_models(values, catalog)
    if values["default_model"] not in models:
        raise ConfigInvalid(
            f"default_model {values['default_model']!r} is not one of the configured models",
            code="validation_failed",
            details=[f"default_model: {values['default_model']!r} is not one of "
                     f"{sorted(models)}"],
        )
    watch = values.get("watch", {})
    return HostConfig(
        commit=commit,
        env=str(settings.current_env),
        values=values,
        default_model=values["default_model"],
        models=models,
        max_text_length=values["max_text_length"],
        default_language=values["default_language"],
        drain_deadline_s=float(values["drain_deadline_s"]),
        queue_limit=values["queue_limit"],
        warmup_text=values["warmup_text"],
        models_dir=Path(values["models_dir"]).expanduser().resolve(),
        watch=WatchSettings(
            enabled=watch["enabled"], interval_s=float(watch["interval_s"]), remote=watch["remote"]
        ),
        outputs_dir=Path(values["outputs"]["dir"]).expanduser().resolve(),
        output_retention=Retention(max_files=values["outputs"]["max_files"],
                                   max_age_s=float(values["outputs"]["max_age_s"])),
        _settings=settings,
        _tree=tree,
    )


def _layer_files(tree: Path) -> list[Path]:
    first = tree / SETTINGS_FILE
    if not first.is_file():
        raise ConfigInvalid(f"the config folder has no {SETTINGS_FILE}", code="config_unreadable")
    rest = sorted(p for p in tree.glob("*.toml") if p.name != SETTINGS_FILE)
    return [first, *rest]


def _check_toml(path: Path, label: str) -> dict[str, Any]:
    """Parse once ourselves so a syntax error names the file and line."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(f"{label} is not valid TOML: {exc}", code="invalid_toml") from None


def _plain(settings: Dynaconf) -> dict[str, Any]:
    data = settings.as_dict()
    return {
        k.lower(): _to_plain(v) for k, v in data.items() if k.lower() not in _INTERNAL_KEYS
    }


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _parse_models(values: dict[str, Any], catalog: BackendCatalog) -> dict[str, ModelDef]:
    models: dict[str, ModelDef] = {}
    errors: list[str] = []
    for name, raw in values["models"].items():
        where = f"models.{name}"
        if not MODEL_NAME_RE.match(name):
            errors.append(f"{where}: a model name uses only letters, digits, '_' and '-'")
            continue
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a table")
            continue
        unknown = set(raw) - MODEL_HOST_KEYS
        if unknown:
            errors.append(f"{where}: unknown keys {sorted(unknown)} (backend settings go under "
                          f"{where}.settings)")
        backend = raw.get("backend")
        cls = catalog.get(backend) if isinstance(backend, str) else None
        if cls is None:
            errors.append(f"{where}.backend: unknown backend {backend!r}; installed backends: "
                          f"{sorted(catalog.backends)}")
            continue
        settings = raw.get("settings", {})
        if not isinstance(settings, dict):
            errors.append(f"{where}.settings: must be a table")
            continue
        try:
            parsed = cls.validate_settings(settings)
        except (ValueError, TypeError, KeyError) as exc:
            errors.append(f"{where}.settings: {exc}")
            continue
        try:
            models[name] = ModelDef(
                name=name,
                backend=backend,
                settings=settings,
                parsed=parsed,
                instances=_typed(raw, "instances", int, 1, lo=1, hi=16),
                keep_loaded=_typed(raw, "keep_loaded", bool, False),
                low_memory_swap=_typed(raw, "low_memory_swap", bool, False),
                default_voice=_typed(raw, "default_voice", str, None),
                default_speed=float(_typed(raw, "default_speed", (int, float), 1.0,
                                           lo=SPEED_RANGE[0], hi=SPEED_RANGE[1])),
                default_language=_typed(raw, "default_language", str, None),
            )
        except ValueError as exc:
            errors.append(f"{where}.{exc}")
    if errors:
        code = "unknown_backend" if any("unknown backend" in e for e in errors) else (
            "validation_failed")
        raise ConfigInvalid("model definitions do not validate", code=code, details=errors)
    return models


def _typed(raw: dict[str, Any], key: str, types: Any, default: Any,
           lo: float | None = None, hi: float | None = None) -> Any:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, types) or (types is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {getattr(types, '__name__', types)}, got {value!r}")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ValueError(f"{key}: {value} is outside {lo}..{hi}")
    return value


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> {"a.b.c": leaf}."""
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for k, v in values.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: values}


def _sources(settings: Dynaconf, values: dict[str, Any], tree: Path) -> dict[str, str]:
    """For each effective key, the layer its value came from."""
    out: dict[str, str] = {}
    for key in flatten(values):
        # Validators re-set every key they check; only a default they filled in is their own.
        history = [h for h in get_history(settings, key) if h.get("identifier") != "validator"]
        out[key] = _layer_name(history[-1], tree) if history else "default"
    return out


def _layer_name(entry: dict[str, Any], tree: Path) -> str:
    ident = str(entry.get("identifier", ""))
    if entry.get("loader") == "env":
        return "env"
    if ident.startswith("host-local:"):
        return "host-local"
    if ident.startswith(str(tree)):
        return f"repo:{Path(ident).name}[{str(entry.get('env', 'default')).lower()}]"
    return ident or "default"


_REPO_LAYER = re.compile(r"^repo:(?P<file>[^\[]+)\[(?P<section>[^\]]+)\]$")


def repo_layer(name: str) -> tuple[str, str] | None:
    """(file, section) of a repo layer name made by _layer_name; None for other layers."""
    match = _REPO_LAYER.match(name)
    return (match["file"], match["section"]) if match else None


def redact(values: Any) -> Any:
    if isinstance(values, dict):
        return {
            k: REDACTED if SECRET_RE.search(k) and v not in (None, "") else redact(v)
            for k, v in values.items()
        }
    return values


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Leaf-level differences, secrets redacted."""
    a = flatten(redact(dict(old or {})))
    b = flatten(redact(dict(new)))
    changes = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, _MISSING) != b.get(key, _MISSING):
            changes.append({"key": key, "old": a.get(key), "new": b.get(key)})
    return changes


_MISSING = object()

