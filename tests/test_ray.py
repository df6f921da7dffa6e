"""Scale-out on Ray Serve: a real local Ray cluster, two replicas of the core with the reference
backend, commits rolled out while clients speak, and one commit that fails. Without a cluster:
a replica's rules, and the Ray front's AllTalk routes against the aiohttp app's.

The cluster is this module's own (``alltalk_host.ray.local``: ``RAY_TMPDIR`` and ``HOME`` in the
test's folder, token auth on, no usage stats) and is shut down whatever happens; ``ray stop``,
which ends every Ray process on the machine, is never used. Skipped where Ray is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import wave
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alltalk_host.errors import HostError
from alltalk_host.host import Host, HostOptions
from alltalk_host.ray.replica import Replica, ReplicaState, local_settings
from alltalk_host.serving.speech import SpeechInput

from .helpers import ConfigRepoHelper, read_wav

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="Ray is not installed: pip install 'alltalk-host[ray]' (make test does)")

CLIENTS = 4


# --- the replica's rules, without a cluster -------------------------------------------------

async def test_replica_keeps_its_commit_when_a_new_one_fails(
        config_repo: ConfigRepoHelper, tmp_path: Path) -> None:
    replica = Replica(HostOptions(config_repo=config_repo.path, state_dir=tmp_path / "state",
                                  directed=True), "r1")
    await replica.start()
    try:
        # Directed: it chose nothing at start, and serves only what it is told.
        assert replica.state == ReplicaState.STARTING and replica.commit is None
        good = config_repo.initial
        await replica.reconfigure({"commit": good})
        assert (replica.state, replica.commit) == (ReplicaState.SERVING, good)

        silent = config_repo.change("silent", "models.toml",
                                    "default.models.reference.settings.amplitude", 0.0)
        await replica.reconfigure({"commit": silent})  # no raise: Ray would replace it
        status = replica.status()
        assert status["state"] == ReplicaState.FAILED
        assert status["commit"] == good and status["target"] == silent
        assert status["last_error"]["commit"] == silent
        result = await replica.host.speech.synthesize(SpeechInput("Hi."))
        assert result.provenance.commit == good

        await replica.reconfigure({"commit": good})  # told the old one again: serving
        assert replica.status()["state"] == ReplicaState.SERVING
        assert replica.status()["last_error"]["commit"] == silent  # still reported
    finally:
        await replica.stop()


async def test_a_replica_with_nothing_to_keep_raises(config_repo: ConfigRepoHelper,
                                                      tmp_path: Path) -> None:
    bad = config_repo.change("silent", "models.toml",
                             "default.models.reference.settings.amplitude", 0.0)
    replica = Replica(HostOptions(config_repo=config_repo.path, state_dir=tmp_path / "state",
                                  directed=True), "r1")
    await replica.start()
    try:
        with pytest.raises(HostError):
            await replica.reconfigure({"commit": bad})
        assert replica.state == ReplicaState.STARTING
    finally:
        await replica.stop()


async def test_a_node_missing_a_models_file_refuses_the_commit_and_names_itself(
        config_repo: ConfigRepoHelper, tmp_path: Path) -> None:
    """The fleet's models folder is the same path on every node; a node where a file the
    commit names is missing refuses that commit, saying which node, and serves the one it had."""
    models = tmp_path / "node-b" / "models"
    models.mkdir(parents=True)
    state = tmp_path / "node-b" / "replica"
    state.mkdir()
    (state / "local.toml").write_text(local_settings(str(models), None))
    replica = Replica(HostOptions(config_repo=config_repo.path, state_dir=state,
                                  local_file=state / "local.toml", directed=True), "r2",
                      node="node b2c4 (machine-b, 10.0.0.2)")
    named = config_repo.change("a model file", "models.toml",
                               "default.models.reference.settings.model_file", "voice.bin")
    await replica.start()
    try:
        await replica.reconfigure({"commit": config_repo.initial})
        await replica.reconfigure({"commit": named})
        error = replica.status()["last_error"]
        assert replica.commit == config_repo.initial and error["commit"] == named
        assert error["reason"].startswith("on node b2c4 (machine-b, 10.0.0.2): "), error
        assert str(models / "voice.bin") in error["reason"], error
        assert replica.status()["node"] == "node b2c4 (machine-b, 10.0.0.2)"

        (models / "voice.bin").write_text("pitch_hz = 140\n")  # the operator copies it there
        await replica.reconfigure({"commit": named})
        assert replica.commit == named and replica.status()["state"] == ReplicaState.SERVING
    finally:
        await replica.stop()


def test_a_replica_needs_a_directed_host(config_repo: ConfigRepoHelper, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directed"):
        Replica(HostOptions(config_repo=config_repo.path, state_dir=tmp_path), "r1",
                host=Host.__new__(Host))


# --- the Ray front's AllTalk routes, without a cluster ---------------------------------------
#
# Each replica's front is served as Serve serves it (an ASGI app calling RayFront.handle per
# request) by uvicorn, which Ray's own proxy runs on, on loopback in the test's event loop.

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
StartFront = Callable[..., Awaitable[str]]


async def test_a_file_generated_on_one_replica_is_fetched_from_the_other(
        ray_front: StartFront, config_repo: ConfigRepoHelper, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A relative outputs.dir: under the deployment's state_dir, the same for every replica.
    monkeypatch.setenv("ALLTALK_OUTPUTS__DIR", "outs")
    one, other = await ray_front("r1"), await ray_front("r2")
    form = {"text_input": "Hello there, traveller. *She waves.* \"Welcome!\"",
            "text_filtering": "standard", "character_voice_gen": "female_01",
            "narrator_enabled": "false", "language": "en", "output_file_name": "st_output",
            "output_file_timestamp": "true", "autoplay": "false"}
    async with aiohttp.ClientSession() as http:
        async with http.post(one + "/api/tts-generate", data=form) as resp:
            reply = await resp.json()
            assert resp.status == 200, reply
            assert resp.headers["X-AllTalk-Commit"] == config_repo.head
            assert resp.headers["X-AllTalk-Model"].startswith("reference; generation=")
            assert resp.headers["X-AllTalk-Replica"] == "r1"
        assert set(reply) == {"status", "output_file_path", "output_file_url",
                              "output_cache_url"}
        assert reply["status"] == "generate-success"
        written = Path(reply["output_file_path"])
        assert written.parent == (tmp_path / "ray" / "outs").resolve(), written
        assert reply["output_file_url"] == f"/audio/{written.name}"
        assert written.name.startswith("st_output_")
        assert reply["output_cache_url"] == f"/audiocache/{written.name}"

        # The client's next GET may land on the other replica: it has the file too.
        async with http.get(other + reply["output_file_url"]) as resp:
            assert resp.status == 200 and resp.headers["X-AllTalk-Replica"] == "r2"
            assert resp.headers["Content-Type"] == "audio/wav"
            data = await resp.read()
        assert data == written.read_bytes()
        samples, rate = read_wav(data)
        assert len(samples) / rate > 1.0
        async with http.get(one + reply["output_cache_url"]) as resp:
            assert resp.status == 200 and "immutable" in resp.headers["Cache-Control"]
            assert await resp.read() == data

        async with http.post(other + "/api/previewvoice/", data="voice=male_01",
                             headers=FORM) as resp:
            preview = await resp.json()
            assert resp.status == 200 and resp.headers["X-AllTalk-Replica"] == "r2"
        assert preview["output_file_url"].startswith("/audio/preview_voice_")
        assert "output_cache_url" not in preview
        async with http.get(one + preview["output_file_url"]) as resp:
            assert resp.status == 200
            read_wav(await resp.read())


async def test_the_ray_front_streams_alltalk_wav(ray_front: StartFront,
                                                 config_repo: ConfigRepoHelper) -> None:
    base = await ray_front("r1")
    url = base + "/api/tts-generate-streaming"
    async with aiohttp.ClientSession() as http:
        for call in (lambda: http.get(url, params={"text": "Streaming now. Two sentences.",
                                                   "voice": "female_01"}),
                     lambda: http.post(url, data={"text": "Streaming now. Two sentences."})):
            async with call() as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
                assert resp.headers["X-AllTalk-Commit"] == config_repo.head
                assert resp.headers["X-AllTalk-Model"].startswith("reference; generation=")
                assert resp.headers["X-AllTalk-Replica"] == "r1"
                samples, rate = read_wav(await resp.read())
            assert len(samples) / rate > 1.0
        # A language the model lacks is spoken in its own, and the header says so.
        async with http.get(url, params={"text": "Ahoj.", "language": "cs"}) as resp:
            assert resp.headers["X-AllTalk-Language"] == "en; model reference does not speak cs"
            read_wav(await resp.read())
        # Nothing to speak: a short, complete silence, as on one host.
        async with http.get(url, params={"text": "..."}) as resp:
            assert resp.status == 200
            samples, rate = read_wav(await resp.read())
        assert 0 < len(samples) / rate <= 0.25


@pytest.mark.process_workers
async def test_the_ray_front_answers_sillytaverns_first_calls_as_one_host(
        ray_front: StartFront, start_server: Callable[..., Any]) -> None:
    """/api/ready, /api/currentsettings, /api/voices, /api/rvcvoices: the same answers."""
    base = await ray_front("r1")
    client = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/ready") as resp:
            assert await resp.text() == "Ready"
        for path in ("/api/currentsettings", "/api/voices", "/api/rvcvoices"):
            async with http.get(base + path) as resp:
                assert resp.status == 200 and resp.headers["X-AllTalk-Replica"] == "r1"
                assert await resp.json() == await (await client.get(path)).json(), path


# What a client may get wrong, each answered on the Ray front exactly as on one host.
BAD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/tts-generate", {"data": {}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "  "}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "x" * 2001}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "character_voice_gen": "nobody"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "output_file_name": "../x"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "narrator_enabled": "maybe"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "text_filtering": "latex"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "speed": "fast"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "speed": "9"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "temperature": "warm"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "pitch": "11"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "autoplay": "perhaps"}}),
    ("POST", "/api/tts-generate", {"data": {"text_input": "Hi", "narrator_enabled": "true",
                                            "narrator_voice_gen": "nobody"}}),
    ("POST", "/api/tts-generate", {"json": {"text_input": "Hi"}}),
    ("POST", "/api/tts-generate", {"data": b"text_input=Hi", "headers": {
        "Content-Type": "application/x-www-form-urlencoded; charset=bogus"}}),
    ("POST", "/api/previewvoice/", {"data": {}}),
    ("POST", "/api/previewvoice/", {"data": {"voice": "nobody"}}),
    ("GET", "/api/tts-generate-streaming", {"params": {"text": " "}}),
    ("GET", "/api/tts-generate-streaming", {"params": {"text": "Hi", "voice": "nobody"}}),
    ("POST", "/api/tts-generate-streaming", {"data": {"voice": "female_01"}}),
    ("GET", "/audio/nope.wav", {}),
    ("GET", "/audio/.alltalk-host-written", {}),
    ("GET", "/audiocache/speech", {}),
]


async def test_bad_alltalk_requests_get_the_same_answer_on_both_fronts(
        ray_front: StartFront, start_server: Callable[..., Any], tmp_path: Path) -> None:
    base = await ray_front("r1")
    client = await start_server()
    async with aiohttp.ClientSession() as http:
        good = await http.post(base + "/api/tts-generate", data={"text_input": "Hi."})
        assert good.status == 200
        outputs = tmp_path / "outputs"  # the tests' outputs.dir, absolute: both fronts' folder
        written = sorted(outputs.glob("*.wav"))
        assert [p.name for p in written] == [(await good.json())["output_file_url"][7:]]
        for method, path, kwargs in BAD_REQUESTS:
            one_host = await client.request(method, path, **kwargs)
            expected = (one_host.status, await one_host.json())
            async with http.request(method, base + path, **kwargs) as resp:
                assert resp.headers["X-AllTalk-Replica"] == "r1"
                assert (resp.status, await resp.json()) == expected, (method, path, kwargs)
            assert expected[0] in (400, 404), expected
        assert sorted(outputs.glob("*.wav")) == written  # nothing written for a bad request


async def test_the_ray_front_reads_multipart_forms_as_home_assistant_sends_them(
        ray_front: StartFront, start_server: Callable[..., Any], tmp_path: Path) -> None:
    """Home Assistant's AllTalk integrations post multipart: the same reply as on one host."""
    base = await ray_front("r1")
    client = await start_server()

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("text_input", "The front door is open. Ça va?")
        data.add_field("output_file_name", "ha_alert")
        data.add_field("output_file_timestamp", "false")
        data.add_field("attachment", b"x", filename="x.bin")  # makes aiohttp send multipart
        return data

    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/api/tts-generate", data=form()) as resp:
            assert resp.status == 200, await resp.text()
            reply = await resp.json()
        one_host = await client.post("/api/tts-generate", data=form())
        assert one_host.status == 200
        assert reply == await one_host.json()
        async with http.get(base + reply["output_file_url"]) as resp:
            samples, rate = read_wav(await resp.read())
        assert len(samples) / rate > 1.0
    assert (tmp_path / "outputs" / "ha_alert.wav").is_file()


async def test_the_ray_front_refuses_broken_multipart_and_big_forms_in_alltalks_shape(
        ray_front: StartFront, config_repo: ConfigRepoHelper, tmp_path: Path) -> None:
    config_repo.change("small bodies", "settings.toml", "default.http.max_body_bytes", 4096)
    base = await ray_front("r1")
    async with aiohttp.ClientSession() as http:
        for content_type in ("multipart/form-data",  # no boundary
                             "multipart/form-data; boundary=zz"):  # none in the body
            async with http.post(base + "/api/tts-generate", data=b"text_input=Hi",
                                 headers={"Content-Type": content_type}) as resp:
                body = await resp.json()
            assert resp.status == 400, body
            assert body["error"].startswith("body: the form body cannot be read"), body
        async with http.post(base + "/api/tts-generate",
                             data={"text_input": "x" * 5000}) as resp:
            body = await resp.json()
        assert resp.status == 400 and body["error"].startswith("body: "), body
        assert "http.max_body_bytes" in body["error"]
        async with http.post(base + "/audio/x.wav") as resp:
            assert resp.status == 405
    assert not (tmp_path / "outputs").exists()  # nothing written


# --- a real cluster -------------------------------------------------------------------------

@needs_ray
@pytest.mark.timeout(240)
@pytest.mark.process_workers
async def test_rollouts_under_load_drop_nothing(config_repo: ConfigRepoHelper,
                                                tmp_path: Path) -> None:
    from alltalk_host.ray.local import LocalCluster
    from alltalk_host.ray.rollout import Fleet, FleetSpec

    repo = config_repo
    # A model load that takes a while, so rollouts overlap requests on every replica.
    repo.set("models.toml", "default.models.reference.settings.load_seconds", 0.3)
    first = repo.commit("slow load")
    second = repo.change("lower", "models.toml", "default.models.reference.settings.pitch_hz",
                         120)
    third = repo.change("higher", "models.toml", "default.models.reference.settings.pitch_hz",
                        180)
    last = repo.change("middle", "models.toml", "default.models.reference.settings.pitch_hz",
                       150)
    silent = repo.change("silent", "models.toml",
                         "default.models.reference.settings.amplitude", 0.0)
    good = {first, second, third, last}

    cluster = LocalCluster(tmp_path / "cluster")
    info = await asyncio.to_thread(cluster.__enter__)
    try:
        spec = FleetSpec(remote=str(repo.path), root=tmp_path / "fleet-root", replicas=2,
                         plugins=["reference"], http_port=int(info.serve.rsplit(":", 1)[1]))
        async with Fleet(info.dashboard, info.serve, info.token, spec=spec,
                         state_dir=tmp_path / "fleet-state") as fleet:
            deployed = await fleet.apply(first, who="test")
            assert deployed["result"] == "applied", deployed

            answers: list[tuple[int, str | None, str | None, str]] = []
            fetches: list[tuple[int, str | None, str | None]] = []
            stop = asyncio.Event()
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=60)) as http:
                clients = [asyncio.create_task(_speak(http, info.serve, i, stop, answers,
                                                      fetches))
                           for i in range(CLIENTS)]
                await asyncio.sleep(0.5)
                results = [await fleet.apply(c, who="test") for c in (second, third, last)]
                failed = await fleet.apply(silent, who="test")
                await asyncio.sleep(0.5)
                stop.set()
                await asyncio.gather(*clients)

            status = await fleet.status()
    finally:
        await asyncio.to_thread(cluster.close)

    assert [r["result"] for r in results] == ["applied"] * 3, results
    for r in results:
        assert {x["commit"] for x in r["replicas"]} == {r["commit"]}, r

    # The failing commit: each replica refused it and kept serving; the fleet is back on the
    # last good commit, and the failure is recorded with the replica's reason.
    assert failed["result"] == "failed" and failed["rolled_back_to"] == last, failed
    assert {r["state"] for r in failed["replicas"]} == {ReplicaState.FAILED}, failed
    assert {r["commit"] for r in failed["replicas"]} == {last}
    assert {r["commit"] for r in failed["after_rollback"]} == {last}
    assert [r["state"] for r in status["replicas"]] == [ReplicaState.SERVING] * 2, status
    assert {r["commit"] for r in status["replicas"]} == {last}
    assert status["applied"] == last and silent in status["failed"], status

    # Nothing dropped; every answer names a commit that was serving, and a replica.
    codes = Counter(code for code, *_ in answers)
    assert codes and set(codes) == {200}, codes
    assert len(answers) >= 10 * CLIENTS, len(answers)  # bounds on counts, never timings
    commits = {commit for _, commit, _, _ in answers}
    assert commits <= good and silent not in commits, commits
    assert last in commits
    assert len({replica for _, _, replica, _ in answers}) == 2, Counter(
        replica for _, _, replica, _ in answers)  # both replicas served, each named
    assert {route for *_, route in answers} == {"/tts", "/v1/audio/speech", "/api/tts-generate"}

    # Each AllTalk client fetched the file it was told of; Serve sent some of those GETs to
    # the replica that had not written the file, and it was there too.
    assert fetches and {code for code, *_ in fetches} == {200}, fetches
    assert any(made_by != served_by for _, made_by, served_by in fetches), fetches


async def _speak(http: aiohttp.ClientSession, base: str, n: int, stop: asyncio.Event,
                 answers: list[tuple[int, str | None, str | None, str]],
                 fetches: list[tuple[int, str | None, str | None]]) -> None:
    """One client: /tts, OpenAI's route and AllTalk's (then its file) in turn until told to
    stop; every answer kept."""
    i = 0
    while not stop.is_set():
        i += 1
        text = f"Client {n}, request {i}."
        route = ("/tts", "/v1/audio/speech", "/api/tts-generate")[(i + n) % 3]
        body: dict[str, Any] = {"text": text} if route == "/tts" else {
            "model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
        try:
            if route == "/api/tts-generate":
                await _generate_and_fetch(http, base, text, answers, fetches)
                continue
            async with http.post(base + route, json=body) as resp:
                data = await resp.read()
                code = resp.status
                if code == 200:
                    _check_wav(data)
                answers.append((code, resp.headers.get("X-AllTalk-Commit"),
                                resp.headers.get("X-AllTalk-Replica"), route))
                model = resp.headers.get("X-AllTalk-Model", "")
                assert code != 200 or model.startswith("reference; generation="), model
        except (aiohttp.ClientError, TimeoutError) as exc:
            answers.append((0, None, None, f"{route}: {exc!r}"))


async def _generate_and_fetch(http: aiohttp.ClientSession, base: str, text: str,
                             answers: list[tuple[int, str | None, str | None, str]],
                             fetches: list[tuple[int, str | None, str | None]]) -> None:
    """SillyTavern's two steps: generate to a file, then GET the URL it was given."""
    async with http.post(base + "/api/tts-generate", data={"text_input": text}) as resp:
        reply = await resp.json()
        made_by = resp.headers.get("X-AllTalk-Replica")
        answers.append((resp.status, resp.headers.get("X-AllTalk-Commit"), made_by,
                        "/api/tts-generate"))
        model = resp.headers.get("X-AllTalk-Model", "")
        assert resp.status != 200 or model.startswith("reference; generation="), model
    if resp.status == 200:
        async with http.get(base + reply["output_file_url"]) as resp:
            data = await resp.read()
            if resp.status == 200:
                _check_wav(data)
            fetches.append((resp.status, made_by, resp.headers.get("X-AllTalk-Replica")))


def _check_wav(data: bytes) -> None:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() > 0 or len(data) > 44
