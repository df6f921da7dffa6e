"""Issue 23, section 5: audio the contract can check. A backend's samples are mono floats in
[-1, 1], finite, at its declared rate; what a user sees when a backend breaks that (a 502
bad_audio, a refused apply, an aborted stream), what is converted instead of refused, and what
the conformance kit reports."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import numpy as np
import pytest

from alltalk_host import Audio, SpeechRequest, chunk_problem, hookimpl, split_sentences
from alltalk_host.testing import assert_conforms, check_backend
from alltalk_host_reference import ReferenceBackend, ReferenceSettings

from .helpers import error_of, read_wav, wait_until

# What a backend may get wrong, each as a change of correct audio.
FLAWS = {
    "INT16": lambda s: (s * 32767).astype(np.int16),  # integer PCM
    "LOUD": lambda s: s * 32767,  # floats at int16's scale: +84.8 dBFS of clipped noise
    "NAN": lambda s: np.where(np.arange(len(s)) > len(s) // 2, np.nan, s).astype(np.float32),
    "FLOAT64": lambda s: s.astype(np.float64),  # converted, not refused
    "FLOAT16": lambda s: s.astype(np.float16),
    "SILENT": lambda s: np.zeros_like(s),
}
RATE = "RATE"  # audio at twice the declared sample rate


@dataclass(frozen=True)
class FlawedSettings(ReferenceSettings):
    flaw: str = ""  # applied to everything it says, the warm-up included


class FlawedBackend(ReferenceBackend):
    """The reference backend, with a flaw wherever the text names one (a sentence that
    contains "NAN" is NaN; a stream's other chunks stay right), or everywhere by setting."""

    name = "flawed"

    @classmethod
    def validate_settings(cls, settings: Any) -> FlawedSettings:
        flaw = settings.get("flaw", "")
        if flaw and flaw not in (*FLAWS, RATE):
            raise ValueError(f"flaw: {flaw!r} is not one of {[*FLAWS, RATE]}")
        base = super().validate_settings({k: v for k, v in settings.items() if k != "flaw"})
        return FlawedSettings(**vars(base), flaw=flaw)

    def synthesize(self, request: SpeechRequest) -> Audio:
        return self._flawed(super().synthesize(request), request.text)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        for sentence in split_sentences(request.text):
            if request.cancelled.is_set():
                return
            yield self.synthesize(replace(request, text=sentence))

    def _flawed(self, audio: Audio, text: str) -> Audio:
        samples, rate = audio.samples, audio.sample_rate
        for flaw in [f for f in (*FLAWS, RATE) if f in text] + [self.settings.flaw]:
            if flaw == RATE:
                rate *= 2
            elif flaw:
                samples = FLAWS[flaw](samples)
        return Audio(samples, rate)


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(FlawedBackend)


PLUGIN = [("flawed", sys.modules[__name__])]


@pytest.fixture
async def flawed(start_server, config_repo):
    config_repo.model("flawed", backend="flawed", keep_loaded=True)
    config_repo.commit("a model whose audio breaks the contract where the text says")
    return await start_server(extra_plugins=PLUGIN)


# --- a whole synthesis ---------------------------------------------------------------------


@pytest.mark.parametrize(("flaw", "problem"), [
    ("INT16", "samples are int16, not float32 in [-1, 1] (integer PCM: divide by 32768)"),
    ("LOUD", "samples reach 98"),  # 0.3 at int16's scale: about 9830
    ("NAN", "samples contain NaN or infinity"),
    ("RATE", "sample rate 44100 Hz differs from the declared 22050 Hz"),
])
async def test_bad_audio_is_a_502_naming_the_model_backend_and_problem(flawed, flaw, problem):
    resp = await flawed.post("/tts", json={"model": "flawed", "text": f"Hello {flaw} there."})
    assert resp.status == 502
    error = await error_of(resp)
    assert error["code"] == "bad_audio"
    assert error["message"].startswith("model flawed (backend flawed) returned bad audio: "
                                       + problem), error
    assert error["details"]["model"] == "flawed" and error["details"]["backend"] == "flawed"
    # The model is not broken for the texts it speaks right, and the default serves on.
    for body in ({"model": "flawed", "text": "Hello there."}, {"text": "Hello there."}):
        assert (await flawed.post("/tts", json=body)).status == 200


async def test_the_openai_route_answers_bad_audio_as_a_server_error(flawed):
    resp = await flawed.post("/v1/audio/speech", json={
        "model": "flawed", "voice": "alloy", "input": "Hello INT16 there.",
        "response_format": "wav"})
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "bad_audio" and error["type"] == "server_error"
    assert "samples are int16" in error["message"]


@pytest.mark.parametrize("flaw", ["FLOAT64", "FLOAT16"])
async def test_float64_and_float16_are_converted_and_sound_as_float32(flawed, flaw):
    resp = await flawed.post("/tts", json={"model": "flawed", "text": f"Hello {flaw} there."})
    assert resp.status == 200, await resp.text()
    samples, rate = read_wav(await resp.read())
    assert rate == 22050
    # The reference speaks at amplitude 0.3: the conversion kept the scale.
    assert float(np.max(np.abs(samples))) == pytest.approx(0.3, abs=0.01)


# --- streams -------------------------------------------------------------------------------


def streamed(text: str) -> dict[str, Any]:
    return {"model": "flawed", "voice": "alloy", "input": text, "response_format": "pcm"}


async def test_a_stream_that_turns_nan_after_its_first_chunk_is_aborted(flawed):
    url = f"http://{flawed.host}:{flawed.port}/v1/audio/speech"
    async with aiohttp.ClientSession() as session, session.post(
            url, json=streamed("One. Two NAN. Three.")) as resp:
        assert resp.status == 200  # the first sentence went out
        with pytest.raises(aiohttp.ClientPayloadError):
            # A bound, not a timing: without the abort the client would wait forever.
            await asyncio.wait_for(resp.read(), timeout=20)
    await wait_until(flawed, lambda s: all(m.get("in_flight", 0) == 0 for m in s["models"]))
    resp = await flawed.post("/v1/audio/speech", json=streamed("One. Two. Three."))
    assert resp.status == 200 and len(await resp.read()) > 0


async def test_a_stream_bad_from_its_first_chunk_is_a_502_before_any_byte(flawed):
    resp = await flawed.post("/v1/audio/speech", json=streamed("One NAN. Two. Three."))
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "bad_audio"
    assert error["message"] == ("model flawed (backend flawed) returned bad audio in chunk 1: "
                                "samples contain NaN or infinity")


async def test_silence_after_the_first_chunk_is_served_and_logged_once(flawed, caplog):
    with caplog.at_level(logging.WARNING, logger="alltalk_host.serving.checked"):
        resp = await flawed.post("/v1/audio/speech", json=streamed(
            "One is fine. SILENT two. SILENT three. Four is fine."))
        body = await resp.read()
    assert resp.status == 200
    samples = np.frombuffer(body, dtype="<i2")
    assert len(samples) > 22050 and np.abs(samples).max() > 1000  # the audible sentences
    told = [r.getMessage() for r in caplog.records if "is silent" in r.getMessage()]
    assert told == ["model flawed (backend flawed): stream chunk 2 (0.86 s) is silent after "
                    "the first; the model may have stopped speaking (logged once per stream)"]


# --- the warm-up ---------------------------------------------------------------------------


async def test_an_apply_whose_warm_up_returns_int16_is_refused_and_the_old_model_serves(
        start_server, config_repo):
    client = await start_server(extra_plugins=PLUGIN)
    config_repo.model("pcm", backend="flawed", flaw="INT16", keep_loaded=True)
    commit = config_repo.commit("a model that returns integer PCM")
    resp = await client.post("/control/config/apply", json={"commit": commit})
    assert resp.status == 422
    error = await error_of(resp)
    assert error["code"] == "warmup_failed"
    assert error["message"] == (
        "model pcm (flawed): warm-up output rejected: samples are int16, not float32 in "
        "[-1, 1] (integer PCM: divide by 32768)")
    resp = await client.post("/tts", json={"text": "Hello there"})
    assert resp.status == 200 and resp.headers["X-AllTalk-Commit"] == config_repo.initial
    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == config_repo.initial


# --- the kit and the check itself ------------------------------------------------------------


def test_the_kit_reports_integer_pcm_at_the_warm_up_and_accepts_float64():
    report = check_backend(FlawedBackend, {"flaw": "INT16"})
    last = report.checks[-1]
    assert last.name == "load and warm-up" and last.ok is False
    assert "warm-up output rejected: samples are int16" in last.detail
    assert_conforms(FlawedBackend, {"flaw": "FLOAT64"})


def test_the_kit_reports_clipped_audio_in_the_stream_texts_synthesis():
    report = check_backend(FlawedBackend, {}, stream_text="One. Two LOUD. Three. Four.")
    failed = {c.name: c.detail for c in report.checks if c.ok is False}
    assert list(failed) == ["stream is as long as a whole synthesis"], report.summary()
    detail = failed["stream is as long as a whole synthesis"]
    assert detail.startswith("the whole synthesis: samples reach 98"), detail
    assert detail.endswith("outside [-1, 1] (scale them so that full scale is 1.0: clipped, "
                           "they are loud noise)"), detail


@pytest.mark.parametrize(("samples", "rate", "problem"), [
    (np.full(100, 1.05, np.float32), 22050, None),  # a resampler's ringing: forgiven
    (np.full(100, -1.2, np.float32), 22050, "samples reach 1.2, outside [-1, 1]"),
    (np.zeros(100, np.int32), 22050, "samples are int32, not float32 in [-1, 1] (integer "
                                     "PCM: divide by 2147483648)"),
    (np.zeros(100, np.uint8), 22050, "samples are uint8, not float32 in [-1, 1]"),
    (np.array([0.1, np.inf], np.float64), 22050, "samples contain NaN or infinity"),
    (np.zeros((2, 100), np.float32), 22050, "expected mono samples (one dimension), got "
                                            "shape (2, 100)"),
    (np.zeros(0, np.float16), 22050, None),  # an empty chunk is no harm
    (np.zeros(100, np.float32), 16000, "sample rate 16000 Hz differs from the declared "
                                       "22050 Hz"),
])
def test_chunk_problem_says_what_is_wrong(samples, rate, problem):
    found = chunk_problem(Audio(samples, rate), 22050)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found
    assert chunk_problem(samples, 22050) == "backend returned ndarray, not Audio"
