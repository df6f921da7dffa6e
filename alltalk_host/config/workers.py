"""The ``[workers]`` settings: whether a model's instances run in worker processes, and the
deadlines the host enforces on them (``alltalk_host/workers/``).

A top-level ``[workers]`` table sets the defaults (``HostConfig.workers``); a model's own
``[models.NAME.workers]`` overrides them key by key (``ModelDef.workers`` holds the merge).
Switching ``isolation`` reloads the model (it is part of its load signature); the deadlines
apply to the loads and requests that start after the change.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, NoReturn

from ..errors import Code, ConfigInvalid

PROCESS, INLINE = "process", "inline"
ISOLATIONS = (PROCESS, INLINE)
# Deadlines longer than a day are a typo, not a plan.
_MAX_S = 86_400.0


@dataclass(frozen=True)
class WorkerSettings:
    """``isolation``: "process" (each instance in a worker process the host can stop) or
    "inline" (in the host's own process and threads: no deadline, no crash containment)."""

    isolation: str = PROCESS
    load_timeout_s: float = 300.0
    warmup_timeout_s: float = 120.0
    # A request's deadline grows with its text; a stream gets it for each chunk.
    request_timeout_s: float = 60.0
    request_timeout_per_char_s: float = 0.5
    unload_timeout_s: float = 30.0
    # Restarts in a row with no call answered between them before the instance gives up.
    max_restarts: int = 5
    # Keep a worker process ready with the backend's heavy imports done (its
    # ``worker_preload``: torch for XTTS), so a load or reload skips them; it holds that
    # memory while it waits (~750 MB for XTTS). False: each load imports them itself.
    preload_spare: bool = True

    @property
    def in_process(self) -> bool:
        """Whether the instances run in worker processes."""
        return self.isolation == PROCESS

    def request_deadline_s(self, text: str) -> float:
        return self.request_timeout_s + self.request_timeout_per_char_s * len(text)


# key -> (lowest, highest, whole number): what each number may be.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "load_timeout_s": (0.0, _MAX_S, False),
    "warmup_timeout_s": (0.0, _MAX_S, False),
    "request_timeout_s": (0.0, _MAX_S, False),
    "request_timeout_per_char_s": (0.0, 60.0, False),
    "unload_timeout_s": (0.0, _MAX_S, False),
    "max_restarts": (0, 1000, True),
}
# A deadline of 0 would kill every worker at once; a per-character allowance of 0 is fine.
_POSITIVE = {"load_timeout_s", "warmup_timeout_s", "request_timeout_s", "unload_timeout_s"}
KEYS = frozenset(f.name for f in fields(WorkerSettings))


def parse_workers(raw: Any, where: str, base: WorkerSettings | None = None) -> WorkerSettings:
    """``raw`` (a ``[workers]`` table) over ``base``; ConfigInvalid naming the key (``where``
    is the table's dotted name: ``workers`` or ``models.NAME.workers``)."""
    base = base or WorkerSettings()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        _refuse(f"{where}: must be a table, not {raw!r:.60}")
    problems = [f"{where}: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}"
                for unknown in [set(raw) - KEYS] if unknown]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KEYS:
            continue
        problem = value_problem(key, value)
        if problem:
            problems.append(f"{where}.{key}: {problem}")
        else:
            values[key] = value if key in ("isolation", "preload_spare") else (
                int(value) if _BOUNDS[key][2] else float(value))
    if problems:
        _refuse(*problems)
    return replace(base, **values)


def value_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the ``[workers]`` key ``key``, or None (the CLI's
    deadline flags use it too, so a flag and a setting refuse the same values)."""
    if key == "preload_spare":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r:.60}"
    if key == "isolation":
        if value not in ISOLATIONS:
            return f"expected one of {', '.join(repr(i) for i in ISOLATIONS)}, got {value!r:.60}"
        return None
    lo, hi, whole = _BOUNDS[key]
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        return f"expected {kind}, got {value!r:.60}"
    if not lo <= value <= hi or (key in _POSITIVE and value <= 0):
        low = "above 0" if key in _POSITIVE else f"from {lo:g}"
        return f"{value} is not {kind} {low} up to {hi:g}"
    return None


def _refuse(*problems: str) -> NoReturn:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ConfigInvalid(f"{problems[0]}{more}", code=Code.VALIDATION_FAILED,
                        details=list(problems))
