"""From one commit to a validated, immutable HostConfig.

The layers (the commit's files, the host-local file, ``ALLTALK_`` variables) are read by
``layers.py``. Each load builds a fresh Dynaconf instance from a private copy of the commit's
tree and runs every validator, the backends' own included, before anything is swapped. A live
settings object is never reloaded: it is replaced. The config keeps plain data only: nothing in
it points at the copy, which is gone once the load returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator

from ..backend import VoiceSample
from ..errors import Code, ConfigInvalid
from ..outputs import Retention
from ..plugins import BackendCatalog
from .canary import CHOICES, LIMITS, CanarySettings, CanarySpec
from .layers import ENV_PREFIX, SETTINGS_FILE, layers_of, load_layers
from .models import IDLE_UNLOAD_MAX_S, SPEED_RANGE, ModelDef, parse_models
from .paths import OWNER_LAYERS, host_folder
from .repo import REMOTE_NAME_RULE, is_remote_name
from .values import Layer, flatten, layer_of_each_key, lower_top, redact, to_plain
from .voices import read_voices
from .workers import WorkerSettings, parse_workers

__all__ = ["ENV_PREFIX", "SPEED_RANGE", "HostConfig", "ModelDef", "WatchSettings", "build_config",
           "watch_settings_of"]

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
    # Canaries (config/canary.py): the defaults of an apply's canary, how requests are split, and
    # whether the branch watcher applies new commits as canaries.
    *(Validator(f"canary.{name}", default=getattr(CanarySpec, name),
                is_type_of=int if limit.whole else (int, float), **limit.bounds())
      for name, limit in LIMITS.items()),
    Validator("canary.arm_choice", default="random", is_type_of=str, is_in=list(CHOICES)),
    Validator("canary.client_header", default="X-AllTalk-Client", is_type_of=str, len_min=1),
    Validator("canary.watch", default=False, is_type_of=bool),
    # Worker processes and their deadlines (config/workers.py checks the keys).
    Validator("workers", default={}, is_type_of=dict),
    # Models loaded when a request names them (a model's own on_demand / idle_unload_s win).
    Validator("on_demand.enabled", default=True, is_type_of=bool),
    Validator("on_demand.idle_unload_s", default=900.0, is_type_of=(int, float), gte=0,
              lte=IDLE_UNLOAD_MAX_S),
    Validator("on_demand.retry_after_s", default=30.0, is_type_of=(int, float), gte=0,
              lte=86_400),
    Validator("on_demand.max_resident_models", default=0, is_type_of=int, gte=0, lte=1000),
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
class OnDemandSettings:
    """``[on_demand]``: whether a request may load a configured model that is not loaded;
    after how long unused such a model is unloaded (0: never); how long a failed on-demand
    load is answered from memory before a request may try it again; how many models may be
    loaded at once (room is made by unloading the least recently used idle one)."""

    enabled: bool
    idle_unload_s: float
    retry_after_s: float
    # At most this many models loaded at once, whatever loaded them (0: no limit); memory
    # admission's budgets bound the set too.
    max_resident_models: int


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
    # ``[workers]``: the defaults each model's own ``[models.NAME.workers]`` overrides.
    workers: WorkerSettings
    on_demand: OnDemandSettings
    # Dotted key -> the layer its value came from.
    sources: Mapping[str, Layer]
    # Each layer's own keys, lowest first: where an edit of a key has to be written.
    layer_keys: tuple[tuple[Layer, frozenset[str]], ...]
    # The voice library (voices.toml, voices/): name -> its sample, for models that clone.
    voices: Mapping[str, VoiceSample] = field(default_factory=dict)

    @property
    def loaded_models(self) -> set[str]:
        """The models this config keeps in memory: the default and those marked keep_loaded."""
        return {self.default_model} | {n for n, m in self.models.items() if m.keep_loaded}

    def loads_on_demand(self, name: str) -> bool:
        """Whether a request naming ``name`` may load it: configured, available, allowed, and
        not one this config keeps loaded itself (the default, ``keep_loaded``)."""
        model = self.models.get(name)
        return (self.on_demand.enabled and model is not None and model.on_demand
                and model.unavailable is None and name not in self.loaded_models)

    def keeps_on_demand(self, model: ModelDef) -> bool:
        """Whether a generation of ``model``, loaded on demand (under this config or another),
        may serve under this one: it still loads on demand, defined the same way."""
        mine = self.models.get(model.name)
        return (mine is not None and self.loads_on_demand(model.name)
                and mine.load_signature() == model.load_signature())

    def idle_unload_s(self, name: str) -> float:
        """How long model ``name``, loaded on demand, stays loaded unused (0: for good)."""
        own = self.models[name].idle_unload_s
        return self.on_demand.idle_unload_s if own is None else own

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


def build_config(tree: Path, commit: str, catalog: BackendCatalog, local_file: Path | None,
                 cache_dir: Path, host_dirs: tuple[Path, ...] = ()) -> HostConfig:
    """``host_dirs``: the host's own folders (state, config repo), which the folders a commit
    names may neither be nor hold (paths.py)."""
    commit_tree = tree  # the commit's files (``loaded.tree`` holds copies of the layers alone)
    with _refusals(commit):
        loaded = load_layers(tree, local_file, HOST_VALIDATORS)
        loaded.settings.validators.validate_all()
    settings, raw_files, local_data, tree = (loaded.settings, loaded.raw_files,
                                             loaded.local_data, loaded.tree)
    values = _plain(settings)
    env = str(settings.current_env).lower()
    layers = layers_of(tree, raw_files, env, local_data)
    sources = layer_of_each_key(flatten(values), layers)
    owner_keys = frozenset(k for k, layer in sources.items() if layer.kind in OWNER_LAYERS)
    models_dir = host_folder("models_dir", values["models_dir"], sources["models_dir"],
                             host_dirs)
    outputs_dir = host_folder("outputs.dir", values["outputs"]["dir"], sources["outputs.dir"],
                              host_dirs)
    workers = parse_workers(values["workers"], "workers")
    models = parse_models(values["models"], catalog, models_dir, cache_dir, owner_keys, workers)
    if values["default_model"] not in models:
        raise ConfigInvalid(
            f"default_model {values['default_model']!r} is not one of the configured models",
            code=Code.VALIDATION_FAILED,
            details=[f"default_model: {values['default_model']!r} is not one of "
                     f"{sorted(models)}"],
        )
    voices, problems = read_voices(commit_tree, cache_dir / "voices")
    problems += [f"voices.{name}: model {sample.model!r} is not one of the configured models"
                 for name, sample in voices.items()
                 if sample.model is not None and sample.model not in models]
    if problems:
        raise ConfigInvalid(f"the voice library is not valid: {problems[0]}"
                            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                            code=Code.VALIDATION_FAILED, details=problems)
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
        watch=_watch(watch),
        outputs_dir=outputs_dir,
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
        workers=workers,
        on_demand=OnDemandSettings(enabled=values["on_demand"]["enabled"],
                                   idle_unload_s=float(values["on_demand"]["idle_unload_s"]),
                                   retry_after_s=float(values["on_demand"]["retry_after_s"]),
                                   max_resident_models=values["on_demand"]["max_resident_models"]),
        sources=sources,
        layer_keys=tuple((layer, frozenset(flatten(lower_top(data)))) for layer, data in layers),
        voices=voices,
    )


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


def watch_settings_of(tree: Path, commit: str, local_file: Path | None) -> WatchSettings:
    """The ``[watch]`` settings of a commit whose config as a whole may not load, validated on
    their own: the watcher's settings while nothing serves (change/watch.py)."""
    with _refusals(commit):
        loaded = load_layers(tree, local_file, HOST_VALIDATORS)
        loaded.settings.validators.validate(only=["watch"])
    return _watch(_plain(loaded.settings)["watch"])


def _watch(watch: dict[str, Any]) -> WatchSettings:
    return WatchSettings(enabled=watch["enabled"], interval_s=float(watch["interval_s"]),
                         remote=watch["remote"], fetch_timeout_s=float(watch["fetch_timeout_s"]))


@contextlib.contextmanager
def _refusals(commit: str) -> Iterator[None]:
    """Dynaconf's errors as the host's: what does not validate, what cannot be read."""
    try:
        yield
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


def _plain(settings: Dynaconf) -> dict[str, Any]:
    data = settings.as_dict()
    return {
        k.lower(): to_plain(v) for k, v in data.items() if k.lower() not in _INTERNAL_KEYS
    }
