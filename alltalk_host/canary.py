"""Canaries: a commit serves a share of requests beside the stable one, and is judged by them.

A canary is two serving snapshots side by side (the registry holds both): the stable one and
the canary's, which shares every generation the commit does not change (a runtime-only canary
shares them all). This module owns the rest of it: the spec (share, duration, thresholds),
which arm each request goes to, each arm's measurements, a canary request retried on the
stable arm, and the verdict at the end. ``rollout.py`` orders a canary's start and end.

Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from .errors import BadRequest, Code, HostError
from .numbers import number_in

log = logging.getLogger(__name__)
R = TypeVar("R")

STABLE, CANARY = "stable", "canary"
ARMS = (STABLE, CANARY)
PROMOTE, EXTEND, ABORT = "promote", "extend", "abort"
# How a request's arm is chosen: at random, or sticky by the client's address or a header.
CHOICES = ("random", "address", "header")
# Time-to-first-audio samples kept per arm for its p95: the newest, enough for hours of traffic.
SAMPLES = 10_000


@dataclass(frozen=True)
class ArmRequest:
    """What a request says about its arm: one it asks for (``X-AllTalk-Canary``), and what a
    sticky choice keys on (its address, its headers)."""

    forced: str | None = None
    address: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


# Set by a front-end around each request, as the request id is, so that every speech route of
# every API is routed without each handler passing it through. Unset: no preference.
ARM_REQUEST: ContextVar[ArmRequest | None] = ContextVar("alltalk_arm_request", default=None)


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


class ArmStats:
    """What one arm did: requests, errors (failures not of the client's making), time to
    first audio (p95) and real-time factor (mean)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self._first_audio: deque[float] = deque(maxlen=SAMPLES)
        self._rtf_sum = 0.0
        self._rtf_count = 0

    def served(self, first_audio_s: float, busy_s: float, audio_s: float) -> None:
        self.requests += 1
        self._first_audio.append(first_audio_s)
        if audio_s > 0:
            self._rtf_sum += busy_s / audio_s
            self._rtf_count += 1

    def failed(self) -> None:
        self.requests += 1
        self.errors += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p95_first_audio(self) -> float | None:
        if not self._first_audio:
            return None
        ordered = sorted(self._first_audio)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def to_dict(self) -> dict[str, Any]:
        p95 = self.p95_first_audio()
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4),
                "p95_time_to_first_audio_s": None if p95 is None else round(p95, 4),
                "mean_real_time_factor": round(self._rtf_sum / self._rtf_count, 4)
                if self._rtf_count else None}


@dataclass(frozen=True)
class Verdict:
    outcome: str  # PROMOTE, EXTEND or ABORT
    reason: str


def evaluate(spec: CanarySpec, stable: ArmStats, canary: ArmStats, extended: bool) -> Verdict:
    """What the measurements say at the end of a canary's duration, and why, in numbers."""
    n = canary.requests
    if n < spec.min_requests:
        few = f"too few requests: {n} < {spec.min_requests} on the canary"
        if not extended:
            return Verdict(EXTEND, f"{few}; extended once by {spec.duration_s:g} s")
        return Verdict(ABORT, f"{few} after one extension")
    rate = canary.error_rate
    if rate > spec.max_error_rate:
        return Verdict(ABORT, f"error rate {rate:.2f} > {spec.max_error_rate:g} over {n} "
                              "requests")
    ours, theirs = canary.p95_first_audio(), stable.p95_first_audio()
    if ours is not None and theirs:
        ratio = ours / theirs
        if ratio > spec.max_latency_ratio and ours - theirs > spec.latency_slack_s:
            return Verdict(ABORT, f"p95 time to first audio {ours:.3f} s is {ratio:.2f} x the "
                                  f"stable arm's {theirs:.3f} s > {spec.max_latency_ratio:g}")
        if ratio > spec.max_latency_ratio:
            latency = (f"p95 time to first audio {ours:.3f} s is within "
                       f"{spec.latency_slack_s:g} s of the stable arm's {theirs:.3f} s")
        else:
            latency = (f"p95 time to first audio {ratio:.2f} x the stable arm's <= "
                       f"{spec.max_latency_ratio:g}")
    else:
        latency = "latency not compared: an arm has no measured request"
    return Verdict(PROMOTE, f"error rate {rate:.2f} <= {spec.max_error_rate:g} over {n} "
                            f"requests; {latency}")


class CanaryRun:
    """One canary in progress: which commits, for how long, and what each arm did."""

    def __init__(self, commit: str, stable_commit: str, spec: CanarySpec,
                 settings: CanarySettings, who: str) -> None:
        self.commit = commit
        self.stable_commit = stable_commit
        self.spec = spec
        self.arm_choice = settings.arm_choice
        self.client_header = settings.client_header
        self.who = who
        self.started_at = time.time()
        self._started = time.monotonic()
        self._ends = self._started + spec.duration_s
        self.extended = False
        self.arms = {STABLE: ArmStats(), CANARY: ArmStats()}
        self.failures_logged = 0

    @property
    def ran_s(self) -> float:
        return time.monotonic() - self._started

    def time_left_s(self) -> float:
        return max(0.0, self._ends - time.monotonic())

    def extend(self) -> None:
        self._ends += self.spec.duration_s
        self.extended = True

    def verdict(self) -> Verdict:
        return evaluate(self.spec, self.arms[STABLE], self.arms[CANARY], self.extended)

    def choose(self, request: ArmRequest, rng: random.Random) -> str:
        if request.forced in ARMS:
            return request.forced
        key = self._client_key(request)
        if key is None:
            share = rng.random() * 100
        else:
            # Salted with the commit: each canary picks its own clients, not always the same.
            digest = hashlib.sha256(f"{self.commit}\0{key}".encode()).digest()
            share = int.from_bytes(digest[:4], "big") / 2**32 * 100
        return CANARY if share < self.spec.percent else STABLE

    def _client_key(self, request: ArmRequest) -> str | None:
        if self.arm_choice == "header":
            # No such header: the address, so a client that omits it is still sticky.
            value = request.headers.get(self.client_header)
            return f"h:{value}" if value else (f"a:{request.address}" if request.address
                                               else None)
        if self.arm_choice == "address" and request.address:
            return f"a:{request.address}"
        return None

    def measured(self) -> str:
        """The numbers so far, in words, for a reason a person gave."""
        c, s = self.arms[CANARY], self.arms[STABLE]
        return (f"canary: {c.requests} requests, error rate {c.error_rate:.2f}; stable: "
                f"{s.requests} requests, error rate {s.error_rate:.2f}")

    def to_state(self) -> dict[str, Any]:
        """What the state file keeps while it runs (measurements live in memory only)."""
        return {"commit": self.commit, "stable": self.stable_commit, "who": self.who,
                "spec": self.spec.to_dict(), "started_at": self.started_at,
                "ends_at": self.started_at + (self._ends - self._started),
                "extended": self.extended}

    def describe(self) -> dict[str, Any]:
        verdict = self.verdict()
        return {**self.to_state(), "running": True, "arm_choice": self.arm_choice,
                "time_left_s": round(self.time_left_s(), 3), "ran_s": round(self.ran_s, 3),
                "arms": {STABLE: {"commit": self.stable_commit, **self.arms[STABLE].to_dict()},
                         CANARY: {"commit": self.commit, **self.arms[CANARY].to_dict()}},
                "verdict_now": {"outcome": verdict.outcome, "reason": verdict.reason}}

    def summary(self, outcome: str, reason: str, decided_by: str) -> dict[str, Any]:
        """What the history keeps of it once it has ended."""
        return {**self.to_state(), "outcome": outcome, "reason": reason,
                "decided_by": decided_by, "ran_s": round(self.ran_s, 3),
                "arms": {arm: stats.to_dict() for arm, stats in self.arms.items()}}


def server_side(exc: BaseException) -> bool:
    """A failure that is not the client's doing: an unexpected exception or a 5xx."""
    return not isinstance(exc, HostError) or exc.status >= 500


def stopped(exc: BaseException) -> bool:
    """A request stopped on purpose: Stop pressed (``/api/stop-generation``: 409 cancelled) or
    the client gone (its task cancelled). No arm failed, and it must not be run again."""
    return isinstance(exc, asyncio.CancelledError) or (
        isinstance(exc, HostError) and exc.code == Code.CANCELLED)


class Arms:
    """Where requests go: the stable arm, or a running canary's to its share. One per host,
    shared by the speech service (routing, measuring) and the rollout (starting, ending)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.run: CanaryRun | None = None
        self._rng = rng or random.Random()

    def choose(self) -> str:
        run = self.run
        return STABLE if run is None else run.choose(ARM_REQUEST.get() or ArmRequest(),
                                                     self._rng)

    def served(self, arm: str, first_audio_s: float, busy_s: float, audio_s: float) -> None:
        if self.run is not None:
            self.run.arms[arm].served(first_audio_s, busy_s, audio_s)

    def failed(self, arm: str) -> None:
        if self.run is not None:
            self.run.arms[arm].failed()

    async def serve(self, attempt: Callable[[str], Awaitable[R]]) -> R:
        """``attempt(arm)`` on the arm this request goes to. A canary attempt that fails (it
        raises only before its first byte) is tried once more on the stable arm and counts
        as a canary error, unless the stable arm refuses the request too (a 4xx: the
        request, not the canary, was wrong). A stopped request (``stopped``) ends there: it
        is neither run again nor counted. Successes are counted by ``attempt``.

        A client error on the canary is still asked of the stable arm, which checks it before
        it queues (so a bad request costs nothing more): a canary that refuses what the
        stable arm serves (a voice or a language it dropped) is the canary's failure, and
        its clients are served meanwhile."""
        if self.choose() == STABLE:
            try:
                return await attempt(STABLE)
            except Exception as exc:
                if server_side(exc):
                    self.failed(STABLE)
                raise
        try:
            return await attempt(CANARY)
        # Any failure; a CancelledError (a client that left) is none and passes through.
        except Exception as exc:
            if stopped(exc):  # run again on stable, a Stop would be ignored
                raise
            first = exc
        try:
            result = await attempt(STABLE)
        except Exception as exc:
            if server_side(first):
                self.failed(CANARY)
            if server_side(exc):
                self.failed(STABLE)
            raise
        self.failed(CANARY)
        self._log_retry(first)
        return result

    def _log_retry(self, exc: Exception) -> None:
        run = self.run
        if run is None:
            return
        # The first few in full (a traceback for an unexpected one), then quietly: a broken
        # canary fails at the rate it is sent requests.
        run.failures_logged += 1
        level = logging.WARNING if run.failures_logged <= 3 else logging.DEBUG
        reason = exc.message if isinstance(exc, HostError) else f"{type(exc).__name__}: {exc}"
        log.log(level, "canary %s failed a request (served by the stable arm instead): %s",
                run.commit[:10], reason,
                exc_info=exc if not isinstance(exc, HostError) and level == logging.WARNING
                else None)
