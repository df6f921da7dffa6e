"""What applying a config would change: the settings diff and which models load, unload, reload."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config.settings import HostConfig
from ..config.values import diff
from ..config.voices import voice_changes

# Changing one of these for a loaded model means loading it again; anything else is runtime-only.
_RELOAD_KEY = re.compile(r"^models\.[^.]+\.(backend|settings|instances)(\.|$)")
_LOADED_SET_KEY = re.compile(r"^(default_model|models\.[^.]+\.keep_loaded)$")


@dataclass(frozen=True)
class Plan:
    commit: str
    from_commit: str | None
    changes: list[dict[str, Any]]
    load: list[str]  # models to load that are not loaded now
    reload: list[str]  # loaded models whose definition changed (or a reload was asked for)
    unload: list[str]  # loaded models the new config does not keep
    keep: list[str]  # loaded models that carry on serving as they are
    runtime_changes: list[str]  # changed keys that take effect without loading anything
    # Per configured model: "available", or "unavailable" with the reason.
    availability: dict[str, dict[str, Any]]
    # Per model loaded beside what serves: memory needed and free, and whether it fits.
    memory: list[dict[str, Any]] = field(default_factory=list)
    # The voice library's changes (voices.toml, voices/): runtime-only, like a default voice.
    voices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def runtime_only(self) -> bool:
        return not (self.load or self.reload or self.unload)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "runtime_only": self.runtime_only}


def make_plan(current: HostConfig | None, loaded: Collection[str], new: HostConfig,
              force_reload: Collection[str] = ()) -> Plan:
    """What applying ``new`` changes, given the config serving now and the models actually
    loaded (which can be fewer than it names, after a swap whose restore failed, or more:
    the models loaded on demand). A model loaded on demand stays loaded while ``new`` still
    lets it load on demand (reloaded if its definition changed), else it is unloaded."""
    old_loaded = set(loaded) if current else set()
    on_demand = {n for n in old_loaded - (current.loaded_models if current else set())
                 if new.loads_on_demand(n)}
    new_loaded = new.loaded_models | on_demand
    reload, keep = [], []
    for name in sorted(old_loaded & new_loaded):
        assert current is not None
        same = current.models[name].load_signature() == new.models[name].load_signature()
        (keep if same and name not in force_reload else reload).append(name)
    changes = diff(current.values if current else None, new.values)
    for change in changes:  # the layer that sets it (for a removed key: the one that did)
        layer = new.sources.get(change["key"]) or (
            current.sources.get(change["key"]) if current else None)
        change["layer"] = str(layer) if layer else None
    runtime = [
        c["key"] for c in changes
        if not _RELOAD_KEY.match(c["key"]) and not _LOADED_SET_KEY.match(c["key"])
    ]
    return Plan(
        commit=new.commit,
        from_commit=current.commit if current else None,
        changes=changes,
        load=sorted(new_loaded - old_loaded),
        reload=reload,
        unload=sorted(old_loaded - new_loaded),
        keep=keep,
        runtime_changes=runtime,
        availability={n: m.availability for n, m in sorted(new.models.items())},
        voices=voice_changes(current.voices if current else {}, new.voices),
    )
