"""From one commit to a validated, immutable HostConfig.

The layers, lowest first:
  1. the commit's config folder: ``settings.toml``, then every other ``*.toml`` there in name
     order (the template has ``models.toml``), each with ``[default]`` and per-environment
     sections (``[development]``, ``[production]``, ...; ``ALLTALK_ENV`` picks one);
  2. the host-local file, outside git: flat TOML for machine specifics and secrets;
  3. ``ALLTALK_``-prefixed environment variables (``ALLTALK_MODELS__joe__settings__speed=1.1``).

Each load builds a fresh Dynaconf instance from a private copy of the commit's tree and runs every
validator, the backends' own included, before anything is swapped. A live settings object is never
reloaded: it is replaced. The config keeps plain data only: nothing in it points at the copy,
which is gone once the load returns.
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

from dynaconf import Dynaconf, ValidationError, Validator
from dynaconf.loaders.env_loader import load_from_env

from ..canary import CHOICES, LIMITS, CanarySettings, CanarySpec
from ..errors import Code, ConfigInvalid
from ..outputs import Retention
from ..plugins import BackendCatalog
from .models import SPEED_RANGE, ModelDef, parse_models
from .repo import REMOTE_NAME_RULE, is_remote_name
from .untrusted import refuse_untrusted
from .values import Layer, flatten, layer_of_each_key, lower_top, redact, to_plain

__all__ = ["SPEED_RANGE", "HostConfig", "ModelDef", "build_config"]

ENV_PREFIX = "ALLTALK"
SETTINGS_FILE = "settings.toml"
# Keys Dynaconf adds about itself, not ours to show or diff.
_INTERNAL_KEYS = {"load_dotenv", "env", "settings_module"}


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
    Validator("watch.remote", default="", is_type_of=str,
              condition=lambda v: not v or is_remote_name(v),
              messages={"condition": f"watch.remote {{value!r}} is not {REMOTE_NAME_RULE}"}),
    Validator("watch.fetch_timeout_s", default=30.0, is_type_of=(int, float), gt=0),
    # Memory admission: what all loaded models together may hold (0: no budget), and what to do
    # when a model would not fit beside the one it replaces.
    Validator("memory.ram_budget_mb", default=0, is_type_of=(int, float), gte=0),
    Validator("memory.device_budget_mb", default=0, is_type_of=(int, float), gte=0),
    Validator("memory.on_insufficient_memory", default="refuse", is_type_of=str,
              is_in=["refuse", "swap_in_place"]),
    # Fail an apply when any configured model is unavailable, not only the ones it serves.
    Validator("strict_models", default=False, is_type_of=bool),
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
    # Canaries (canary.py): the defaults of an apply's canary, how requests are split, and
    # whether the branch watcher applies new commits as canaries.
    *(Validator(f"canary.{name}", default=getattr(CanarySpec, name),
                is_type_of=int if limit.whole else (int, float), **limit.bounds())
      for name, limit in LIMITS.items()),
    Validator("canary.arm_choice", default="random", is_type_of=str, is_in=list(CHOICES)),
    Validator("canary.client_header", default="X-AllTalk-Client", is_type_of=str, len_min=1),
    Validator("canary.watch", default=False, is_type_of=bool),
]


@dataclass(frozen=True)
class WatchSettings:
    enabled: bool
    interval_s: float
    remote: str
    fetch_timeout_s: float


@dataclass(frozen=True)
class AllTalkSettings:
    """``[alltalk]``: how the AllTalk-compatible routes answer."""

    legacy_api: bool
    narrator_voice: str
    preview_text: str


@dataclass(frozen=True)
class HttpSettings:
    """``[http]``: the HTTP boundary (read by the front-end's policy)."""

    trusted_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    cors_origins: tuple[str, ...]
    max_body_bytes: int


@dataclass(frozen=True)
class OpenAISettings:
    """``[openai]``: OpenAI model names -> configured models; per model, voice name maps."""

    models: Mapping[str, str]
    voices: Mapping[str, Mapping[str, str]]


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
    outputs_dir: Path  # resolved against this process's working directory
    # As written (``~`` expanded): the Ray front resolves a relative one against the
    # deployment's shared state_dir instead, the same for every replica.
    outputs_dir_as_written: Path
    output_retention: Retention
    alltalk: AllTalkSettings
    openai: OpenAISettings
    http: HttpSettings
    strict_models: bool
    canary: CanarySettings
    # Dotted key -> the layer its value came from.
    sources: Mapping[str, Layer]
    # Each layer's own keys, lowest first: where an edit of a key has to be written.
    layer_keys: tuple[tuple[Layer, frozenset[str]], ...]

    @property
    def loaded_models(self) -> set[str]:
        """The models this config keeps in memory: the default and those marked keep_loaded."""
        return {self.default_model} | {n for n, m in self.models.items() if m.keep_loaded}

    @property
    def required_models(self) -> set[str]:
        """The models that must be available for this config to apply."""
        return set(self.models) if self.strict_models else self.loaded_models

    def redacted(self) -> dict[str, Any]:
        return redact(self.values)

    def layer_for_edit(self, key: str) -> Layer:
        """The layer whose value of ``key`` wins; for a key no layer sets yet, the repo layer
        that sets its nearest relatives (a new model setting goes next to the model's other
        settings)."""
        for layer, keys in reversed(self.layer_keys):
            if key in keys:
                return layer
        parts = key.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:depth]) + "."
            for layer, keys in reversed(self.layer_keys):
                if layer.in_repo and any(k.startswith(prefix) for k in keys):
                    return layer
        return Layer("repo", SETTINGS_FILE, "default")


def build_config(tree: Path, commit: str, catalog: BackendCatalog,
                 local_file: Path | None, cache_dir: Path) -> HostConfig:
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
        validators=HOST_VALIDATORS,
    )
    local_data: dict[str, Any] = {}
    try:
        if local_file is not None and local_file.is_file():
            local_data = _check_toml(local_file, f"host-local file {local_file}")
            settings.update(local_data, loader_identifier=f"host-local:{local_file}", merge=True)
        load_from_env(settings, ENV_PREFIX, identifier="env", silent=False)
        settings.validators.validate_all()
    except ValidationError as exc:
        raise ConfigInvalid(
            f"commit {commit[:10]}: settings do not validate",
            code=Code.VALIDATION_FAILED,
            details=[str(d[1]) for d in exc.details] or [str(exc)],
        ) from None
    except ConfigInvalid:
        raise
    except Exception as exc:  # noqa: BLE001 - Dynaconf raises many kinds on bad input
        raise ConfigInvalid(f"commit {commit[:10]}: {exc}",
                            code=Code.CONFIG_UNREADABLE) from None

    values = _plain(settings)
    env = str(settings.current_env).lower()
    models_dir = Path(values["models_dir"]).expanduser().resolve()
    models = parse_models(values["models"], catalog, models_dir, cache_dir)
    if values["default_model"] not in models:
        raise ConfigInvalid(
            f"default_model {values['default_model']!r} is not one of the configured models",
            code=Code.VALIDATION_FAILED,
            details=[f"default_model: {values['default_model']!r} is not one of "
                     f"{sorted(models)}"],
        )
    layers = _layers(tree, raw_files, env, local_data)
    watch, alltalk, openai, http = (values["watch"], values["alltalk"], values["openai"],
                                    values["http"])
    return HostConfig(
        commit=commit,
        env=env,
        values=values,
        default_model=values["default_model"],
        models=models,
        max_text_length=values["max_text_length"],
        default_language=values["default_language"],
        drain_deadline_s=float(values["drain_deadline_s"]),
        queue_limit=values["queue_limit"],
        warmup_text=values["warmup_text"],
        models_dir=models_dir,
        watch=WatchSettings(
            enabled=watch["enabled"], interval_s=float(watch["interval_s"]),
            remote=watch["remote"], fetch_timeout_s=float(watch["fetch_timeout_s"]),
        ),
        outputs_dir=Path(values["outputs"]["dir"]).expanduser().resolve(),
        outputs_dir_as_written=Path(values["outputs"]["dir"]).expanduser(),
        output_retention=Retention(max_files=values["outputs"]["max_files"],
                                   max_age_s=float(values["outputs"]["max_age_s"])),
        alltalk=AllTalkSettings(legacy_api=alltalk["legacy_api"],
                                narrator_voice=alltalk["narrator_voice"],
                                preview_text=alltalk["preview_text"]),
        openai=OpenAISettings(models=_str_map(openai["models"], "openai.models"),
                              voices=_voice_maps(openai["voices"])),
        http=HttpSettings(trusted_origins=tuple(http["trusted_origins"]),
                          allowed_hosts=tuple(http["allowed_hosts"]),
                          cors_origins=tuple(http["cors_origins"]),
                          max_body_bytes=http["max_body_bytes"]),
        strict_models=values["strict_models"],
        canary=_canary(values["canary"]),
        sources=layer_of_each_key(flatten(values), layers),
        layer_keys=tuple((layer, frozenset(flatten(lower_top(data)))) for layer, data in layers),
    )


def _layers(tree: Path, raw_files: list[tuple[Path, dict[str, Any]]], env: str,
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


def _canary(values: dict[str, Any]) -> CanarySettings:
    spec = CanarySpec(**{name: (int if limit.whole else float)(values[name])
                         for name, limit in LIMITS.items()})
    return CanarySettings(spec=spec, arm_choice=values["arm_choice"],
                          client_header=values["client_header"], watch=values["watch"])


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigInvalid(f"{where}: every entry must map a name to a name",
                            code=Code.VALIDATION_FAILED, details=[f"{where}: {value!r}"])
    return dict(value)


def _voice_maps(value: Any) -> dict[str, dict[str, str]]:
    if not all(isinstance(v, dict) for v in value.values()):
        raise ConfigInvalid("openai.voices: one table per model, mapping voice names",
                            code=Code.VALIDATION_FAILED, details=[f"openai.voices: {value!r}"])
    return {model: _str_map(voices, f"openai.voices.{model}") for model, voices in value.items()}


def _layer_files(tree: Path) -> list[Path]:
    first = tree / SETTINGS_FILE
    if not first.is_file():
        raise ConfigInvalid(f"the config folder has no {SETTINGS_FILE}",
                            code=Code.CONFIG_UNREADABLE)
    rest = sorted(p for p in tree.glob("*.toml") if p.name != SETTINGS_FILE and p.is_file())
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
    """Parse once ourselves so a syntax error names the file and line."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(f"{label} is not valid TOML: {exc}", code=Code.INVALID_TOML) from None


def _plain(settings: Dynaconf) -> dict[str, Any]:
    data = settings.as_dict()
    return {
        k.lower(): to_plain(v) for k, v in data.items() if k.lower() not in _INTERNAL_KEYS
    }
