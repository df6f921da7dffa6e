"""The voice library in the config repo (issue 25, part 1): samples under voices/, described in
voices.toml, spoken by name by models that clone, named on every audio response, swapped,
rolled back and deleted by commits without a reload, and each bad library refused whole.

The reference backend "clones" a sample by speaking at its pitch, so what a request heard says
which sample spoke; tests/test_xtts.py clones with the real XTTS code."""

from __future__ import annotations

import hashlib
import io
import re
import wave

import numpy as np
import pytest

from . import test_wyoming
from .helpers import ConfigRepoHelper, dominant_pitch, error_of, read_wav

VOICE_FILE = "voices.toml"
serve = test_wyoming.serve  # the fixture: a host in a child process with a Wyoming listener


def write_sample(path, pitch_hz: float, seconds: float = 2.0, rate: int = 22050) -> None:
    """A voiced tone with harmonics at ``pitch_hz``: a sample whose pitch is plain to hear."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave_ = sum(np.sin(2 * np.pi * pitch_hz * k * t) / k for k in range(1, 6))
    pcm = (0.3 * wave_ / np.max(np.abs(wave_)) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def add_voice(repo: ConfigRepoHelper, name: str, pitch_hz: float | None = None,
              **fields) -> None:
    if pitch_hz is not None:
        write_sample(repo.path / "voices" / f"{name}.wav", pitch_hz)
    for key, value in fields.items():
        repo.set(VOICE_FILE, f"voices.{name}.{key}", value)
    if not fields:
        repo.set(VOICE_FILE, f"voices.{name}.source", "a synthetic tone made by the tests")


async def apply(client, commit: str):
    return await client.post("/control/config/apply", json={"commit": commit})


async def heard(client, voice: str, **body) -> tuple[float, dict]:
    resp = await client.post("/tts", json={"text": "Hello there.", "voice": voice, **body})
    assert resp.status == 200, await resp.text()
    samples, rate = read_wav(await resp.read())
    return dominant_pitch(samples, rate), resp.headers


@pytest.fixture
async def client(start_server):
    return await start_server()


async def test_a_committed_sample_is_a_voice_at_once_and_every_response_names_it(
        client, config_repo):
    add_voice(config_repo, "ann", 200.0, language="en", source="synthetic, for the tests")
    commit = config_repo.commit("voices: add ann")
    resp = await apply(client, commit)
    assert resp.status == 200, await resp.text()
    assert "ann" in (await (await client.get("/api/voices")).json())["voices"]
    pitch, headers = await heard(client, "ann")
    assert abs(pitch - 200) < 8
    sha = hashlib.sha256((config_repo.path / "voices" / "ann.wav").read_bytes()).hexdigest()
    assert headers["X-AllTalk-Voice"] == f"ann; sha256={sha[:12]}"
    assert headers["X-AllTalk-Commit"] == commit
    assert headers["X-AllTalk-Model"] == "reference; generation=1"  # no reload
    # the model's own voices keep no header
    _, own = await heard(client, "female_01")
    assert "X-AllTalk-Voice" not in own


async def test_replace_roll_back_and_delete_a_voice_by_commits(client, config_repo):
    add_voice(config_repo, "ann", 200.0)
    first = config_repo.commit("voices: add ann")
    assert (await apply(client, first)).status == 200
    write_sample(config_repo.path / "voices" / "ann.wav", 120.0)
    second = config_repo.commit("voices: ann, a lower sample")
    assert (await apply(client, second)).status == 200
    pitch, headers = await heard(client, "ann")
    assert abs(pitch - 120) < 6 and headers["X-AllTalk-Model"] == "reference; generation=1"
    low_sha = headers["X-AllTalk-Voice"]

    resp = await client.post("/control/config/rollback", json={"commit": first})
    assert resp.status == 200, await resp.text()
    pitch, headers = await heard(client, "ann")
    assert abs(pitch - 200) < 8 and headers["X-AllTalk-Voice"] != low_sha

    (config_repo.path / "voices" / "ann.wav").unlink()
    config_repo.set(VOICE_FILE, "voices.ann", None)
    gone = config_repo.commit("voices: remove ann")
    assert (await apply(client, gone)).status == 200
    resp = await client.post("/tts", json={"text": "Hello.", "voice": "ann"})
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "unknown_voice"


async def test_the_openai_and_alltalk_routes_speak_a_library_voice(client, config_repo):
    add_voice(config_repo, "ann", 200.0)
    assert (await apply(client, config_repo.commit("voices: add ann"))).status == 200
    voices = await (await client.get("/v1/audio/voices")).json()
    assert "ann" in [v["id"] for v in voices["voices"]]
    resp = await client.post("/v1/audio/speech", json={"model": "reference", "input": "Hello.",
                                                       "voice": "ann", "response_format": "wav"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-AllTalk-Voice"].startswith("ann; sha256=")
    samples, rate = read_wav(await resp.read())
    assert abs(dominant_pitch(samples, rate) - 200) < 8
    resp = await client.post("/api/tts-generate", data={
        "text_input": "Hello there.", "character_voice_gen": "ann", "language": "en",
        "output_file_name": "ann", "output_file_timestamp": "true"})
    assert resp.status == 200 and (await resp.json())["status"] == "generate-success"
    models = await (await client.get("/tts/models")).json()
    reference = next(m for m in models["models"] if m["name"] == "reference")
    assert reference["voices"] == ["female_01", "male_01", "ann"]
    # A name it does not have: the error lists what the model does speak, the library's too.
    resp = await client.post("/tts", json={"text": "Hello.", "voice": "bob"})
    assert resp.status == 404
    assert (await error_of(resp))["details"]["voices"] == ["female_01", "male_01", "ann"]


async def test_a_voice_for_one_model_is_not_offered_by_another(client, config_repo):
    config_repo.set("models.toml", "default.models.reference-low.keep_loaded", True)
    add_voice(config_repo, "ann", 200.0, model="reference-low")
    assert (await apply(client, config_repo.commit("voices: ann for reference-low"))).status \
        == 200
    models = {m["name"]: m for m in (await (await client.get("/tts/models")).json())["models"]}
    assert "ann" in models["reference-low"]["voices"]
    assert "ann" not in models["reference"]["voices"]
    resp = await client.post("/tts", json={"text": "Hello.", "voice": "ann"})
    assert resp.status == 404
    assert (await error_of(resp))["details"]["voices"] == ["female_01", "male_01"]
    pitch, _ = await heard(client, "ann", model="reference-low")
    assert abs(pitch - 200) < 8


async def test_a_library_voice_as_the_default_voice(client, config_repo):
    add_voice(config_repo, "ann", 200.0)
    config_repo.set("models.toml", "default.models.reference.default_voice", "ann")
    assert (await apply(client, config_repo.commit("ann speaks by default"))).status == 200
    resp = await client.post("/tts", json={"text": "Hello there."})
    assert resp.headers["X-AllTalk-Voice"].startswith("ann; ")


def _bad_library(repo: ConfigRepoHelper, case: str) -> None:
    voices = repo.path / "voices"
    if case == "outside":
        repo.set(VOICE_FILE, "voices.ann.file", "settings.toml")
    elif case == "dotdot":
        repo.set(VOICE_FILE, "voices.ann.file", "voices/../settings.toml")
    elif case == "missing":
        repo.set(VOICE_FILE, "voices.ann.source", "no file")
    elif case == "suffix":
        (voices / "ann.txt").parent.mkdir(parents=True, exist_ok=True)
        (voices / "ann.txt").write_text("not audio")
        repo.set(VOICE_FILE, "voices.ann.file", "voices/ann.txt")
    elif case == "name":
        add_voice(repo, "../ann", 200.0)
    elif case == "key":
        add_voice(repo, "ann", 200.0, command="rm -rf /")
    elif case == "model":
        add_voice(repo, "ann", 200.0, model="nobody")
    elif case == "language":
        add_voice(repo, "ann", 200.0, language="english please")
    elif case == "syntax":
        (repo.path / VOICE_FILE).write_text("[voices.ann\nfile = 1\n")
    elif case == "huge":
        voices.mkdir(parents=True, exist_ok=True)
        with open(voices / "ann.wav", "wb") as out:
            out.truncate(26 * 2**20)
        repo.set(VOICE_FILE, "voices.ann.source", "too large")
    elif case == "toplevel":
        (repo.path / VOICE_FILE).write_text('ann = "voices/ann.wav"\n')


@pytest.mark.parametrize(("case", "says"), [
    ("outside", "is not a path inside voices/"), ("dotdot", "is not a path inside voices/"),
    ("missing", "is not in the commit"), ("suffix", "is not one of .wav"),
    ("name", "not a voice name"), ("key", "unknown keys ['command']"),
    ("model", "model 'nobody' is not one of the configured models"),
    ("language", "is not a language tag"), ("syntax", "voices.toml:"),
    ("huge", "at most 25 MiB"), ("toplevel", "expected only [voices.NAME] tables")])
async def test_a_bad_library_is_refused_whole_and_nothing_changes(client, config_repo, case,
                                                                 says):
    serving = (await (await client.get("/control/status")).json())["serving_commit"]
    _bad_library(config_repo, case)
    resp = await apply(client, config_repo.commit(f"a bad library: {case}"))
    assert resp.status in (400, 409, 422), await resp.text()
    error = await error_of(resp)
    assert says in error["message"] or says in str(error.get("details")), error
    assert (await (await client.get("/control/status")).json())["serving_commit"] == serving


async def test_the_plan_shows_voices_added_changed_and_removed(client, config_repo):
    async def plan(commit: str) -> dict:
        resp = await client.post("/control/config/plan", json={"commit": commit})
        assert resp.status == 200, await resp.text()
        return await resp.json()

    add_voice(config_repo, "ann", 200.0)
    added = await plan(config_repo.commit("voices: add ann"))
    sha = hashlib.sha256((config_repo.path / "voices" / "ann.wav").read_bytes()).hexdigest()
    assert added["voices"] == [{"name": "ann", "change": "added", "file": "voices/ann.wav",
                                "sha256": sha[:12], "seconds": 2.0, "old_sha256": None}]
    assert added["runtime_only"] and added["reload"] == []
    assert (await apply(client, added["commit"])).status == 200
    write_sample(config_repo.path / "voices" / "ann.wav", 120.0, seconds=3.0)
    changed = (await plan(config_repo.commit("voices: ann re-recorded")))["voices"]
    assert [(v["change"], v["old_sha256"], v["seconds"]) for v in changed] == [
        ("changed", sha[:12], 3.0)]
    (config_repo.path / "voices" / "ann.wav").unlink()
    config_repo.set(VOICE_FILE, "voices.ann", None)
    removed = (await plan(config_repo.commit("voices: remove ann")))["voices"]
    assert [(v["name"], v["change"]) for v in removed] == [("ann", "removed")]


# --- uploads (part 2) ------------------------------------------------------------------------

def tone(pitch_hz: float = 200.0, seconds: float = 4.0, rate: int = 44100,
         amplitude: float = 0.3, pad_s: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    voiced = sum(np.sin(2 * np.pi * pitch_hz * k * t) / k for k in range(1, 6))
    voiced = amplitude * voiced / np.max(np.abs(voiced))
    pad = np.zeros(int(pad_s * rate))
    return np.concatenate([pad, voiced, pad]).astype(np.float32)


def encoded(samples: np.ndarray, fmt: str, rate: int = 44100) -> bytes:
    """``samples`` in a container and codec a person uploads: wav, flac, mp3, ogg (opus),
    m4a (AAC in MP4), made by PyAV as a recorder would."""
    import av

    if fmt == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        return out.getvalue()
    container, codec, out_rate = {"flac": ("flac", "flac", rate),
                                  "mp3": ("mp3", "libmp3lame", rate),
                                  "ogg": ("ogg", "libopus", 48000),
                                  "m4a": ("ipod", "aac", rate)}[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=out_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono",
                                      rate=out_rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


async def upload(client, name: str | None, data: bytes, method: str = "POST",
                 filename: str = "sample.wav", **fields):
    import aiohttp

    form = aiohttp.FormData()
    if name is not None and method == "POST":
        form.add_field("name", name)
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("file", io.BytesIO(data), filename=filename,  # bytes over 1 MB: a stream
                   content_type="application/octet-stream")
    path = "/control/voices" if method == "POST" else f"/control/voices/{name}"
    return await client.request(method, path, data=form)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "m4a"])
async def test_an_upload_in_each_format_is_normalised_committed_and_spoken(client, config_repo,
                                                                           fmt):
    head = config_repo.head
    resp = await upload(client, "ann", encoded(tone(200, pad_s=1.0), fmt),
                        filename=f"ann.{fmt}", language="en", source="the tests' tone")
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["result"] == "applied" and config_repo.head == result["commit"] != head
    assert config_repo.repo.head.commit.message.startswith("Add the voice ann")
    with wave.open(str(config_repo.path / "voices" / "ann.wav")) as stored:
        assert (stored.getnchannels(), stored.getsampwidth(), stored.getframerate()) == (
            1, 2, 22050)
        seconds = stored.getnframes() / 22050
        pcm = np.frombuffer(stored.readframes(stored.getnframes()), "<i2") / 32768
    assert 3.9 < seconds < 4.4  # the second of silence at either end trimmed
    assert abs(20 * np.log10(np.sqrt(np.mean(pcm ** 2))) + 20) < 1.5  # -20 dBFS
    shown = await (await client.get("/control/voices/ann")).json()
    assert shown["language"] == "en" and shown["source"] == "the tests' tone"
    assert shown["models"] == ["reference"] and abs(shown["seconds"] - seconds) < 0.01
    pitch, headers = await heard(client, "ann")
    assert abs(pitch - 200) < 8 and headers["X-AllTalk-Voice"].startswith("ann; sha256=")


async def test_replace_and_remove_an_uploaded_voice(client, config_repo):
    assert (await upload(client, "ann", encoded(tone(200), "wav"))).status == 200
    first_sha = (await (await client.get("/control/voices/ann")).json())["sha256"]
    resp = await upload(client, "ann", encoded(tone(120), "wav"), method="PUT",
                        transcript="a lower tone")
    assert resp.status == 200, await resp.text()
    shown = await (await client.get("/control/voices/ann")).json()
    assert shown["sha256"] != first_sha and shown["transcript"] == "a lower tone"
    pitch, _ = await heard(client, "ann")
    assert abs(pitch - 120) < 6
    resp = await client.delete("/control/voices/ann")
    assert resp.status == 200, await resp.text()
    assert not (config_repo.path / "voices" / "ann.wav").exists()
    assert (await client.get("/control/voices")).status == 200
    assert (await (await client.get("/control/voices")).json())["voices"] == []
    for resp in (await client.delete("/control/voices/ann"),
                 await upload(client, "nobody", encoded(tone(), "wav"), method="PUT")):
        assert resp.status == 404 and (await error_of(resp))["code"] == "unknown_voice"


def _silence() -> bytes:
    return encoded(np.zeros(4 * 44100, np.float32), "wav")


def _clipped() -> bytes:
    return encoded(np.sign(np.sin(np.arange(4 * 44100) * 2 * np.pi * 150 / 44100)).astype(
        np.float32), "wav")


def _png() -> bytes:
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", bytes([0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("make", "status", "code", "says"), [
    (lambda: b"not audio at all" * 100, 400, "bad_voice_file", "not audio"),
    (_png, 400, "bad_voice_file", "are not taken"),
    (lambda: encoded(tone(seconds=1.0), "wav"), 400, "bad_voice_file", "at least 3 s"),
    (lambda: encoded(tone(seconds=35.0), "wav"), 400, "bad_voice_file", "at most 30 s"),
    # ten minutes of near-silence in a few kB of flac: decoding stops at 40 s
    (lambda: encoded(np.full(600 * 44100, 1e-4, np.float32), "flac"), 400, "bad_voice_file",
     "longer than 40 s"),
    (_silence, 400, "bad_voice_file", "silent"),
    (_clipped, 400, "bad_voice_file", "clipped"),
    (lambda: encoded(tone(), "wav")[:60], 400, "bad_voice_file", ""),
])
async def test_an_unusable_upload_is_refused_and_nothing_is_committed(client, config_repo,
                                                                      make, status, code,
                                                                      says):
    head = config_repo.head
    resp = await upload(client, "ann", make())
    assert resp.status == status, await resp.text()
    error = await error_of(resp)
    assert error["code"] == code and says in error["message"], error
    assert config_repo.head == head
    assert not (config_repo.path / "voices").exists()


async def test_bad_names_fields_and_bodies_are_refused(client, config_repo):
    head = config_repo.head
    sample = encoded(tone(), "wav")
    for name, code in (("../ann", "bad_file_name"), ("a b", "bad_file_name"),
                       ("", "missing_field")):
        resp = await upload(client, name, sample)
        assert resp.status == 400 and (await error_of(resp))["code"] == code, name
    resp = await upload(client, "ann", sample, model="nobody")
    assert resp.status == 422 and "nobody" in (await error_of(resp))["message"]
    resp = await upload(client, "ann", sample, colour="blue")
    assert resp.status == 400 and (await error_of(resp))["code"] == "bad_field"
    resp = await client.post("/control/voices", json={"name": "ann"})
    assert resp.status == 415
    resp = await upload(client, "ann", b"\0" * (21 * 2**20))
    assert resp.status == 413
    assert config_repo.head == head
    assert (await upload(client, "ann", sample)).status == 200
    resp = await upload(client, "ann", sample)
    assert resp.status == 409 and (await error_of(resp))["code"] == "voice_exists"


async def test_an_upload_on_a_branch_that_moved_on_is_refused(client, config_repo):
    config_repo.change("an unapplied change", "settings.toml", "default.max_text_length", 900)
    head = config_repo.head
    resp = await upload(client, "ann", encoded(tone(), "wav"))
    assert resp.status == 409 and (await error_of(resp))["code"] == "branch_diverged"
    assert config_repo.head == head


async def test_the_cli_adds_lists_renames_and_removes_voices(start_server, config_repo,
                                                             tmp_path):
    from .test_cli_and_docs import run_cli

    client = await start_server()
    url = f"http://127.0.0.1:{client.port}"
    (tmp_path / "ann.flac").write_bytes(encoded(tone(200), "flac"))
    out = await run_cli("voices", "add", "ann", str(tmp_path / "ann.flac"), "--language", "en",
                        "--url", url)
    assert out.startswith(f"applied {config_repo.head[:7]}"), out
    out = await run_cli("voices", "list", "--url", url)
    assert re.search(r"^ann\s+4 s\s+any\s+en\s+[0-9a-f]{12}\s+reference$", out, re.M), out
    out = await run_cli("voices", "mv", "ann", "bea", "--url", url)
    assert config_repo.repo.head.commit.message.startswith("Rename the voice ann to bea")
    assert (config_repo.path / "voices" / "bea.wav").is_file()
    assert not (config_repo.path / "voices" / "ann.wav").exists()
    pitch, _ = await heard(client, "bea")
    assert abs(pitch - 200) < 8
    out = await run_cli("voices", "rm", "bea", "--url", url)
    assert "no voices" in await run_cli("voices", "list", "--url", url)
    assert config_repo.repo.head.commit.message.startswith("Remove the voice bea")


async def test_sillytavern_and_the_openai_sdk_use_an_uploaded_voice_without_a_reload(
        start_server, config_repo):
    """The clients' own sequences (tests/test_alltalk_api.py, tests/test_openai_api.py) see a
    voice uploaded while they run, and speak with it, on the generation that served before."""
    import openai

    client = await start_server()
    assert (await client.get("/api/voices")).status == 200
    assert (await upload(client, "ann", encoded(tone(200), "wav"))).status == 200

    # SillyTavern: the voice list, a preview, a generation, then the file it plays.
    voices = await (await client.get("/api/voices")).json()
    assert voices == {"status": "success", "voices": ["female_01", "male_01", "ann"]}
    resp = await client.post("/api/previewvoice/", data="voice=ann",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (await resp.json())["status"] == "generate-success"
    resp = await client.post("/api/tts-generate", data={
        "text_input": "Hello there, traveller.", "text_filtering": "standard",
        "character_voice_gen": "ann", "narrator_enabled": "false",
        "narrator_voice_gen": "male_01", "text_not_inside": "character", "language": "en",
        "output_file_name": "st_output", "output_file_timestamp": "true", "autoplay": "false",
        "autoplay_volume": "0.8"})
    reply = await resp.json()
    assert reply["status"] == "generate-success", reply
    assert resp.headers["X-AllTalk-Voice"].startswith("ann; sha256=")
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
    played = await client.get(reply["output_file_url"])
    samples, rate = read_wav(await played.read())
    assert abs(dominant_pitch(samples, rate) - 200) < 8

    # The openai SDK: the voice list, then speech with the voice.
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}/v1",
                             api_key="not-needed", max_retries=0)
    try:
        response = await api.audio.speech.create(model="tts-1", voice="ann",
                                                  input="Hello from the SDK.",
                                                  response_format="wav")
        samples, rate = read_wav(response.read())
        assert abs(dominant_pitch(samples, rate) - 200) < 8
    finally:
        await api.close()


async def test_a_voice_says_where_it_came_from_and_its_sample_can_be_heard(client,
                                                                          config_repo):
    assert (await upload(client, "ann", encoded(tone(200), "wav"))).status == 200
    added = config_repo.head
    config_repo.change("an unrelated change", "settings.toml", "default.max_text_length", 900)
    assert (await apply(client, config_repo.head)).status == 200
    shown = await (await client.get("/control/voices/ann")).json()
    assert shown["added_in"] == added and shown["sample_rate"] == 22050
    resp = await client.get(shown["sample_url"])
    assert resp.status == 200 and resp.content_type == "audio/wav"
    assert hashlib.sha256(await resp.read()).hexdigest() == shown["sha256"]
    assert (await client.get("/control/voices/nobody/sample")).status == 404


async def test_wyoming_describes_a_library_voice_and_speaks_it(serve, config_repo):
    """Home Assistant's view: the library's voice among the model's speakers, spoken by name."""
    from wyoming.tts import SynthesizeVoice

    from . import test_wyoming as wy

    add_voice(config_repo, "ann", 200.0)
    served = serve("voices: ann")
    async with wy.connect(served) as client:
        info = await wy.describe(client)
        model = next(v for v in info.tts[0].voices if v.name == "reference")
        assert "ann" in [s.name for s in model.speakers]
        reply = await wy.synthesize(client, "Hello there.",
                                    SynthesizeVoice(name="reference", speaker="ann"))
    assert reply.error is None
    pcm = np.frombuffer(reply.pcm, "<i2").astype(np.float32) / 32768
    assert abs(dominant_pitch(pcm, reply.rates.pop()) - 200) < 8
