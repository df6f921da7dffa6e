"""Swaps under load on a real server on loopback: no request dropped, mixed or over-admitted."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from alltalk_host import ModelContext, SpeechRequest
from tools.server import Server

from .helpers import dominant_pitch, error_of, get_json, post, read_wav, send_and_forget, wait_until
from .strict_reference import STRICT, OverAdmitted, StrictReferenceBackend

# Swaps under load are the promise workers must keep too: the default isolation (conftest).
pytestmark = pytest.mark.process_workers

TEXT = "Hello there, how are you today?"


def models_by_name(status) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for m in status["models"]:
        out.setdefault(m["name"], []).append(m)
    return out


async def test_requests_during_repeated_swaps_all_succeed_and_are_never_mixed(
        start_server, config_repo):
    # The strict backend fails any request the host over-admits, during swaps too.
    config_repo.model("reference", backend=STRICT, pitch_hz=100, rtf=0.15, load_seconds=0.05)
    low = config_repo.commit("low voice")
    high = config_repo.change("high voice", "models.toml",
                              "default.models.reference.settings.pitch_hz", 220)
    client = await start_server()
    expected = {low: 100, high: 220}
    results: list[tuple[int, str, float]] = []
    swapping = True

    async def worker() -> None:
        while swapping:
            resp = await post(client, "/tts", text=TEXT, voice="female_01")
            data = await resp.read()
            if resp.status != 200:
                results.append((resp.status, "", 0.0))
                continue
            results.append((200, resp.headers["X-AllTalk-Commit"],
                            dominant_pitch(*read_wav(data))))

    workers = [asyncio.create_task(worker()) for _ in range(6)]
    for i in range(8):
        target = low if i % 2 else high
        resp = await post(client, "/control/config/apply", commit=target)
        assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.15)
    swapping = False
    await asyncio.gather(*workers)

    failed = [r for r in results if r[0] != 200]
    assert failed == []
    assert len(results) > 20
    for _, commit, pitch in results:
        # The audio is what the commit in its header configures (voice factor ~0.98).
        assert abs(pitch / expected[commit] - 0.98) < 0.08, (commit, pitch)
    assert {c for _, c, _ in results} == {low, high}


async def test_old_generation_is_unloaded_only_after_its_last_request(start_server,
                                                                      config_repo):
    config_repo.model("reference", rtf=1.0)
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")  # a quick warm-up
    config_repo.commit("slow speech")
    client = await start_server()
    long_request = asyncio.create_task(post(client, "/tts", text="A long sentence to speak."))
    await wait_until(client, lambda s: models_by_name(s)["reference"][0]["in_flight"] == 1)

    commit = config_repo.change("new pitch", "models.toml",
                                "default.models.reference.settings.pitch_hz", 200)
    assert (await post(client, "/control/config/apply", commit=commit)).status == 200
    status = await (await client.get("/control/status")).json()
    states = {(m["generation"], m["state"], m["in_flight"])
              for m in models_by_name(status)["reference"]}
    assert states == {(1, "draining", 1), (2, "serving", 0)}

    resp = await long_request
    assert resp.status == 200
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
    await wait_until(client, lambda s: len(models_by_name(s)["reference"]) == 1)


async def test_the_drain_deadline_ends_a_started_request_with_a_clean_503(
        start_server, config_repo):
    config_repo.model("reference", rtf=10.0)
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")
    config_repo.set("settings.toml", "default.drain_deadline_s", 0.2)
    config_repo.commit("slow speech, short drain")
    client = await start_server()
    long_request = asyncio.create_task(post(client, "/tts", text="A long sentence to speak."))
    await wait_until(client, lambda s: models_by_name(s)["reference"][0]["running"] == 1)
    commit = config_repo.change("new pitch", "models.toml",
                                "default.models.reference.settings.pitch_hz", 200)
    assert (await post(client, "/control/config/apply", commit=commit)).status == 200
    # The request (about 20 s of work) ends at the deadline, not when the backend finishes.
    resp = await asyncio.wait_for(long_request, 15.0)
    assert resp.status == 503
    error = await error_of(resp)
    assert error["code"] == "drain_deadline" and commit[:10] in error["message"]
    await wait_until(client, lambda s: len(models_by_name(s)["reference"]) == 1)
    # Its slot came back: the new generation serves, the old one is gone.
    assert (await post(client, "/tts", text="Hi.")).status == 200


async def test_the_host_never_exceeds_a_backends_declared_concurrency(start_server,
                                                                      config_repo):
    # The strict backend raises if it is ever called by more than max_concurrency callers.
    config_repo.model("reference", backend=STRICT, max_concurrency=2, rtf=0.3, instances=2)
    config_repo.commit("two instances of two")
    client = await start_server()
    status = await (await client.get("/control/status")).json()
    assert models_by_name(status)["reference"][0]["max_concurrency"] == 4
    responses = await asyncio.gather(*[post(client, "/tts", text="Hi there") for _ in range(16)])
    assert [r.status for r in responses] == [200] * 16


def test_the_strict_backend_refuses_a_caller_beyond_its_declared_concurrency():
    """The oracle the concurrency tests rely on does fire."""
    settings = StrictReferenceBackend.validate_settings({"max_concurrency": 1, "rtf": 2.0})
    backend = StrictReferenceBackend(settings, ModelContext("strict", Path("."), Path(".")))
    backend.load()
    first = SpeechRequest("A sentence that keeps the only slot busy.")
    inside = threading.Thread(target=backend.synthesize, args=(first,))
    inside.start()
    try:
        deadline = time.monotonic() + 10
        while backend.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(OverAdmitted, match="max_concurrency 1"):
            backend.synthesize(SpeechRequest("Me too."))
        with pytest.raises(OverAdmitted):
            next(backend.stream(SpeechRequest("Me too. And me.")))
    finally:
        first.cancelled.set()
        inside.join()
    assert backend.active == 0
    assert len(list(backend.stream(SpeechRequest("One. Two.")))) == 2  # free again


async def test_requests_beyond_the_queue_limit_get_busy(start_server, config_repo):
    config_repo.model("reference", backend=STRICT, max_concurrency=1, rtf=1.0)
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")
    config_repo.set("settings.toml", "default.queue_limit", 2)
    config_repo.commit("tiny queue")
    client = await start_server()
    responses = await asyncio.gather(*[post(client, "/tts", text="Hi there") for _ in range(6)])
    codes = sorted(r.status for r in responses)
    assert codes == [200, 200, 200, 503, 503, 503]
    busy = next(r for r in responses if r.status == 503)
    assert (await error_of(busy))["code"] == "busy"


async def test_low_memory_swap_makes_requests_wait_instead_of_failing(start_server,
                                                                      config_repo):
    config_repo.model("reference", backend=STRICT, low_memory_swap=True, load_seconds=0.3)
    config_repo.commit("unload first")
    client = await start_server()
    commit = config_repo.change("new pitch", "models.toml",
                                "default.models.reference.settings.pitch_hz", 200)
    apply = asyncio.create_task(post(client, "/control/config/apply", commit=commit))
    await wait_until(client, lambda s: any(m["state"] == "loading" for m in s["models"]))
    during = await asyncio.gather(*[post(client, "/tts", text="Waiting") for _ in range(4)])
    assert (await apply).status == 200
    assert [r.status for r in during] == [200] * 4
    assert {r.headers["X-AllTalk-Model"] for r in during} == {"reference; generation=2"}


async def test_a_second_apply_while_one_runs_gets_409_naming_it(start_server, config_repo):
    client = await start_server()
    slow = config_repo.change("slow load", "models.toml",
                              "default.models.reference.settings.load_seconds", 1.0)
    first = asyncio.create_task(post(client, "/control/config/apply", commit=slow))
    await wait_until(client, lambda s: s["apply_in_progress"] is not None)
    for path, body in (("/control/config/apply", {"commit": config_repo.initial}),
                       ("/control/config/rollback", {}),
                       ("/control/config/reload", {}),
                       ("/control/models/switch", {"model": "reference-low"})):
        resp = await post(client, path, **body)
        error = await error_of(resp)
        assert resp.status == 409 and error["code"] == "apply_in_progress", error
        assert error["details"]["commit"] == slow
        assert slow[:10] in error["message"]
    # Speech goes on meanwhile.
    assert (await post(client, "/tts", text="still serving")).status == 200
    assert (await first).status == 200


def test_a_crash_mid_apply_leaves_the_previous_good_state(config_repo, tmp_path):
    state = tmp_path / "state"
    server = Server(config_repo.path, state)
    try:
        slow = config_repo.change("slow load", "models.toml",
                                  "default.models.reference.settings.load_seconds", 30.0)
        request = urllib.request.Request(
            f"{server.base}/control/config/apply",
            data=json.dumps({"commit": slow}).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        # The apply call is abandoned when the server dies.
        threading.Thread(target=lambda: send_and_forget(request), daemon=True).start()
        deadline = time.monotonic() + 10
        while get_json(f"{server.base}/control/status")["apply_in_progress"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

        server = Server(config_repo.path, state)
        status = get_json(f"{server.base}/control/status")
        assert status["serving_commit"] == config_repo.initial
        assert status["attempted_commit"] == config_repo.initial  # the restart's own apply
        assert status["applied_commit"] == config_repo.initial
    finally:
        server.stop()
