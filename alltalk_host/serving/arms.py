"""Where each request goes while a canary runs: the stable arm, or the canary's to its share;
what each arm did (``ArmStats``); a canary request that fails tried again on the stable arm;
and a request whose worker process died under it (503 ``worker_crashed``) before its first
audio tried once more on its arm (another instance, or the same one once restarted).
The canary run itself (its spec, clock and verdict) is ``change/canary.py``'s; here it is only
what routing needs of it (``RunningCanary``).

Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..config.canary import ARMS, CANARY, STABLE
from ..errors import Code, HostError

log = logging.getLogger(__name__)
R = TypeVar("R")

__all__ = ["ARMS", "ARM_REQUEST", "CANARY", "STABLE", "ArmRequest", "ArmStats", "Arms",
           "RunningCanary", "server_side", "stopped"]

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


class RunningCanary(Protocol):
    """What routing needs of a running canary (``change.canary.CanaryRun``)."""

    commit: str
    arms: dict[str, ArmStats]
    failures_logged: int

    def choose(self, request: ArmRequest, rng: random.Random) -> str: ...


def server_side(exc: BaseException) -> bool:
    """A failure that is not the client's doing: an unexpected exception or a 5xx."""
    return not isinstance(exc, HostError) or exc.status >= 500


def stopped(exc: BaseException) -> bool:
    """A request stopped on purpose: Stop pressed (``/api/stop-generation``: 409 cancelled) or
    the client gone (its task cancelled). No arm failed, and it must not be run again."""
    return isinstance(exc, asyncio.CancelledError) or (
        isinstance(exc, HostError) and exc.code == Code.CANCELLED)


def _once_more_if_crashed(attempt: Callable[[str], Awaitable[R]]
                          ) -> Callable[[str], Awaitable[R]]:
    """``attempt``, run once more when its worker process died under it before it produced
    audio (an attempt raises only before its first audio). The new lease prefers an
    instance that takes calls now, else waits for this one's restart. A timeout is not
    retried: the same text would hang again."""
    async def again(arm: str) -> R:
        try:
            return await attempt(arm)
        except HostError as exc:
            if exc.code != Code.WORKER_CRASHED:
                raise
            log.warning("a request's worker died before its first audio; trying it once "
                        "more: %s", exc.message)
        return await attempt(arm)
    return again


class Arms:
    """Where requests go: the stable arm, or a running canary's to its share. One per host,
    shared by the speech service (routing, measuring) and the rollout (starting, ending)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.run: RunningCanary | None = None
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
        its clients are served meanwhile.

        Each attempt is tried once more, on its own arm, when its worker died before it
        produced audio (``_once_more_if_crashed``): a crash of one process is not the arm's."""
        attempt = _once_more_if_crashed(attempt)
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
