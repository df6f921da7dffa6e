"""Runtime-only model defaults (speed, voice, language): a commit that changes only them is heard
on the next request without a reload, and one naming a voice or language the model lacks is
refused at apply with nothing changed."""

from __future__ import annotations

import pytest

from alltalk_host import Audio, SpeechRequest, hookimpl
from alltalk_host_reference import ReferenceBackend

from .helpers import dominant_pitch, error_of, read_wav

TEXT = "Hello there, how are you today?"


async def speak(client, **body):
    """(seconds of audio, pitch, X-AllTalk-Model, X-AllTalk-Commit) of one /tts request."""
    resp = await client.post("/tts", json={"text": TEXT, **body})
    assert resp.status == 200, await resp.text()
    samples, rate = read_wav(await resp.read())
    return (len(samples) / rate, dominant_pitch(samples, rate),
            resp.headers["X-AllTalk-Model"], resp.headers["X-AllTalk-Commit"])


async def apply(client, commit):
    return await client.post("/control/config/apply", json={"commit": commit})


async def test_a_new_default_speed_is_heard_at_once_without_a_reload(start_server, config_repo):
    client = await start_server()
    seconds, _, model, _ = await speak(client)
    commit = config_repo.change("slower by default", "models.toml",
                                "default.models.reference.default_speed", 0.6)
    plan = await (await client.post("/control/config/plan", json={"commit": commit})).json()
    assert plan["runtime_only"] and plan["keep"] == ["reference"]

    resp = await apply(client, commit)
    assert resp.status == 200, await resp.text()
    slower, _, model_after, served_by = await speak(client)
    assert served_by == commit
    assert model_after == model == "reference; generation=1"  # not reloaded
    assert slower / seconds == pytest.approx(1 / 0.6, rel=0.05)
    # A speed the request names still wins over the default.
    assert (await speak(client, speed=1.0))[0] == pytest.approx(seconds, rel=0.02)


async def test_a_new_default_voice_is_heard_at_once_without_a_reload(start_server, config_repo):
    client = await start_server()
    _, before, _, _ = await speak(client)
    _, male, _, _ = await speak(client, voice="male_01")
    assert abs(male - before) > 5  # the two voices are told apart by pitch

    commit = config_repo.change("male voice by default", "models.toml",
                                "default.models.reference.default_voice", "male_01")
    assert (await apply(client, commit)).status == 200
    _, after, model, served_by = await speak(client)
    assert served_by == commit and model == "reference; generation=1"
    assert after == pytest.approx(male, rel=0.01)


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [("default_voice", "nobody", "unknown_voice"),
     ("default_language", "ja", "unsupported_language")],
)
async def test_a_default_the_model_cannot_honour_fails_the_apply_and_changes_nothing(
        start_server, config_repo, key, value, code):
    client = await start_server()
    before = await speak(client)
    commit = config_repo.change(f"bad {key}", "models.toml",
                                f"default.models.reference.{key}", value)

    resp = await apply(client, commit)
    error = await error_of(resp)
    assert resp.status == 422 and error["code"] == code, error
    assert value in error["message"] and error["details"]["commit"] == commit
    # The same audio, from the same commit and the same loaded model, as before.
    assert await speak(client) == before
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == config_repo.initial
    assert status["applied_commit"] == config_repo.initial
    assert status["last_failure"]["commit"] == commit
    commits = (await (await client.get("/control/config/commits")).json())["commits"]
    assert {c["commit"]: c["failed"] for c in commits}[commit] is True


async def test_a_switch_to_a_model_lacking_its_default_voice_fails_with_nothing_changed(
        start_server, config_repo):
    config_repo.model("reference-low", default_voice="female_01")  # it only has "narrator"
    base = config_repo.commit("reference-low names a voice it does not have")
    client = await start_server()
    before = await speak(client)

    resp = await client.post("/control/models/switch", json={"model": "reference-low"})
    error = await error_of(resp)
    assert resp.status == 422 and error["code"] == "unknown_voice", error
    assert "reference-low" in error["message"] and "female_01" in error["message"]
    assert config_repo.head == base
    assert await speak(client) == before


class HeardBackend(ReferenceBackend):
    """The reference backend, noting the language each request was spoken in (in this
    process: its model runs inline)."""

    name = "heard"
    languages: list[str] = []

    def synthesize(self, request: SpeechRequest) -> Audio:
        HeardBackend.languages.append(request.language)
        return super().synthesize(request)


class HeardPlugin:
    @staticmethod
    @hookimpl
    def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
        register(HeardBackend)


async def test_a_new_default_language_is_spoken_and_said_on_alltalk_routes(start_server,
                                                                           config_repo):
    """AllTalk's routes speak a language the model lacks in its default, and say which in
    X-AllTalk-Language: after a runtime-only change, the new default, in both."""
    config_repo.set("models.toml", "default.models.reference.backend", "heard")
    config_repo.set("models.toml", "default.models.reference.workers.isolation", "inline")
    config_repo.commit("a backend that tells what it heard")
    client = await start_server(extra_plugins=[("heard", HeardPlugin)])
    commit = config_repo.change("German by default", "models.toml",
                                "default.models.reference.default_language", "de")
    assert (await apply(client, commit)).status == 200
    resp = await client.post("/api/tts-generate", data={"text_input": "Ahoj.",
                                                         "language": "cs"})
    assert (await resp.json())["status"] == "generate-success"
    assert resp.headers["X-AllTalk-Commit"] == commit
    assert resp.headers["X-AllTalk-Language"] == "de; model reference does not speak cs"
    assert HeardBackend.languages[-1] == "de"
