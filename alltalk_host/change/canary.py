"""A canary run and its verdict: a commit serves a share of requests beside the stable one, and
is judged by them.

A canary is two serving snapshots side by side (the registry holds both): the stable one and
the canary's, which shares every generation the commit does not change (a runtime-only canary
shares them all). The settings types are ``config/canary.py``'s, which arm each request goes to
and each arm's measurements ``serving/arms.py``'s; this module owns a run's clock, its choice
of clients and the verdict at the end. ``rollout.py`` orders a canary's start and end.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

from ..config.canary import ABORT, EXTEND, PROMOTE, CanarySettings, CanarySpec
from ..serving.arms import ARMS, CANARY, STABLE, ArmRequest, ArmStats


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
