"""The espeak backend for alltalk-host.

Made by `alltalk-host plugin new` from the reference backend: it already keeps the contract
(a placeholder voice of shaped tones). Replace the parts marked TODO with your engine; run
`pytest` and `alltalk-host try espeak "Hello."` as you go.
"""

from __future__ import annotations

import zlib
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
    ModelContext,
    SpeechRequest,
    hookimpl,
    parse_settings,
    split_sentences,
)

SAMPLE_RATES = (16000, 22050, 24000, 44100, 48000)


@dataclass(frozen=True)
class EspeakBackendSettings:
    """One model's `settings` table. TODO: your engine's settings (paths, device, ...)."""

    pitch_hz: float = 140.0
    sample_rate: int = 22050
    voices: tuple[str, ...] = ("default",)


class EspeakBackend(Backend):
    name = "espeak"  # what models.toml's `backend = ...` names
    # TODO: what your engine can do. "pitch" is a reserved option: a factor, 1.0 unchanged.
    capabilities = Capabilities(streaming=True, languages=("en",), max_concurrency=1,
                                parameters=("pitch",))

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> EspeakBackendSettings:
        """Cheap, no files read: raise ValueError naming the key."""
        parsed = parse_settings(EspeakBackendSettings, settings)
        if isinstance(parsed.pitch_hz, bool) or not isinstance(parsed.pitch_hz, int | float) \
                or not 50 <= parsed.pitch_hz <= 500:
            raise ValueError(f"pitch_hz: {parsed.pitch_hz!r} is outside 50..500")
        if parsed.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate: {parsed.sample_rate!r} is not one of {SAMPLE_RATES}")
        if not parsed.voices or not all(isinstance(v, str) and v for v in parsed.voices):
            raise ValueError("voices: expected a non-empty list of names")
        return parsed

    @classmethod
    def check_available(cls, settings: EspeakBackendSettings, context: ModelContext) -> None:
        """Could this model load here? TODO: stat your files (context.resolve(path)), look
        libraries up with importlib.util.find_spec; raise naming what is missing."""

    def __init__(self, settings: EspeakBackendSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self._weights: np.ndarray | None = None

    def load(self) -> None:
        """TODO: import your engine HERE (not at module import) and load the weights."""
        self.context.progress("loading", 0.0)
        self._weights = np.hanning(64).astype(np.float32)  # stands for the model

    def unload(self) -> None:
        self._weights = None  # TODO: release everything load() took

    @property
    def sample_rate(self) -> int:
        return self.settings.sample_rate

    def voices(self) -> list[str]:
        return list(self.settings.voices)

    def memory_estimate(self) -> int:
        return 0 if self._weights is None else self._weights.nbytes

    def synthesize(self, request: SpeechRequest) -> Audio:
        if self._weights is None:
            raise RuntimeError("model is not loaded")
        return Audio(self._render(request, _pitch(request.options)), self.sample_rate)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        _pitch(request.options)  # a bad option fails before the first chunk
        for sentence in split_sentences(request.text):
            if request.cancelled.is_set():
                return
            yield self.synthesize(replace(request, text=sentence))

    def _render(self, request: SpeechRequest, pitch: float) -> np.ndarray:
        """TODO: your engine. The placeholder: a tone per letter, silence between words."""
        voice = request.voice or self.settings.voices[0]
        f0 = pitch * self.settings.pitch_hz * (0.8 + 0.4 * (zlib.crc32(voice.encode()) % 100)
                                               / 100)
        unit = int(0.075 * self.sample_rate / request.speed)
        t = np.arange(unit, dtype=np.float32) / self.sample_rate
        tone = (0.3 * np.sin(np.pi * np.arange(unit) / unit) * np.sin(2 * np.pi * f0 * t))
        parts = [tone if ch.isalnum() else np.zeros(unit // 2) for ch in request.text
                 if ch.isalnum() or ch.isspace()]
        return np.concatenate(parts or [np.zeros(unit)]).astype(np.float32)


def _pitch(options: Mapping[str, Any]) -> float:
    """The reserved pitch option on the contract's scale; any other option is refused."""
    unknown = set(options) - {"pitch"}
    if unknown:
        raise BadRequest(f"unknown options {sorted(unknown)}; known: ['pitch']",
                         code="bad_option")
    value, scale = options.get("pitch", 1.0), RESERVED_OPTIONS["pitch"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            scale.low <= value <= scale.high):
        raise BadRequest(f"pitch: {value!r} is not a factor from {scale.low} to {scale.high}",
                         code="bad_option")
    return float(value)


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(EspeakBackend)
