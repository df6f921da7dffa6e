"""The ``[canary]`` settings: a canary's share, duration and thresholds (``CanarySpec``), the
limits each may take, and how requests are split between the arms. Types only: the config layer
validates them; ``serving/arms.py`` routes by them and ``change/canary.py`` judges by them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import BadRequest, Code
from ..numbers import number_in

STABLE, CANARY = "stable", "canary"
ARMS = (STABLE, CANARY)
PROMOTE, EXTEND, ABORT = "promote", "extend", "abort"
# How a request's arm is chosen: at random, or sticky by the client's address or a header.
CHOICES = ("random", "address", "header")


@dataclass(frozen=True)
class Limit:
    low: float
    high: float
    whole: bool = False  # an integer
    open_low: bool = False  # the low end itself is not allowed

    def problem(self, name: str, value: Any) -> str | None:
        kinds = int if self.whole else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or (
                isinstance(value, float) and not math.isfinite(value)):
            return f"{name} must be a {'whole number' if self.whole else 'number'}"
        if number_in(value, self.low, self.high, open_low=self.open_low) is None:
            low = f"above {self.low:g}" if self.open_low else f"from {self.low:g}"
            return f"{name} must be {low} to {self.high:g}"
        return None

    def bounds(self) -> dict[str, float]:
        """The same limits as Dynaconf validator arguments."""
        return {"gt" if self.open_low else "gte": self.low, "lte": self.high}


# One place for the limits of each threshold: the [canary] settings and an apply's overrides.
LIMITS = {
    "percent": Limit(0, 100, open_low=True),
    "duration_s": Limit(0, 7 * 86400, open_low=True),
    "min_requests": Limit(0, 1_000_000, whole=True),
    "max_error_rate": Limit(0, 1),
    "max_latency_ratio": Limit(0, 100, open_low=True),
    "latency_slack_s": Limit(0, 60),
}


@dataclass(frozen=True)
class CanarySpec:
    """One canary's share, duration and the thresholds it is judged by."""

    percent: float = 10.0
    duration_s: float = 300.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    # A canary p95 at most this far above the stable arm's passes whatever the ratio: at a few
    # milliseconds (a cached or tiny model) the ratio of two p95s measures scheduling noise,
    # and 2 ms against 1 ms is no reason to throw a commit away.
    latency_slack_s: float = 0.05

    def with_overrides(self, overrides: Mapping[str, Any]) -> CanarySpec:
        """This spec with an apply's own values (``{"percent": 50}``); BadRequest for a key
        or value it cannot take."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BadRequest(f"canary has no setting {unknown[0]!r}; it takes "
                             f"{', '.join(sorted(known))}", code=Code.BAD_FIELD,
                             details={"field": f"canary.{unknown[0]}"})
        for name, value in overrides.items():
            problem = LIMITS[name].problem(f"canary.{name}", value)
            if problem:
                raise BadRequest(problem, code=Code.BAD_FIELD, details={"field": f"canary.{name}"})
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CanarySettings:
    """``[canary]``: the defaults of a canary, how requests are split, and the watcher."""

    spec: CanarySpec
    arm_choice: str  # one of CHOICES
    client_header: str  # the header a sticky "header" choice keys on
    watch: bool  # the branch watcher applies new commits as canaries
