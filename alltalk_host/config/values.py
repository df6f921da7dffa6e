"""Settings as plain data: flattening, diffs, redaction, and which layer set each key.

A *layer* is one source of settings: a section of a repo file, the host-local file, the
``ALLTALK_`` environment variables, or a validator's default. Each key's layer is found from the
raw data each layer gave, key by key, so one ``ALLTALK_MODELS__joe__...`` variable claims only
the keys it sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

SECRET_RE = re.compile(r"(token|secret|password|api_?key)$", re.IGNORECASE)
REDACTED = "***"


@dataclass(frozen=True)
class Layer:
    """Where a value came from. ``str()`` gives the label shown to users."""

    kind: Literal["repo", "host-local", "env", "default"]
    file: str = ""  # repo layers: the file, relative to the config folder
    section: str = ""  # repo layers: "default", the environment's name, or "global"

    def __str__(self) -> str:
        return f"repo:{self.file}[{self.section}]" if self.kind == "repo" else self.kind

    @property
    def in_repo(self) -> bool:
        return self.kind == "repo"


DEFAULT_LAYER = Layer("default")


def layer_of_each_key(keys: Iterable[str],
                      layers: Iterable[tuple[Layer, Mapping[str, Any]]]) -> dict[str, Layer]:
    """For each dotted key, the last of ``layers`` (lowest first) whose raw data sets it;
    keys no layer sets came from a validator's default."""
    setters: dict[str, Layer] = {}
    for layer, data in layers:
        for key in flatten(lower_top(data)):
            # Dynaconf's tables match keys whatever their case (ALLTALK_OUTPUTS__DIR sets
            # outputs.dir), so a layer claims a key whatever case it wrote it in.
            setters[key.lower()] = layer
    return {key: _setter(key.lower(), setters) for key in keys}


def _setter(key: str, setters: Mapping[str, Layer]) -> Layer:
    if key in setters:
        return setters[key]
    # An empty table in a file flattens to its own key; a leaf under it has no setter of its
    # own, but a key set as a whole table (an env var holding TOML) covers its leaves.
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:depth])
        if prefix in setters:
            return setters[prefix]
    return DEFAULT_LAYER


def lower_top(data: Mapping[str, Any]) -> dict[str, Any]:
    """Dynaconf's top-level keys are case-insensitive; nested keys keep their case."""
    return {str(k).lower(): v for k, v in data.items()}


def to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> {"a.b.c": leaf}."""
    if isinstance(values, Mapping) and values:
        out: dict[str, Any] = {}
        for k, v in values.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: values}


def redact(values: Any) -> Any:
    if isinstance(values, Mapping):
        return {
            k: REDACTED if SECRET_RE.search(str(k)) and v not in (None, "") else redact(v)
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


def clip(value: object, limit: int = 60) -> str:
    """A value from a commit, quoted and short enough for a message and a log line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
