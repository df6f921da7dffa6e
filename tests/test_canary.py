"""Canary applies with the reference backend: a commit serves a share of requests beside the
stable one, then is promoted or aborted by what it did. Counts, never timings: a canary's
duration is a setting here, and the tests wait for its end by asking the server."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import openai
import pytest

from alltalk_host.commands import cli
from alltalk_host.commands import cli_words as words
from alltalk_host.events import OPERATION
from alltalk_host.web.keys import HOST

from .helpers import error_of, wait_until
from .test_cli_and_docs import run_cli
from .test_metrics import scrape, value

CANARY = "X-AllTalk-Canary"


async def canary_of(client, commit: str, **canary: Any):
    resp = await client.post("/control/config/apply",
                             json={"commit": commit, "canary": canary or True})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["result"] == "canary" and body["commit"] == commit
    return body


async def canary_state(client) -> dict[str, Any]:
    resp = await client.get("/control/canary")
    assert resp.status == 200
    return await resp.json()


async def speak_until_decided(client, texts=("Hello there.",), alternate: bool = False,
                              **headers) -> list[tuple]:
    """Speak (whole files and streams, in turn) until the canary has ended; each answer's
    (status, commit, arm). ``alternate``: ask for the canary and the stable arm in turn, so
    both are measured whatever the random choice would have done."""
    seen = []
    n = 0
    while (await canary_state(client))["running"]:
        text = texts[n % len(texts)]
        if alternate:
            headers[CANARY] = ("canary", "stable")[n % 2]
        if n % 3 == 2:  # AllTalk's stream: the status line waits for its first chunk
            resp = await client.get("/api/tts-generate-streaming",
                                    params={"text": text}, headers=headers)
        else:
            resp = await client.post("/tts", json={"text": text}, headers=headers)
        await resp.read()
        seen.append((resp.status, resp.headers.get("X-AllTalk-Commit"),
                     resp.headers.get("X-AllTalk-Arm")))
        n += 1
        assert n < 2000, "the canary never ended"
    return seen


async def test_a_good_canary_serves_its_share_then_is_promoted(start_server, config_repo):
    client = await start_server()
    stable = config_repo.initial
    new = config_repo.change("higher", "models.toml",
                             "default.models.reference.settings.pitch_hz", 280)
    started = await canary_of(client, new, percent=50, duration_s=1.5, min_requests=6)
    assert started["plan"]["reload"] == ["reference"]
    assert started["canary"]["stable"] == stable and started["canary"]["spec"]["percent"] == 50
    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == stable and status["canary"]["running"]
    assert {(m["name"], m.get("arm")) for m in status["models"]} >= {("reference", "canary")}

    seen = await speak_until_decided(client)
    assert all(s == 200 for s, _, _ in seen)
    by_commit = {c for _, c, _ in seen}
    assert by_commit == {stable, new}, by_commit  # both commits served meanwhile
    # The arm that served says so; once promoted, the new commit is the stable arm.
    assert all(commit == new for _, commit, arm in seen if arm == "canary")
    assert all(arm == "stable" for _, commit, arm in seen if commit == stable)
    assert sum(arm == "canary" for _, _, arm in seen) >= 6

    last = (await canary_state(client))["last"]
    assert last["result"] == "applied" and last["commit"] == new
    assert last["canary"]["outcome"] == "promoted" and last["canary"]["decided_by"] == "canary"
    assert last["canary"]["arms"]["canary"]["requests"] >= 6
    assert last["canary"]["arms"]["canary"]["errors"] == 0
    assert re.match(r"error rate 0\.00 <= 0\.01 over \d+ requests", last["reason"])
    # Promoted exactly as an apply: applied, known-good, serving; the old copy drains away.
    status = await wait_until(client, lambda s: [m["name"] for m in s["models"]
                                                 if m["state"] != "configured"] == ["reference"])
    assert status["applied_commit"] == status["serving_commit"] == new
    assert not status["canary"]["running"]
    commits = {c["commit"]: c for c in (await (await client.get(
        "/control/config/commits")).json())["commits"]}
    assert commits[new]["known_good"] and commits[new]["serving"]
    resp = await client.post("/tts", json={"text": "Hello."})
    assert resp.headers["X-AllTalk-Commit"] == new and resp.headers["X-AllTalk-Arm"] == "stable"
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=2"


async def test_a_failing_canary_is_aborted_with_its_measured_reason_and_no_client_fails(
        start_server, config_repo):
    client = await start_server()
    stable = config_repo.initial
    bad = config_repo.change("breaks", "models.toml",
                             "default.models.reference.settings.error_rate", 1.0)
    await canary_of(client, bad, percent=50, duration_s=1.5, min_requests=4)
    seen = await speak_until_decided(client, texts=("Hello there.", "One. Two."))
    # Every canary attempt failed before its first byte: the stable arm served it instead,
    # streams included, and the answer says so.
    assert seen and all(s == 200 for s, _, _ in seen), seen
    assert {(c, a) for _, c, a in seen} == {(stable, "stable")}

    last = (await canary_state(client))["last"]
    arms = last["canary"]["arms"]
    assert last["result"] == "failed" and last["canary"]["outcome"] == "aborted"
    assert arms["canary"]["requests"] == arms["canary"]["errors"] >= 4
    assert arms["stable"]["errors"] == 0
    # Its own share and every retry (the last few answers may come after the verdict).
    assert arms["canary"]["requests"] < arms["stable"]["requests"] <= len(seen)
    assert last["reason"] == (f"error rate 1.00 > 0.01 over {arms['canary']['requests']} "
                              "requests")
    commits = {c["commit"]: c for c in (await (await client.get(
        "/control/config/commits")).json())["commits"]}
    assert commits[bad]["failed"] and commits[bad]["failure_reason"] == last["reason"]
    # The canary's own generation is unloaded; the stable one serves on.
    status = await wait_until(client, lambda s: [(m["name"], m.get("generation"))
                                                 for m in s["models"]
                                                 if m["state"] != "configured"]
                              == [("reference", 1)])
    assert status["applied_commit"] == status["serving_commit"] == stable


async def test_a_slow_canary_is_aborted_by_its_p95_time_to_first_audio(start_server,
                                                                      config_repo):
    """A model that works but is slow: no error, and still not promoted."""
    client = await start_server()
    stable = config_repo.initial
    slow = config_repo.change("slow", "models.toml", "default.models.reference.settings.rtf",
                              1.0)  # a second of work per second of audio
    await canary_of(client, slow, percent=50, duration_s=1.0, min_requests=2)
    seen = await speak_until_decided(client, texts=("Hi.",), alternate=True)
    assert all(s == 200 for s, _, _ in seen) and {c for _, c, _ in seen} == {stable, slow}
    last = (await canary_state(client))["last"]
    assert last["canary"]["outcome"] == "aborted" and last["canary"]["arms"]["canary"][
        "errors"] == 0
    assert re.fullmatch(r"p95 time to first audio [\d.]+ s is [\d.]+ x the stable arm's "
                        r"[\d.]+ s > 1\.5", last["reason"]), last["reason"]


async def test_streams_switch_arms_before_their_first_byte(start_server, config_repo):
    """A stream sent to a failing canary: the stable arm serves it from its first byte, for
    AllTalk's and OpenAI's streaming routes alike."""
    client = await start_server()
    bad = config_repo.change("breaks", "models.toml",
                             "default.models.reference.settings.error_rate", 1.0)
    await canary_of(client, bad, duration_s=300)
    forced = {CANARY: "canary"}
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}/v1", api_key="x",
                             max_retries=0, default_headers=forced)
    for _ in range(3):
        async with api.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="One. Two. Three.",
                response_format="pcm") as resp:
            assert len(await resp.read()) > 0
            assert resp.headers["X-AllTalk-Commit"] == config_repo.initial
            assert resp.headers["X-AllTalk-Arm"] == "stable"
        resp = await client.get("/api/tts-generate-streaming", params={"text": "One. Two."},
                                headers=forced)
        assert resp.status == 200 and len(await resp.read()) > 44
        assert resp.headers["X-AllTalk-Commit"] == config_repo.initial
    await api.close()
    arms = (await canary_state(client))["arms"]
    assert (arms["canary"]["requests"], arms["canary"]["errors"]) == (6, 6)
    assert (arms["stable"]["requests"], arms["stable"]["errors"]) == (6, 0)
    assert (await client.post("/control/canary/abort", json={})).status == 200


async def test_a_person_promotes_or_aborts_early_and_can_pick_an_arm(start_server,
                                                                     config_repo):
    client = await start_server()
    stable = config_repo.initial
    first = config_repo.change("longer texts", "settings.toml", "default.max_text_length", 3000)
    await canary_of(client, first, percent=10, duration_s=300)
    for arm, commit in (("canary", first), ("stable", stable), ("canary", first)):
        resp = await client.post("/tts", json={"text": "Hello."}, headers={CANARY: arm})
        assert resp.status == 200
        assert (resp.headers["X-AllTalk-Commit"], resp.headers["X-AllTalk-Arm"]) == (commit, arm)
    state = await canary_state(client)
    assert state["running"] and state["commit"] == first and state["stable"] == stable
    assert state["time_left_s"] > 0 and state["spec"]["percent"] == 10
    assert state["arms"]["canary"]["requests"] == 2 and state["arms"]["stable"]["requests"] == 1
    assert state["arms"]["canary"]["commit"] == first
    # A request both arms refuse is the request's fault, not the canary's: not counted.
    resp = await client.post("/tts", json={"text": " "}, headers={CANARY: "canary"})
    assert resp.status == 400 and (await error_of(resp))["code"] == "empty_text"
    state = await canary_state(client)
    assert (state["arms"]["canary"]["requests"], state["arms"]["canary"]["errors"]) == (2, 0)

    resp = await client.post("/control/canary/promote", json={"author": "ada"})
    body = await resp.json()
    assert resp.status == 200 and body["result"] == "applied" and body["commit"] == first
    assert body["reason"].startswith("promoted by ada (canary: 2 requests")
    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == first and not status["canary"]["running"]

    second = config_repo.change("shorter texts", "settings.toml", "default.max_text_length", 900)
    await canary_of(client, second, duration_s=300)
    resp = await client.post("/control/canary/abort", json={"author": "ada"})
    body = await resp.json()
    assert resp.status == 200 and body["result"] == "aborted" and body["serving"] == first
    commits = {c["commit"]: c for c in (await (await client.get(
        "/control/config/commits")).json())["commits"]}
    assert commits[second]["failed"]
    assert commits[second]["failure_reason"].startswith("aborted by ada (canary: 0 requests")
    resp = await client.post("/tts", json={"text": "Hello."}, headers={CANARY: "canary"})
    assert resp.headers["X-AllTalk-Commit"] == first  # no canary: the stable arm answers
    for path in ("/control/canary/promote", "/control/canary/abort"):
        resp = await client.post(path, json={})
        assert resp.status == 409 and (await error_of(resp))["code"] == "no_canary"
    history = (await (await client.get("/control/status")).json())["history"]
    assert [(h["action"], h["result"]) for h in history[-4:]] == [
        ("canary", "canary-started"), ("canary", "applied"),
        ("canary", "canary-started"), ("canary", "failed")]


async def test_every_other_change_during_a_canary_gets_409_naming_it(start_server,
                                                                      config_repo):
    client = await start_server()
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    other = config_repo.change("slower", "models.toml",
                               "default.models.reference.default_speed", 0.9)
    await canary_of(client, new, duration_s=300)
    for path, body in (("/control/config/apply", {"commit": other}),
                       ("/control/config/apply", {"commit": other, "canary": True}),
                       ("/control/models/switch", {"model": "reference-low"}),
                       ("/control/config/rollback", {}),
                       ("/control/config/reload", {}),
                       ("/control/models/reference/reload", {})):
        resp = await client.post(path, json=body)
        error = await error_of(resp)
        assert resp.status == 409 and error["code"] == "canary_in_progress", (path, error)
        assert new[:10] in error["message"] and error["details"]["canary"] == new
    resp = await client.post("/api/reload", params={"tts_method": "reference-low"})
    assert resp.status != 200
    status = await (await client.get("/control/status")).json()
    assert status["canary"]["commit"] == new and status["serving_commit"] == config_repo.initial


async def test_canary_requests_are_refused_when_they_cannot_run(start_server, config_repo):
    client = await start_server()
    resp = await client.post("/control/config/apply",
                             json={"commit": config_repo.initial, "canary": True})
    assert resp.status == 409 and (await error_of(resp))["code"] == "canary_not_possible"
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    for canary in ({"percent": 0}, {"percent": 101}, {"duration_s": -1}, {"bogus": 1},
                   {"min_requests": 1.5}, {"max_error_rate": True}, "yes"):
        resp = await client.post("/control/config/apply", json={"commit": new, "canary": canary})
        assert resp.status == 400 and (await error_of(resp))["code"] == "bad_field", canary
    # A model that would be replaced in place cannot serve beside itself.
    config_repo.set("models.toml", "default.models.reference.low_memory_swap", True)
    swap = config_repo.change("pitch", "models.toml",
                              "default.models.reference.settings.pitch_hz", 200)
    resp = await client.post("/control/config/apply", json={"commit": swap, "canary": True})
    assert resp.status == 409 and (await error_of(resp))["code"] == "canary_not_possible"
    assert not (await canary_state(client))["running"]
    assert (await client.post("/tts", json={"text": "Hi."})).headers[
        "X-AllTalk-Commit"] == config_repo.initial


async def test_a_restart_mid_canary_aborts_it_and_says_why(start_server, config_repo):
    client = await start_server()
    stable = config_repo.initial
    new = config_repo.change("higher", "models.toml",
                             "default.models.reference.settings.pitch_hz", 280)
    await canary_of(client, new, duration_s=300)
    await client.close()  # the host stops with its canary running

    client = await start_server()
    state = await canary_state(client)
    assert not state["running"]
    last = state["last"]
    assert last["commit"] == new and last["result"] == "failed"
    assert last["canary"]["outcome"] == "aborted" and last["canary"]["decided_by"] == "startup"
    assert "the host restarted during its canary" in last["reason"]
    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == status["serving_commit"] == stable
    assert [m["generation"] for m in status["models"] if m["state"] == "serving"] == [1]
    commits = {c["commit"]: c for c in (await (await client.get(
        "/control/config/commits")).json())["commits"]}
    assert commits[new]["failed"] and "restarted" in commits[new]["failure_reason"]


async def test_runtime_only_canaries_share_the_generation(start_server, config_repo):
    client = await start_server()
    stable = config_repo.initial
    # Good: a new default voice, nothing to load; promoted at the end.
    voice = config_repo.change("male voice", "models.toml",
                               "default.models.reference.default_voice", "male_01")
    started = await canary_of(client, voice, percent=50, duration_s=1.0, min_requests=3)
    assert started["plan"]["runtime_only"] and started["loaded"] == {}
    seen = await speak_until_decided(client)
    assert {c for _, c, _ in seen} == {stable, voice}
    assert (await canary_state(client))["last"]["canary"]["outcome"] == "promoted"
    resp = await client.post("/tts", json={"text": "Hello."})
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"  # never reloaded
    assert resp.headers["X-AllTalk-Commit"] == voice

    # Bad: the canary refuses what the stable arm speaks (texts over 5 characters). Its
    # refusals are the canary's errors, and the stable arm answers them.
    short = config_repo.change("tiny limit", "settings.toml", "default.max_text_length", 5)
    await canary_of(client, short, percent=50, duration_s=1.0, min_requests=3)
    seen = await speak_until_decided(client)
    assert all(s == 200 for s, _, _ in seen) and {c for _, c, _ in seen} == {voice}
    last = (await canary_state(client))["last"]
    assert last["canary"]["outcome"] == "aborted"
    assert last["reason"].startswith("error rate 1.00 > 0.01 over ")


async def test_too_few_requests_extend_once_then_abort(start_server, config_repo):
    client = await start_server()
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    await canary_of(client, new, duration_s=0.3, min_requests=1000)
    last = None
    while last is None:
        state = await canary_state(client)
        last = state.get("last")
        await asyncio.sleep(0.05)
    assert last["canary"]["extended"] and last["canary"]["outcome"] == "aborted"
    assert last["reason"] == "too few requests: 0 < 1000 on the canary after one extension"
    history = (await (await client.get("/control/status")).json())["history"]
    assert [h["result"] for h in history[-3:]] == ["canary-started", "canary-extended",
                                                   "failed"]
    # What the live events said, in order.
    events = client.server.app[HOST].events.since(0)
    phases = [e.data["phase"] for e in events if e.kind == OPERATION
              and e.data["action"] == "canary"]
    assert phases == ["started", "planning", "checking", "canary", "extended", "aborting",
                      "failed"], phases


async def test_a_sticky_choice_sends_each_client_to_one_arm(start_server, config_repo):
    config_repo.set("settings.toml", "default.canary.arm_choice", "header")
    config_repo.set("settings.toml", "default.canary.client_header", "X-Conversation")
    config_repo.initial = config_repo.commit("canaries stick to a conversation")
    client = await start_server()
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    await canary_of(client, new, percent=50, duration_s=300)
    arms: dict[str, set[str]] = {}
    for _ in range(3):
        for n in range(16):
            resp = await client.post("/tts", json={"text": "Hi."},
                                     headers={"X-Conversation": f"chat-{n}"})
            arms.setdefault(f"chat-{n}", set()).add(resp.headers["X-AllTalk-Commit"])
    assert all(len(commits) == 1 for commits in arms.values()), arms  # one voice each
    assert set().union(*arms.values()) == {config_repo.initial, new}  # both arms used
    state = await canary_state(client)
    assert state["arm_choice"] == "header"
    assert state["arms"]["canary"]["requests"] + state["arms"]["stable"]["requests"] == 48


async def test_a_sticky_choice_by_address_keeps_one_client_on_one_arm(start_server,
                                                                    config_repo):
    """Every request of this test comes from 127.0.0.1: one client, so one arm, at 50 %."""
    config_repo.set("settings.toml", "default.canary.arm_choice", "address")
    config_repo.initial = config_repo.commit("canaries stick to a client's address")
    client = await start_server()
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    await canary_of(client, new, percent=50, duration_s=300)
    commits = set()
    for n in range(20):
        resp = await client.post("/tts", json={"text": "Hi."},
                                 headers={"X-AllTalk-Client": f"ignored-{n}"})
        commits.add(resp.headers["X-AllTalk-Commit"])
    assert len(commits) == 1, commits
    # Asking for an arm still wins over stickiness.
    other = ({config_repo.initial, new} - commits).pop()
    arm = "canary" if other == new else "stable"
    resp = await client.post("/tts", json={"text": "Hi."}, headers={CANARY: arm})
    assert resp.headers["X-AllTalk-Commit"] == other
    assert (await client.post("/control/canary/abort", json={})).status == 200


async def test_metrics_label_the_arm_that_served(start_server, config_repo):
    client = await start_server()
    for _ in range(2):
        assert (await client.post("/tts", json={"text": "Hi."})).status == 200
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    await canary_of(client, new, duration_s=300)
    for arm in ("canary", "canary", "canary", "stable"):
        resp = await client.post("/tts", json={"text": "Hi."}, headers={CANARY: arm})
        assert resp.status == 200
    m = await scrape(client)
    assert value(m, "alltalk_requests_total", route="/tts", model="reference",
                 status_class="2xx", arm="canary") == 3
    assert value(m, "alltalk_requests_total", route="/tts", model="reference",
                 status_class="2xx", arm="stable") == 3
    assert value(m, "alltalk_time_to_first_audio_seconds_count", model="reference",
                 arm="canary") == 3
    assert value(m, "alltalk_real_time_factor_count", model="reference", arm="stable") == 3
    # One label set whatever runs: the arm is on every request series, never a commit.
    names = {name for name, _ in m}
    for name, labels in m:
        if name.startswith(("alltalk_requests_total", "alltalk_time_to_first_audio")):
            assert dict(labels).get("arm") in ("stable", "canary"), (name, labels)
    assert "alltalk_requests_total" in names


async def test_the_watcher_applies_new_commits_as_canaries_when_told(start_server,
                                                                     config_repo):
    config_repo.set("settings.toml", "default.watch.enabled", True)
    config_repo.set("settings.toml", "default.watch.interval_s", 0.1)
    config_repo.set("settings.toml", "default.canary.watch", True)
    config_repo.set("settings.toml", "default.canary.duration_s", 300)
    config_repo.initial = config_repo.commit("watch, by canaries")
    client = await start_server()
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    status = await wait_until(client, lambda s: s["canary"]["running"])
    assert status["canary"]["commit"] == new and status["canary"]["who"] == "watch"
    assert status["canary"]["spec"]["duration_s"] == 300
    assert status["applied_commit"] == config_repo.initial
    resp = await client.post("/control/canary/promote", json={})
    assert resp.status == 200
    status = await wait_until(client, lambda s: s["applied_commit"] == new)
    assert not status["canary"]["running"]


async def test_the_cli_applies_a_commit_as_a_canary(start_server, config_repo):
    client = await start_server()
    url = f"http://127.0.0.1:{client.port}"
    new = config_repo.change("higher", "models.toml",
                             "default.models.reference.settings.pitch_hz", 280)
    out = await run_cli("config", "apply", new[:10], "--canary", "--percent", "25",
                        "--duration-s", "600", "--max-error-rate", "0.05", "--url", url)
    assert re.fullmatch(rf"canary {new[:7]} serves 25 % of requests beside "
                        rf"{config_repo.initial[:7]} for 600 s: promoted if it serves at "
                        r"least 20 requests with an error rate <= 0.05 and a p95 time to first "
                        r"audio <= 1.5 x the stable arm's, else aborted \(reference loaded in "
                        r"[\d.]+ s\)\n", out), out
    state = await canary_state(client)
    assert state["spec"]["percent"] == 25 and state["spec"]["duration_s"] == 600
    assert state["spec"]["max_error_rate"] == 0.05 and state["spec"]["min_requests"] == 20
    with pytest.raises(SystemExit, match="canary_in_progress"):
        await asyncio.to_thread(cli.main, ["config", "apply", "HEAD~1", "--url", url])
    assert (await client.post("/control/canary/abort", json={})).status == 200
    # A threshold flag alone means a canary; one out of range is the server's 400, in a line.
    other = config_repo.change("lower", "models.toml",
                               "default.models.reference.settings.pitch_hz", 180)
    with pytest.raises(SystemExit, match="bad_field"):
        await asyncio.to_thread(cli.main, ["config", "apply", other[:10], "--max-latency-ratio",
                                           "0", "--url", url])
    out = await run_cli("config", "apply", other[:10], "--max-latency-ratio", "3", "--url", url)
    assert out.startswith(f"canary {other[:7]} serves 10 % of requests beside "
                          f"{config_repo.initial[:7]} for "
                          "300 s") and "<= 3 x the stable arm's" in out, out
    assert (await canary_state(client))["spec"]["max_latency_ratio"] == 3
    assert (await client.post("/control/canary/abort", json={})).status == 200
    assert words.change({"result": "canary", "commit": "3f2a9c1dead", "loaded": {},
                         "canary": {}}).startswith("canary 3f2a9c1 serves ? % of requests")


async def test_stop_during_a_canary_stops_the_request_and_counts_no_error(start_server,
                                                                          config_repo):
    """Stop (``/api/stop-generation``) on a request the canary serves: it ends cancelled at
    once, is not served again by the stable arm, and is no canary error."""
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")
    config_repo.commit("short warm-up")
    client = await start_server()
    slow = config_repo.change("slow", "models.toml", "default.models.reference.settings.rtf",
                              3.0)  # the canary's only: its own generation, three times slow
    await canary_of(client, slow, duration_s=300)
    task = asyncio.create_task(client.post("/tts", headers={CANARY: "canary"}, json={
        "text": "A long sentence that would take a long while to speak out loud."}))
    await wait_until(client, lambda s: any(m.get("in_flight") for m in s["models"]))
    await client.put("/api/stop-generation")
    resp = await asyncio.wait_for(task, timeout=10)  # far less than the ~15 s it would take
    assert resp.status == 409 and (await error_of(resp))["code"] == "cancelled"
    arms = (await canary_state(client))["arms"]
    assert (arms["canary"]["requests"], arms["canary"]["errors"]) == (0, 0)
    assert arms["stable"]["requests"] == 0  # not served again by the stable arm
    assert (await client.post("/control/canary/abort", json={})).status == 200


async def test_client_errors_on_the_canary_count_only_when_the_stable_arm_serves_them(
        start_server, config_repo):
    """A voice no arm has is the request's fault: refused, no arm's error. A voice the
    canary dropped is the canary's: the stable arm serves it, and the canary is charged."""
    client = await start_server()
    fewer = config_repo.change("one voice", "models.toml",
                               "default.models.reference.settings.voices", ["female_01"])
    await canary_of(client, fewer, duration_s=300)
    forced = {CANARY: "canary"}
    resp = await client.post("/tts", json={"text": "Hi.", "voice": "nobody"}, headers=forced)
    assert resp.status == 404 and (await error_of(resp))["code"] == "unknown_voice"
    arms = (await canary_state(client))["arms"]
    assert [arms[a][k] for a in ("canary", "stable") for k in ("requests", "errors")] == [
        0, 0, 0, 0]
    resp = await client.post("/tts", json={"text": "Hi.", "voice": "male_01"}, headers=forced)
    assert resp.status == 200 and resp.headers["X-AllTalk-Arm"] == "stable"
    arms = (await canary_state(client))["arms"]
    assert (arms["canary"]["requests"], arms["canary"]["errors"]) == (1, 1)
    assert (await client.post("/control/canary/abort", json={})).status == 200
