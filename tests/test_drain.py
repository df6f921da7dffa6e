"""Requests caught by a swap: waiting ones move to the replacement, started ones keep their
generation until the drain deadline, and every one of them ends, none with a 500."""

from __future__ import annotations

import asyncio

import pytest

from alltalk_host.errors import Unavailable
from alltalk_host.serving.speech import SpeechInput
from alltalk_host.web.keys import HOST

from .helpers import error_of, wait_until
from .strict_reference import STRICT

LONG = "A long sentence to speak."  # about 1.8 s of audio: 5.4 s of work at rtf 3
SHORT = "Hi."  # about 0.3 s of audio: 0.9 s of work at rtf 3


def generations(status, name):
    return {m["generation"]: m for m in status["models"] if m["name"] == name}


def one_at_a_time(config_repo, deadline: float, **extra):
    """Both reference models take one request at a time, slowly, on the strict backend: a
    slot given back before an aborted request's backend call ends fails the next request."""
    for name in ("reference", "reference-low"):
        config_repo.model(name, backend=STRICT, max_concurrency=1, rtf=3.0,
                          **extra.get(name, {}))
    config_repo.set("settings.toml", "default.warmup_text", SHORT)
    config_repo.set("settings.toml", "default.drain_deadline_s", deadline)


async def speak(client, text, **body):
    resp = await client.post("/tts", json={"text": text, **body})
    await resp.read()
    return resp


async def test_a_switch_past_a_short_deadline_answers_every_request(start_server, config_repo):
    """The reported sequence: deadline 1 s, four long-running requests, a switch."""
    one_at_a_time(config_repo, deadline=1.0)
    config_repo.commit("one at a time, short drain")
    client = await start_server()
    first = asyncio.create_task(speak(client, LONG))
    await wait_until(client, lambda s: generations(s, "reference")[1]["running"] == 1)
    queued = [asyncio.create_task(speak(client, SHORT)) for _ in range(3)]
    status = await wait_until(client, lambda s: generations(s, "reference")[1]["waiting"] == 3)
    assert generations(status, "reference")[1]["in_flight"] == 4

    new = config_repo.change("new pitch", "models.toml",
                             "default.models.reference.settings.pitch_hz", 200)
    assert (await client.post("/control/config/apply", json={"commit": new})).status == 200
    responses = await asyncio.wait_for(asyncio.gather(first, *queued), 30)

    # The started request keeps generation 1 and ends cleanly at its deadline ...
    assert responses[0].status == 503
    assert (await error_of(responses[0]))["code"] == "drain_deadline"
    # ... the waiting ones moved to the replacement and say so.
    for resp in responses[1:]:
        assert resp.status == 200
        assert resp.headers["X-AllTalk-Commit"] == new
        assert resp.headers["X-AllTalk-Model"] == "reference; generation=2"
    status = await wait_until(client, lambda s: list(generations(s, "reference")) == [2])
    assert generations(status, "reference")[2]["in_flight"] == 0
    assert (await speak(client, SHORT)).status == 200  # no slot was lost


async def test_waiting_requests_for_an_unloaded_model_get_model_unloaded(start_server,
                                                                        config_repo):
    one_at_a_time(config_repo, deadline=1.0, **{"reference-low": {"keep_loaded": True}})
    old = config_repo.commit("reference-low kept loaded")
    client = await start_server()
    first = asyncio.create_task(speak(client, LONG, model="reference-low"))
    await wait_until(client, lambda s: generations(s, "reference-low")[1]["running"] == 1)
    queued = [asyncio.create_task(speak(client, SHORT, model="reference-low"))
              for _ in range(2)]
    await wait_until(client, lambda s: generations(s, "reference-low")[1]["waiting"] == 2)

    new = config_repo.change("unload reference-low", "models.toml",
                             "default.models.reference-low.keep_loaded", False)
    assert (await client.post("/control/config/apply", json={"commit": new})).status == 200
    first, *queued = await asyncio.wait_for(asyncio.gather(first, *queued), 30)
    assert first.status == 503 and (await error_of(first))["code"] == "drain_deadline"
    for resp in queued:
        error = await error_of(resp)
        assert resp.status == 503 and error["code"] == "model_unloaded", error
        assert new[:10] in error["message"]
    assert old != new


async def test_a_waiting_request_for_an_unloaded_model_is_served_if_it_starts_in_time(
        start_server, config_repo):
    one_at_a_time(config_repo, deadline=20.0, **{"reference-low": {"keep_loaded": True}})
    old = config_repo.commit("reference-low kept loaded")
    client = await start_server()
    first = asyncio.create_task(speak(client, SHORT, model="reference-low"))
    await wait_until(client, lambda s: generations(s, "reference-low")[1]["running"] == 1)
    second = asyncio.create_task(speak(client, SHORT, model="reference-low"))
    await wait_until(client, lambda s: generations(s, "reference-low")[1]["waiting"] == 1)
    new = config_repo.change("unload reference-low", "models.toml",
                             "default.models.reference-low.keep_loaded", False)
    assert (await client.post("/control/config/apply", json={"commit": new})).status == 200
    for resp in await asyncio.wait_for(asyncio.gather(first, second), 30):
        assert resp.status == 200
        assert resp.headers["X-AllTalk-Commit"] == old
        assert resp.headers["X-AllTalk-Model"] == "reference-low; generation=1"
    await wait_until(client, lambda s: "reference-low" not in {
        m["name"] for m in s["models"] if m["state"] != "configured"})


async def test_a_waiting_request_that_named_no_model_follows_the_new_default(start_server,
                                                                            config_repo):
    one_at_a_time(config_repo, deadline=20.0)
    old = config_repo.commit("one at a time")
    client = await start_server()
    first = asyncio.create_task(speak(client, LONG))
    await wait_until(client, lambda s: generations(s, "reference")[1]["running"] == 1)
    second = asyncio.create_task(speak(client, SHORT))
    await wait_until(client, lambda s: generations(s, "reference")[1]["waiting"] == 1)
    resp = await client.post("/control/models/switch", json={"model": "reference-low"})
    assert resp.status == 200, await resp.text()
    new = (await resp.json())["commit"]
    first, second = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert (first.status, first.headers["X-AllTalk-Commit"]) == (200, old)
    assert first.headers["X-AllTalk-Model"] == "reference; generation=1"
    assert (second.status, second.headers["X-AllTalk-Commit"]) == (200, new)
    assert second.headers["X-AllTalk-Model"] == "reference-low; generation=1"


async def test_a_waiting_request_starts_under_a_runtime_change_applied_meanwhile(
        start_server, config_repo):
    one_at_a_time(config_repo, deadline=20.0)
    config_repo.commit("one at a time")
    client = await start_server()
    first = asyncio.create_task(speak(client, LONG))
    await wait_until(client, lambda s: generations(s, "reference")[1]["running"] == 1)
    second = asyncio.create_task(speak(client, SHORT))
    await wait_until(client, lambda s: generations(s, "reference")[1]["waiting"] == 1)
    new = config_repo.change("limit", "settings.toml", "default.max_text_length", 1000)
    assert (await client.post("/control/config/apply", json={"commit": new})).status == 200
    second = await asyncio.wait_for(second, 30)
    assert second.status == 200 and second.headers["X-AllTalk-Commit"] == new
    assert second.headers["X-AllTalk-Model"] == "reference; generation=1"
    assert (await first).status == 200


async def _say(utterance, text: str) -> int:
    """Samples of one piece of ``utterance``."""
    return sum([len(chunk.samples) async for chunk in utterance.speak(text)])


async def test_an_utterance_between_pieces_lets_others_in_and_keeps_its_generation(
        start_server, config_repo):
    """A Wyoming stream waiting for its next sentence gives its slot to other requests (the
    strict backend fails any request let into a busy instance), speaks its next piece on the
    generation it started on after a switch, and once the drain deadline has passed its next
    piece ends with drain_deadline, while the new generation serves."""
    one_at_a_time(config_repo, deadline=4.0)
    config_repo.commit("one at a time")
    client = await start_server()
    host = client.app[HOST]
    utterance = await host.speech.utterance(SpeechInput(SHORT))
    try:
        assert await _say(utterance, SHORT)
        # Between pieces: a request gets the only slot, and the next piece waits for it.
        other = asyncio.create_task(speak(client, SHORT))
        await wait_until(client, lambda s: generations(s, "reference")[1]["running"] == 2)
        assert await _say(utterance, SHORT)
        assert (await other).status == 200
        new = config_repo.change("new pitch", "models.toml",
                                 "default.models.reference.settings.pitch_hz", 200)
        assert (await client.post("/control/config/apply", json={"commit": new})).status == 200
        assert await _say(utterance, SHORT)  # draining, before its deadline: generation 1
        assert utterance.provenance.generation == 1
        resp = await speak(client, SHORT)
        assert resp.headers["X-AllTalk-Model"] == "reference; generation=2"
        await wait_until(client, lambda s: list(generations(s, "reference")) == [2])
        with pytest.raises(Unavailable) as ended:
            await _say(utterance, SHORT)
        assert ended.value.code == "drain_deadline"
    finally:
        await utterance.aclose()
    assert (await speak(client, SHORT)).status == 200  # no slot was lost
