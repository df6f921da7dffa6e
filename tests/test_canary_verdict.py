"""A canary's verdict, its arm choice and the reference backend's error_rate, without a
server: the numbers in, the decision and its reason out."""

from __future__ import annotations

import random
import threading
from dataclasses import replace

import pytest

from alltalk_host.backend import ModelContext, SpeechRequest
from alltalk_host.change.canary import CanaryRun, Verdict, evaluate
from alltalk_host.config.canary import (
    ABORT,
    CANARY,
    EXTEND,
    PROMOTE,
    STABLE,
    CanarySettings,
    CanarySpec,
)
from alltalk_host.errors import HostError
from alltalk_host.serving.arms import ArmRequest, ArmStats
from alltalk_host_reference import ReferenceBackend

SPEC = CanarySpec(percent=10, duration_s=300, min_requests=20, max_error_rate=0.01,
                  max_latency_ratio=1.5)


def arm(requests: int, errors: int = 0, first_audio_s: float = 0.2) -> ArmStats:
    stats = ArmStats()
    for _ in range(requests - errors):
        stats.served(first_audio_s, busy_s=0.1, audio_s=1.0)
    for _ in range(errors):
        stats.failed()
    return stats


def test_too_few_requests_extend_once_then_abort():
    first = evaluate(SPEC, arm(100), arm(12), extended=False)
    assert first == Verdict(EXTEND,
                            "too few requests: 12 < 20 on the canary; extended once by 300 s")
    again = evaluate(SPEC, arm(100), arm(19), extended=True)
    assert again == Verdict(ABORT, "too few requests: 19 < 20 on the canary after one extension")


def test_an_error_rate_over_the_limit_aborts_with_the_numbers():
    verdict = evaluate(SPEC, arm(300), arm(41, errors=10), extended=False)
    assert verdict.outcome == ABORT
    assert verdict.reason == "error rate 0.24 > 0.01 over 41 requests"


def test_a_slow_canary_is_aborted_by_its_p95_against_the_stable_arms():
    verdict = evaluate(SPEC, arm(100, first_audio_s=0.2), arm(40, first_audio_s=0.5), False)
    assert verdict.outcome == ABORT
    assert verdict.reason == ("p95 time to first audio 0.500 s is 2.50 x the stable arm's "
                              "0.200 s > 1.5")


def test_a_p95_within_the_slack_passes_whatever_the_ratio():
    """2 ms against 1 ms is noise, not a slower model: promoted, and the reason says why."""
    fast = evaluate(SPEC, arm(100, first_audio_s=0.001), arm(40, first_audio_s=0.002), False)
    assert fast == Verdict(PROMOTE, "error rate 0.00 <= 0.01 over 40 requests; p95 time to "
                                    "first audio 0.002 s is within 0.05 s of the stable "
                                    "arm's 0.001 s")
    strict = replace(SPEC, latency_slack_s=0)
    assert evaluate(strict, arm(100, first_audio_s=0.001), arm(40, first_audio_s=0.002),
                    False).outcome == ABORT
    # Just past the slack and the ratio both: aborted.
    slow = evaluate(SPEC, arm(100, first_audio_s=0.02), arm(40, first_audio_s=0.08), False)
    assert slow.outcome == ABORT and slow.reason.startswith("p95 time to first audio 0.080 s "
                                                            "is 4.00 x")


def test_a_good_canary_is_promoted_and_says_why():
    verdict = evaluate(SPEC, arm(200, errors=1), arm(40, first_audio_s=0.25), False)
    assert verdict.outcome == PROMOTE
    assert verdict.reason == ("error rate 0.00 <= 0.01 over 40 requests; p95 time to first "
                              "audio 1.25 x the stable arm's <= 1.5")
    # Nothing to compare latency with (all requests went to the canary): said so.
    alone = evaluate(SPEC, arm(0), arm(40), False)
    assert alone.outcome == PROMOTE and "latency not compared" in alone.reason


def test_p95_is_the_95th_percentile_of_what_was_measured():
    stats = ArmStats()
    for i in range(1, 101):
        stats.served(i / 100, busy_s=0.5, audio_s=1.0)
    assert stats.p95_first_audio() == 0.95
    assert stats.to_dict()["mean_real_time_factor"] == 0.5


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"percent": 0}, "canary.percent must be above 0 to 100"),
    ({"percent": "10"}, "canary.percent must be a number"),
    ({"duration_s": float("nan")}, "canary.duration_s must be a number"),
    ({"min_requests": 2.5}, "canary.min_requests must be a whole number"),
    ({"max_error_rate": 1.5}, "canary.max_error_rate must be from 0 to 1"),
    ({"latency_slack_s": -0.1}, "canary.latency_slack_s must be from 0 to 60"),
    ({"percents": 10}, "canary has no setting 'percents'"),
])
def test_overrides_out_of_range_are_refused(overrides, problem):
    with pytest.raises(HostError) as info:
        SPEC.with_overrides(overrides)
    assert info.value.message.startswith(problem) and info.value.status == 400
    assert SPEC.with_overrides({"percent": 50, "min_requests": 3}).percent == 50


def run(choice: str, percent: float = 30) -> CanaryRun:
    settings = CanarySettings(SPEC, arm_choice=choice, client_header="X-Chat", watch=False)
    return CanaryRun("a" * 40, "b" * 40, CanarySpec(percent=percent), settings, "test")


def test_random_choice_sends_about_its_share_and_a_forced_arm_wins():
    rng = random.Random(7)
    canary = run("random")
    picks = [canary.choose(ArmRequest(), rng) for _ in range(10_000)]
    assert 2700 < picks.count(CANARY) < 3300
    assert {canary.choose(ArmRequest(forced=STABLE), rng) for _ in range(50)} == {STABLE}
    assert {canary.choose(ArmRequest(forced=CANARY), rng) for _ in range(50)} == {CANARY}


def test_sticky_choices_keep_a_client_on_one_arm():
    rng = random.Random(7)
    by_address = run("address")
    for n in range(50):
        request = ArmRequest(address=f"10.0.0.{n}")
        assert len({by_address.choose(request, rng) for _ in range(20)}) == 1
    by_header = run("header", percent=50)
    chosen = {by_header.choose(ArmRequest(headers={"X-Chat": f"c{n}"}), rng)
              for n in range(40)}
    assert chosen == {STABLE, CANARY}
    # No such header: the address keys it, still sticky.
    request = ArmRequest(address="10.1.1.1")
    assert len({by_header.choose(request, rng) for _ in range(20)}) == 1


def reference(error_rate: float, tmp_path) -> ReferenceBackend:
    settings = ReferenceBackend.validate_settings({"error_rate": error_rate, "memory_mb": 1})
    backend = ReferenceBackend(settings, ModelContext("r", tmp_path, tmp_path))
    backend.load()
    return backend


@pytest.mark.parametrize(("rate", "failures"), [(0.0, 0), (0.25, 5), (1.0, 20)])
def test_the_reference_error_rate_fails_its_share_after_the_warm_up(tmp_path, rate, failures):
    backend = reference(rate, tmp_path)
    assert backend.synthesize(SpeechRequest("Warm up.")).duration > 0  # the warm-up succeeds
    failed = 0
    for n in range(20):
        try:
            if n % 2:
                list(backend.stream(SpeechRequest("One. Two.")))
            else:
                backend.synthesize(SpeechRequest("Hello."))
        except RuntimeError as exc:
            assert "simulated failure" in str(exc)
            failed += 1
    assert failed == failures
    backend.load()  # loaded again: its next request is a warm-up again
    assert backend.synthesize(SpeechRequest("Warm up.")).duration > 0


def test_the_reference_error_rate_is_validated(tmp_path):
    with pytest.raises(ValueError, match="error_rate"):
        ReferenceBackend.validate_settings({"error_rate": 2})
    # Threads share the count: 40 requests at 0.5 fail exactly 20 times.
    backend = reference(0.5, tmp_path)
    backend.synthesize(SpeechRequest("Warm up."))
    failures = []

    def speak() -> None:
        for _ in range(10):
            try:
                backend.synthesize(SpeechRequest("Hi."))
            except RuntimeError:
                failures.append(1)
    threads = [threading.Thread(target=speak) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(failures) == 20
