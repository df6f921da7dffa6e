"""Model definitions: ``[models.NAME]`` tables -> validated ``ModelDef``s, each with whether it
could load on this machine.

Invalid settings fail the commit. A model that is valid but *unavailable* here (its backend is
not installed or failed to import, its files are missing) does not: it is reported with the
reason, and only the models the commit must serve (the default and ``keep_loaded`` ones; all of
them with ``strict_models``) have to be available for an apply to succeed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backend import ModelContext
from ..errors import Code, ConfigInvalid
from ..plugins import BackendCatalog
from .paths import model_path_problems
from .workers import WorkerSettings, parse_workers

log = logging.getLogger(__name__)

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Per-model keys the host reads itself; everything under ``settings`` belongs to the backend.
MODEL_HOST_KEYS = {
    "backend", "settings", "instances", "keep_loaded", "low_memory_swap",
    "default_voice", "default_speed", "default_language", "workers", "on_demand",
    "idle_unload_s", "warmup_text",
}
WARMUP_TEXT_MAX = 1000  # characters: a warm-up speaks it at every load
IDLE_UNLOAD_MAX_S = 30 * 86_400.0
SPEED_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class ModelDef:
    name: str
    backend: str
    settings: dict[str, Any]  # as written in the config
    parsed: Any = field(compare=False)  # the backend's validated form (None when unavailable)
    instances: int = 1
    keep_loaded: bool = False
    low_memory_swap: bool = False
    default_voice: str | None = None
    default_speed: float = 1.0
    default_language: str | None = None
    # Why this model cannot load on this machine; None when it can (as far as a cheap check
    # without loading can tell).
    unavailable: str | None = field(default=None, compare=False)
    # ``[workers]`` with this model's ``[models.NAME.workers]`` on top.
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    # A request naming it loads it when it is not loaded (``[on_demand]`` can turn that off
    # for the host); ``idle_unload_s`` (None: the host's) unloads it after that long unused.
    on_demand: bool = True
    idle_unload_s: float | None = None
    # What its warm-up speaks (None: a phrase in its language, change/loading.py).
    warmup_text: str | None = None

    def load_signature(self) -> str:
        """Equal signatures mean an already-loaded model can keep serving unchanged. The
        deadlines are not in it: they apply to the next load or request without a reload."""
        return json.dumps(
            {"backend": self.backend, "settings": self.settings, "instances": self.instances,
             "isolation": self.workers.isolation},
            sort_keys=True,
            default=str,
        )

    @property
    def availability(self) -> dict[str, Any]:
        if self.unavailable is None:
            return {"availability": "available"}
        return {"availability": "unavailable", "reason": self.unavailable}


def parse_models(raw_models: dict[str, Any], catalog: BackendCatalog, models_dir: Path,
                 cache_dir: Path, owner_keys: frozenset[str] = frozenset(),
                 workers: WorkerSettings | None = None) -> dict[str, ModelDef]:
    """``owner_keys``: the dotted keys the owner's layers set; every other path setting came
    from a commit and stays inside ``models_dir`` (paths.py). ``workers``: the ``[workers]``
    defaults each model's own table overrides."""
    models: dict[str, ModelDef] = {}
    errors: list[str] = []
    for name, raw in raw_models.items():
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
        if not isinstance(backend, str) or not backend:
            errors.append(f"{where}.backend: required, the name of an installed backend; "
                          f"installed: {sorted(catalog.backends)}")
            continue
        settings = raw.get("settings", {})
        if not isinstance(settings, dict):
            errors.append(f"{where}.settings: must be a table")
            continue
        try:
            model_workers = parse_workers(raw.get("workers"), f"{where}.workers", workers)
        except ConfigInvalid as exc:
            errors.extend(exc.details)
            continue
        parsed, unavailable = None, catalog.why_missing(backend)
        cls = catalog.get(backend)
        if cls is not None:
            try:
                parsed = cls.validate_settings(settings)
            except (ValueError, TypeError, KeyError) as exc:
                errors.append(f"{where}.settings: {exc}")
                continue
            except Exception as exc:  # a plugin bug, not a bad setting
                # It disables that plugin's model only: the commit and the other models stand.
                log.warning("backend %s: validate_settings of model %s failed", backend, name,
                            exc_info=True)
                unavailable = (f"backend {backend}: validate_settings failed: "
                               f"{type(exc).__name__}: {exc}")
            else:
                # Before anything looks at the files the paths name.
                problems = model_path_problems(name, settings, cls.path_settings, owner_keys)
                if problems:
                    errors.extend(problems)
                    continue
                context = ModelContext(name=name, models_dir=models_dir,
                                       cache_dir=cache_dir / name)
                unavailable = _check_available(cls, parsed, context)
                if unavailable is None and model_workers.in_process:
                    unavailable = _not_importable(cls, name)
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
                unavailable=unavailable,
                workers=model_workers,
                on_demand=_typed(raw, "on_demand", bool, True),
                idle_unload_s=_idle(raw),
                warmup_text=_warmup_text(raw),
            )
        except ValueError as exc:
            errors.append(f"{where}.{exc}")
    if errors:
        # The first reason in the message too: clients that show only the message (AllTalk's
        # toggle routes answer {"status": "error", "message"}) then say what to change.
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigInvalid(f"model definitions do not validate: {errors[0]}{more}",
                            code=Code.VALIDATION_FAILED, details=errors)
    return models


def _check_available(cls: Any, parsed: Any, context: ModelContext) -> str | None:
    try:
        cls.check_available(parsed, context)
    except Exception as exc:  # noqa: BLE001 - any failure is the reason it is unavailable
        return f"backend {cls.name}: {str(exc) or type(exc).__name__}"
    return None


def _not_importable(cls: type, model: str) -> str | None:
    """Why a worker process could not import ``cls`` by its module and name (a class made
    inside a function, or in ``__main__``), or None: such a backend runs inline only."""
    module = sys.modules.get(cls.__module__)
    found: Any = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is cls and cls.__module__ != "__main__":
        return None
    return (f"backend {getattr(cls, 'name', cls.__name__)}: its class "
            f"{cls.__module__}.{cls.__qualname__} cannot be imported by a worker process; "
            f"set isolation = \"inline\" in [models.{model}.workers] to run it in the host")


def _idle(raw: dict[str, Any]) -> float | None:
    value = _typed(raw, "idle_unload_s", (int, float), None, lo=0, hi=IDLE_UNLOAD_MAX_S)
    return None if value is None else float(value)


def _warmup_text(raw: dict[str, Any]) -> str | None:
    value = _typed(raw, "warmup_text", str, None)
    if value is not None and not (value.strip() and len(value) <= WARMUP_TEXT_MAX):
        raise ValueError(f"warmup_text: expected 1 to {WARMUP_TEXT_MAX} characters of text, "
                         f"got {len(value)} characters{' of white space' if value else ''}")
    return value


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
