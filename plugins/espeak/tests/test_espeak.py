"""The espeak backend keeps alltalk-host's backend contract and speaks as espeak-ng does."""

from __future__ import annotations

import ctypes
import io
import shutil
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from alltalk_host import BadRequest, ModelContext, SpeechRequest
from alltalk_host.testing import assert_conforms
from alltalk_host_espeak import EspeakBackend
from alltalk_host_espeak.engine import library_files

TEXT = "Hello there. This is a test of the espeak voice."


def loaded(**settings) -> EspeakBackend:
    backend = EspeakBackend(EspeakBackend.validate_settings(settings),
                            ModelContext("espeak", Path("."), Path(".")))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def espeak():
    backend = loaded()
    yield backend
    backend.unload()


def speak(backend: EspeakBackend, text: str = TEXT, **fields) -> np.ndarray:
    return backend.synthesize(SpeechRequest(text, **fields)).samples


def pitch_of(samples: np.ndarray, rate: int = 22050, lo: float = 60, hi: float = 400) -> float:
    """The fundamental frequency, from the autocorrelation peak between lo and hi Hz."""
    x = samples - samples.mean()
    corr = np.fft.irfft(np.abs(np.fft.rfft(x, n=2 * len(x))) ** 2)[: len(x)]
    first, last = int(rate / hi), int(rate / lo)
    return rate / (first + int(np.argmax(corr[first:last])))


def test_the_backend_keeps_the_contract():
    assert_conforms(EspeakBackend, {"rate_wpm": 175},
                    bad_settings=[{"rate_wpm": 20}, {"base_pitch": 101}, {"volume": "loud"},
                                  {"languages": ["en_US!"]}])


def test_it_offers_dozens_of_languages_and_the_espeak_variants(espeak):
    languages = espeak.capabilities.languages
    assert len(languages) > 100
    assert {"en", "en-us", "en-gb", "de", "fr", "es", "cmn", "ru", "ar", "hi"} <= set(languages)
    voices = espeak.voices()
    assert voices[0] == "default" and {"f3", "m1", "klatt", "whisper"} <= set(voices)
    german = speak(espeak, "Guten Tag, wie geht es Ihnen?", language="de")
    english = speak(espeak, "Guten Tag, wie geht es Ihnen?", language="en")
    assert not np.array_equal(german, english)  # another language's rules, not just letters


def test_variants_and_the_reserved_pitch_option_move_the_pitch(espeak):
    plain = pitch_of(speak(espeak))
    assert pitch_of(speak(espeak, voice="f3")) > plain * 1.5  # a female variant
    up = pitch_of(speak(espeak, options={"pitch": 2 ** (6 / 12)}))  # six semitones up
    assert up / plain == pytest.approx(2 ** (6 / 12), rel=0.12)
    assert pitch_of(speak(espeak, options={"pitch": 1.0})) == pytest.approx(plain, rel=0.02)
    for bad in ({"pitch": 0}, {"pitch": 3}, {"temperature": 0.5}):
        with pytest.raises(BadRequest):
            speak(espeak, options=bad)


def test_speed_changes_the_rate_and_espeaks_floor_is_kept(espeak):
    normal = len(speak(espeak))
    assert len(speak(espeak, speed=2.0)) < normal * 0.65
    assert len(speak(espeak, speed=0.5)) > normal * 1.6
    # Both at espeak's floor of 80 words a minute (its noise makes lengths vary by samples).
    assert len(speak(espeak, speed=0.25)) == pytest.approx(len(speak(espeak, speed=0.4)),
                                                           rel=0.01)


def test_a_model_may_offer_only_some_languages():
    backend = loaded(languages=["en", "de"])
    try:
        assert backend.capabilities.languages == ("en", "de")
    finally:
        backend.unload()
    with pytest.raises(ValueError, match=r"espeak-ng has no \['xx-nope'\]"):
        loaded(languages=["xx-nope"])


def same_speech(a: np.ndarray, b: np.ndarray) -> bool:
    """The same utterance: espeak's fricative noise comes from libc's rand(), so two runs
    differ by a few samples, never as much as another rate or language would make them."""
    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(x))))
    return abs(len(a) - len(b)) <= 0.01 * len(b) and abs(rms(a) - rms(b)) <= 0.05 * rms(b)


def test_instances_and_other_users_of_the_library_do_not_disturb_each_other(espeak):
    """Each instance has a private copy of libespeak-ng: two instances at once, and another
    user of the shared library switching its voice and rate all the while, change nothing."""
    expected = speak(espeak)
    other = loaded()
    shared = ctypes.CDLL(str(library_files()[0]))  # as the onnx plugin's phonemiser has it
    shared.espeak_Initialize(2, 0, str(library_files()[1]).encode(), 0x8000)
    stop = threading.Event()

    def meddle() -> None:
        while not stop.is_set():
            for voice in (b"de", b"fr+f3", b"ru"):
                shared.espeak_SetVoiceByName(voice)
                shared.espeak_SetParameter(1, 400, 0)

    results: list[bool] = []

    def run(backend: EspeakBackend) -> None:
        results.extend(same_speech(speak(backend), expected) for _ in range(20))

    threads = [threading.Thread(target=meddle), threading.Thread(target=run, args=(espeak,)),
               threading.Thread(target=run, args=(other,))]
    try:
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join()
    finally:
        stop.set()
        threads[0].join()
        other.unload()
    assert results == [True] * 40


def test_cancelling_stops_inside_one_utterance(espeak):
    request = SpeechRequest(TEXT * 20)
    calls = 0

    def stop_soon() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    request.cancelled.is_set = stop_soon  # type: ignore[method-assign]
    cut = espeak.synthesize(request).duration
    assert cut < espeak.synthesize(SpeechRequest(TEXT * 20)).duration / 10


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="the espeak-ng command is not installed (make espeak-ng-cli)")
def test_it_sounds_like_the_espeak_ng_command(espeak):
    """Same engine, same voice: about the same length and pitch as `espeak-ng --stdout` (the
    command may be another release than the library espeakng-loader ships)."""
    for voice, variant in (("en", "default"), ("en+f3", "f3")):
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", TEXT], check=True,
                             capture_output=True, timeout=60).stdout
        with wave.open(io.BytesIO(wav)) as w:
            rate = w.getframerate()
            cli = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        ours = speak(espeak, voice=variant)
        assert rate == espeak.sample_rate
        assert len(ours) / len(cli) == pytest.approx(1.0, rel=0.15), voice
        assert pitch_of(ours) == pytest.approx(pitch_of(cli), rel=0.1), voice
