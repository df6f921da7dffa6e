"""Memory admission: before a model loads beside the serving ones, will it fit?

What a model needs: what its last load of the same settings measured (remembered per model and
settings; for a model in worker processes, what its workers hold), else what its backend says
before loading (``Backend.memory_needed``: file sizes, dtype), else unknown, which is admitted.
What is free: host RAM (available memory, and the cgroup's limit when the process runs in one),
each CUDA device's free memory when torch is already loaded, and the optional budgets
``memory.ram_budget_mb`` / ``memory.device_budget_mb`` (what all loaded models together may
hold, for hosts that share the machine).

When a load beside would not fit, a model that allows it (``low_memory_swap``, or
``on_insufficient_memory = "swap_in_place"``) is replaced in place instead (its requests wait
while it loads); anything else is refused before anything loads, with what was needed and
what was free.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ..backend import MemoryNeed, ModelContext
from ..errors import Code, Conflict

if TYPE_CHECKING:
    from ..config.settings import HostConfig, ModelDef
    from ..plugins import BackendCatalog
    from ..serving.registry import Serving
    from .plan import Plan

log = logging.getLogger(__name__)
MiB = 1024 * 1024
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


@dataclass(frozen=True)
class Need:
    """What loading one model (all its instances) will take, and how that is known."""

    ram_bytes: int = 0
    device: str = "cpu"
    device_bytes: int = 0
    source: str = "unknown"  # measured | estimate | unknown


@dataclass
class Admission:
    """The decision for one model of a plan."""

    model: str
    need: Need
    free_ram_bytes: int | None
    free_device_bytes: int | None
    fits: bool
    how: str  # beside | in place | refused | unknown
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "need": asdict(self.need)}


@dataclass
class MemoryAdmission:
    catalog: BackendCatalog
    cache_dir: Path
    # What loads measured: (model name, load signature) -> RAM bytes taken.
    measured: dict[tuple[str, str], int] = field(default_factory=dict)

    def remember(self, model: ModelDef, ram_bytes: int) -> None:
        self.measured[(model.name, model.load_signature())] = max(0, ram_bytes)

    def need(self, model: ModelDef, config: HostConfig) -> Need:
        measured = self.measured.get((model.name, model.load_signature()))
        estimate = self._estimate(model, config)
        device = estimate.device if estimate else "cpu"
        device_bytes = estimate.device_bytes * model.instances if estimate else 0
        # A measurement far below the estimate was likely cut by memory freed during the load
        # (another model unloading): the estimate is the safer figure then.
        plausible = estimate is None or measured is None or \
            measured >= estimate.ram_bytes * model.instances // 4
        if measured is not None and plausible:
            return Need(measured, device, device_bytes, "measured")
        if estimate is not None:
            return Need(estimate.ram_bytes * model.instances, device, device_bytes, "estimate")
        return Need()

    def check(self, config: HostConfig, plan: Plan, serving: Serving | None) -> list[Admission]:
        """A decision for each model the plan loads beside what serves; nothing is loaded."""
        loads = [*plan.load, *plan.reload]
        used_ram, used_device = self._in_use(serving, config)
        free_ram = free_ram_bytes()
        budget_ram = _budget(config, "ram_budget_mb")
        budget_device = _budget(config, "device_budget_mb")
        decisions = []
        for name in loads:
            model = config.models[name]
            need = self.need(model, config)
            room_ram = _least(free_ram, None if budget_ram is None else budget_ram - used_ram)
            room_device = None
            if need.device != "cpu":
                room_device = _least(free_device_bytes(need.device),
                                     None if budget_device is None
                                     else budget_device - used_device.get(need.device, 0))
            fits_ram = room_ram is None or need.ram_bytes <= room_ram
            fits_device = room_device is None or need.device_bytes <= room_device
            in_place = name in plan.reload and (
                model.low_memory_swap or config.values.get("memory", {}).get(
                    "on_insufficient_memory") == "swap_in_place")
            if need.source == "unknown":
                how, fits, reason = "unknown", True, "its backend gives no estimate"
            elif fits_ram and fits_device:
                how, fits, reason = "beside", True, ""
            else:
                reason = _shortfall(need, room_ram, room_device, fits_ram)
                how, fits = ("in place", True) if in_place else ("refused", False)
            decisions.append(Admission(name, need, room_ram, room_device, fits, how, reason))
            if how in ("beside", "unknown"):  # what it takes is not free for the next one
                used_ram += need.ram_bytes
                if need.device != "cpu":
                    used_device[need.device] = used_device.get(need.device, 0) + \
                        need.device_bytes
                if free_ram is not None:
                    free_ram -= need.ram_bytes
        return decisions

    def _in_use(self, serving: Serving | None, config: HostConfig
                ) -> tuple[int, dict[str, int]]:
        """What the loaded models hold, as far as this host knows (for the budgets): the
        resident memory of their worker processes, measured now, else what they needed."""
        ram, device = 0, {}
        for gen in serving.generations.values() if serving else ():
            need = self.need(gen.model, config)
            ram += sum(w.get("rss") or 0 for w in gen.workers()) if gen.measured \
                else need.ram_bytes
            if need.device != "cpu":
                device[need.device] = device.get(need.device, 0) + need.device_bytes
        return ram, device

    def _estimate(self, model: ModelDef, config: HostConfig) -> MemoryNeed | None:
        cls = self.catalog.get(model.backend)
        if cls is None or model.parsed is None:
            return None
        context = ModelContext(name=model.name, models_dir=config.models_dir,
                               cache_dir=self.cache_dir / model.name)
        try:
            return cls.memory_needed(model.parsed, context)
        except Exception:  # an estimate that fails is no estimate, not a failed apply
            log.warning("model %s: its backend's memory estimate failed", model.name,
                        exc_info=True)
            return None


def refuse(decisions: list[Admission]) -> None:
    """Raise 409 insufficient_memory for the first model that does not fit."""
    refused = [d for d in decisions if not d.fits]
    if refused:
        d = refused[0]
        raise Conflict(
            f"model {d.model} does not fit beside what serves: {d.reason}. Nothing was "
            "changed. Free memory, raise the budget, or set low_memory_swap = true (or "
            "memory.on_insufficient_memory = \"swap_in_place\") to replace it in place",
            code=Code.INSUFFICIENT_MEMORY,
            details={"models": [x.to_dict() for x in refused]},
        )


def free_ram_bytes() -> int | None:
    """Host RAM that can be had now: available memory, within the cgroup's limit if any."""
    free = psutil.virtual_memory().available
    limit = _cgroup_room()
    return free if limit is None else min(free, limit)


def free_device_bytes(device: str) -> int | None:
    """Free memory on a CUDA device, if torch is already loaded (asking would load it)."""
    memory = _cuda_memory(device)
    return None if memory is None else memory[0]


def implausible(need: object) -> str | None:
    """Why a backend's ``memory_needed()`` answer cannot be right on this machine, or None.

    The bound: one instance must fit the machine, all its RAM (within the cgroup's limit) and,
    when torch can tell, the device's whole memory. A claim beyond it makes admission refuse
    the model here for good (a load's measurement under a quarter of the claim is not trusted
    over it), so a backend that loaded on this machine claimed too much. Not compared with
    what a load measures: it is a guess made before loading, and the measurement replaces it.
    """
    if need is None:
        return None
    if not isinstance(need, MemoryNeed):
        return f"memory_needed() returned {type(need).__name__}, not MemoryNeed or None"
    for name in ("ram_bytes", "device_bytes"):
        value = getattr(need, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"memory_needed(): {name} is {value!r:.40}, not a number of bytes >= 0"
    total = machine_ram_bytes()
    if need.ram_bytes > total:
        return (f"memory_needed() claims {need.ram_bytes / MiB:,.0f} MiB of RAM; this machine "
                f"has {total / MiB:,.0f} MiB, so the host would never admit the model here")
    memory = _cuda_memory(need.device) if need.device != "cpu" else None
    if memory is not None and need.device_bytes > memory[1]:
        return (f"memory_needed() claims {need.device_bytes / MiB:,.0f} MiB on {need.device}, "
                f"which has {memory[1] / MiB:,.0f} MiB")
    return None


def claimed(need: MemoryNeed) -> str:
    """What a ``memory_needed()`` answer claims, in one phrase."""
    device = f" and {need.device_bytes / MiB:,.0f} MiB on {need.device}" \
        if need.device != "cpu" else ""
    return f"claims {need.ram_bytes / MiB:,.0f} MiB of RAM{device}"


def machine_ram_bytes() -> int:
    """All the RAM this process could have: the machine's, within the cgroup's limit if any."""
    total = psutil.virtual_memory().total
    cgroup = _cgroup()
    return total if cgroup is None else min(total, cgroup[0])


def _cuda_memory(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device, if torch is already loaded (asking would load
    it)."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda"):
        return None
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            free, total = torch.cuda.mem_get_info(index)
            return int(free), int(total)
    return None


def _cgroup_room() -> int | None:
    cgroup = _cgroup()
    return None if cgroup is None else max(0, cgroup[0] - cgroup[1])


def _cgroup() -> tuple[int, int] | None:
    """The memory limit and usage of the process's cgroup, when it has a limit."""
    for limit_file, usage_file in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # v1
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max" or int(raw) >= _UNLIMITED:
                return None
            return int(raw), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def _budget(config: HostConfig, key: str) -> int | None:
    value = config.values.get("memory", {}).get(key, 0)
    return int(value * MiB) if value else None


def _least(a: int | None, b: int | None) -> int | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


def _shortfall(need: Need, room_ram: int | None, room_device: int | None,
               fits_ram: bool) -> str:
    if not fits_ram:
        return (f"needs {need.ram_bytes / MiB:.0f} MiB of RAM ({need.source}), "
                f"{max(0, room_ram or 0) / MiB:.0f} MiB free")
    return (f"needs {need.device_bytes / MiB:.0f} MiB on {need.device} ({need.source}), "
            f"{max(0, room_device or 0) / MiB:.0f} MiB free")
