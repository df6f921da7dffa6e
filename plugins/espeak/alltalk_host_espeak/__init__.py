"""The espeak backend for alltalk-host: espeak-ng, a formant synthesiser with no weights.

Over a hundred languages and the espeak voice variants, fast on any CPU, from the library and
data the espeakng-loader wheel ships (nothing is downloaded). Made with `alltalk-host plugin
new espeak`; engine.py is the part the template left to the author.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from alltalk_host import (
    RESERVED_OPTIONS,
    Audio,
    Backend,
    BadRequest,
    Capabilities,
    Code,
    ModelContext,
    SpeechRequest,
    hookimpl,
    parse_settings,
    split_sentences,
)

from .engine import RATE_MIN, Engine, library_files, variants

DEFAULT_VOICE = "default"  # the language's own espeak voice, no variant
# espeak's base pitch moves the voice about 0.21 semitones per step of its 0..100 scale
# (measured on its en voice: 50 -> 81 Hz, 100 -> 149 Hz), so the contract's pitch factor
# becomes steps from the model's base_pitch. Beyond 0..100 espeak goes no further.
SEMITONES_PER_STEP = 0.21
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,8})*$")
_RANGES = {"rate_wpm": (RATE_MIN, 450), "base_pitch": (0, 100), "pitch_range": (0, 100),
           "volume": (0, 200)}


@dataclass(frozen=True)
class EspeakSettings:
    rate_wpm: int = 175  # words per minute at speed 1.0 (espeak's own default)
    base_pitch: int = 50  # espeak's pitch scale, 0..100
    pitch_range: int = 50  # intonation: 0 is a monotone
    volume: int = 100  # espeak's amplitude, 0..200
    languages: tuple[str, ...] = ()  # offer only these espeak language codes; () offers all


class EspeakBackend(Backend):
    name = "espeak"
    # languages: the real list comes from espeak-ng at load (over a hundred).
    capabilities = Capabilities(streaming=True, languages=("en",), max_concurrency=1,
                                parameters=("pitch",))

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> EspeakSettings:
        parsed = parse_settings(EspeakSettings, settings)
        for key, (lo, hi) in _RANGES.items():
            value = getattr(parsed, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{key}: {value!r} is not a whole number from {lo} to {hi}")
        bad = [code for code in parsed.languages
               if not isinstance(code, str) or not _LANGUAGE_RE.match(code)]
        if bad:
            raise ValueError(f"languages: {bad} are not espeak language codes (like en, "
                             "en-gb, de, cmn)")
        return parsed

    @classmethod
    def check_available(cls, settings: EspeakSettings, context: ModelContext) -> None:
        """espeakng-loader is installed and its library and data are there (a stat each)."""
        if importlib.util.find_spec("espeakng_loader") is None:
            raise RuntimeError("espeakng-loader is not installed: pip install "
                               "alltalk-host-espeak")
        try:  # two path functions: importing the package loads no library
            library, data = library_files()
        except RuntimeError as exc:  # its data folder is missing
            raise RuntimeError(f"espeakng-loader is damaged: {exc}") from None
        if not library.is_file():
            raise RuntimeError(f"libespeak-ng not found at {library}")
        if not (data / "phondata").is_file():
            raise RuntimeError(f"espeak-ng data folder {data} lacks phondata")

    def __init__(self, settings: EspeakSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self._engine: Engine | None = None
        self._languages: dict[str, str] = {}  # code -> espeak voice identifier
        self._voices: list[str] = []
        self._bytes = 0

    # --- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        self.context.progress("loading a private copy of libespeak-ng", 0.0)
        library, data = library_files()
        engine = Engine(library, data)
        try:
            languages = engine.languages()
            wanted = self.settings.languages
            missing = [code for code in wanted if code not in languages]
            if missing:
                raise ValueError(f"languages: espeak-ng has no {missing}; it has "
                                 f"{sorted(languages)}")
            if wanted:
                languages = {code: languages[code] for code in wanted}
        except BaseException:
            engine.close()
            raise
        self._engine, self._languages = engine, languages
        self._voices = [DEFAULT_VOICE, *variants(data)]
        self.capabilities = replace(self.capabilities, languages=tuple(languages))
        self._bytes = library.stat().st_size + sum(
            p.stat().st_size for p in data.glob("phon*") if p.is_file())

    def unload(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    # --- what it serves --------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._require().sample_rate

    def voices(self) -> list[str]:
        return list(self._voices)

    def memory_estimate(self) -> int:
        return self._bytes if self._engine is not None else 0

    def status(self) -> dict[str, Any]:
        return {"languages": len(self._languages), "variants": len(self._voices) - 1}

    def synthesize(self, request: SpeechRequest) -> Audio:
        engine, voice, pitch = self._prepare(request)
        samples = engine.speak(request.text, voice, self._rate(request.speed), pitch,
                               self.settings.pitch_range, self.settings.volume,
                               stop=request.cancelled.is_set)
        return Audio(samples.astype(np.float32) / 32768.0, engine.sample_rate)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        self._prepare(request)  # a bad voice or option fails before the first chunk
        for sentence in split_sentences(request.text):
            if request.cancelled.is_set():
                return
            yield self.synthesize(replace(request, text=sentence))

    # --- helpers ---------------------------------------------------------------------------

    def _prepare(self, request: SpeechRequest) -> tuple[Engine, str, int]:
        engine = self._require()
        unknown = set(request.options) - {"pitch"}
        if unknown:
            raise BadRequest(f"unknown options {sorted(unknown)} for an espeak model; known: "
                             "['pitch']", code=Code.BAD_OPTION)
        voice = request.voice or DEFAULT_VOICE
        if voice not in self._voices:
            raise BadRequest(f"espeak has no voice variant {voice!r}", code=Code.UNKNOWN_VOICE,
                             details={"voices": self._voices[:100]})
        identifier = self._languages.get(request.language.lower())
        if identifier is None:
            raise BadRequest(f"this model does not speak {request.language!r}",
                             code=Code.UNSUPPORTED_LANGUAGE)
        name = identifier if voice == DEFAULT_VOICE else f"{identifier}+{voice}"
        return engine, name, self._pitch(request.options.get("pitch", 1.0))

    def _pitch(self, factor: Any) -> int:
        """The contract's pitch factor as espeak's base pitch (0..100)."""
        scale = RESERVED_OPTIONS["pitch"]
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not (
                scale.low <= factor <= scale.high):
            raise BadRequest(f"pitch: {factor!r} is not a factor from {scale.low} to "
                             f"{scale.high} (1.0 is the voice's own pitch)", code=Code.BAD_OPTION)
        steps = 12 * math.log2(factor) / SEMITONES_PER_STEP
        return max(0, min(100, round(self.settings.base_pitch + steps)))

    def _rate(self, speed: float) -> int:
        # espeak speaks no slower than 80 words a minute; faster works up to the host's 4x.
        return max(RATE_MIN, round(self.settings.rate_wpm * speed))

    def _require(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("model is not loaded")
        return self._engine


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(EspeakBackend)


__all__ = ["EspeakBackend", "EspeakSettings"]
