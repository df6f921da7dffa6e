"""The reference backend: deterministic, speech-like synthetic audio with no model weights.

It exists for two readers. Tests use it as the fast backend for swaps and concurrency; plugin
authors copy it as the template of a real backend (see README.md). Everything the host needs is
here: settings validation, load/unload, synthesis, streaming, voices and a memory estimate.

It can also misbehave on purpose, as a broken engine would, so tests can see the host contain
it: ``hang_on`` and ``crash_on`` (a phase, or a word of a request's text) make it hang for good
(ignoring cancel) or crash the process (a segfault); ``leak_mb`` keeps memory after unload.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
import time
import tomllib
import wave
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from alltalk_host import (
    RESERVED_OPTIONS,
    Audio,
    Backend,
    BadRequest,
    Capabilities,
    Code,
    MemoryNeed,
    ModelContext,
    SpeechRequest,
    hookimpl,
    number_in,
    parse_settings,
    split_sentences,
)

SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
# Where hang_on / crash_on may strike besides a word of a request: the warm-up is the first
# synthesis after load.
PHASES = ("load", "warmup", "unload")
_WORD = re.compile(r"\w+")
# What leak_mb allocates: never freed by unload(), as an engine's leaked sessions or allocator
# caches are not. Only the end of the process gives it back.
_LEAKED: list[np.ndarray] = []


@dataclass(frozen=True)
class ReferenceSettings:
    pitch_hz: float = 140.0
    amplitude: float = 0.3
    sample_rate: int = 22050
    voices: tuple[str, ...] = ("female_01", "male_01")
    # Simulated costs, so swaps and queues behave like a real model's.
    load_seconds: float = 0.0
    rtf: float = 0.0  # seconds of work per second of audio produced
    memory_mb: int = 8  # held while loaded, released on unload
    max_concurrency: int = 2
    # The share of requests it fails after its warm-up (evenly spread, not at random), so a
    # canary can be made bad on purpose. The warm-up, its first request after load, succeeds.
    error_rate: float = 0.0
    # Optional "weights": a TOML file whose pitch_hz/amplitude override the settings, read at
    # load time (so a missing or damaged file fails the load, and a model reload re-reads it).
    model_file: str | None = None
    # Faults on purpose (see the module docstring): a phase of PHASES or one word.
    hang_on: str | None = None
    crash_on: str | None = None
    leak_mb: int = 0


_RANGES: dict[str, tuple[float, float]] = {
    "pitch_hz": (50.0, 500.0),
    "amplitude": (0.0, 1.0),
    "load_seconds": (0.0, 600.0),
    "rtf": (0.0, 10.0),
    "memory_mb": (0, 4096),
    "max_concurrency": (1, 64),
    "error_rate": (0.0, 1.0),
    "leak_mb": (0, 4096),
}


class ReferenceBackend(Backend):
    name = "reference"
    path_settings = ("model_file",)  # inside models_dir when a commit sets them
    # "pitch" is a reserved option: a factor on the voice's pitch, on the contract's scale.
    # It "clones" a library voice by speaking at the pitch of its sample (a wav).
    capabilities = Capabilities(
        streaming=True, languages=("en", "de", "es", "fr", "it"), max_concurrency=2,
        parameters=("pitch",), voice_cloning=True,
    )

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> ReferenceSettings:
        parsed = parse_settings(ReferenceSettings, settings)
        for key, (lo, hi) in _RANGES.items():
            value = getattr(parsed, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key}: expected a number, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{key}: {value} is outside {lo}..{hi}")
        if parsed.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate: {parsed.sample_rate} is not one of {SAMPLE_RATES}")
        if not parsed.voices or not all(isinstance(v, str) and v for v in parsed.voices):
            raise ValueError("voices: expected a non-empty list of names")
        for key in ("hang_on", "crash_on"):
            value = getattr(parsed, key)
            if value is not None and not (isinstance(value, str)
                                          and _WORD.fullmatch(value)):
                raise ValueError(f"{key}: expected one of {', '.join(PHASES)} or a single "
                                 f"word, got {value!r}")
        if parsed.hang_on is not None and parsed.hang_on == parsed.crash_on:
            raise ValueError(f"hang_on and crash_on both name {parsed.hang_on!r}")
        return parsed

    @classmethod
    def memory_needed(cls, settings: ReferenceSettings, context: ModelContext) -> MemoryNeed:
        # Its "weights" are the memory_mb it holds while loaded: exactly known up front.
        return MemoryNeed(ram_bytes=settings.memory_mb * 1024 * 1024)

    def __init__(self, settings: ReferenceSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self.capabilities = replace(self.capabilities, max_concurrency=settings.max_concurrency)
        self._pitch = settings.pitch_hz
        self._amplitude = settings.amplitude
        self._ballast: np.ndarray | None = None
        self._fail_lock = threading.Lock()  # requests run on several threads at once
        self._warmed_up = False
        self._owed = 0.0  # failures owed: error_rate added per request, one failure per 1.0

    def load(self) -> None:
        self.context.progress("reading the model file", 0.0)  # what a slow load reports
        if self.settings.model_file:
            path = self.context.resolve(self.settings.model_file)
            if not path.is_file():
                raise FileNotFoundError(f"model file {path} not found")
            weights = tomllib.loads(path.read_text(encoding="utf-8"))
            self._pitch = float(weights.get("pitch_hz", self._pitch))
            self._amplitude = float(weights.get("amplitude", self._amplitude))
        time.sleep(self.settings.load_seconds)
        self._fault("load")
        self._ballast = np.ones(self.settings.memory_mb * 1024 * 1024 // 8, dtype=np.float64)
        if self.settings.leak_mb:
            _LEAKED.append(np.ones(int(self.settings.leak_mb * 1024 * 1024), dtype=np.uint8))
        self._warmed_up = False

    def unload(self) -> None:
        self._fault("unload")
        self._ballast = None

    def _fault(self, phase: str, text: str = "") -> None:
        """Hang or crash here when the settings say so: at ``phase`` (a name of PHASES means
        only the phase), or for a request whose text has the word (any case)."""
        if self.settings.crash_on is None and self.settings.hang_on is None:
            return  # the usual case costs nothing
        words = {w.lower() for w in _WORD.findall(text)}
        for trigger, act in ((self.settings.crash_on, _crash), (self.settings.hang_on, _hang)):
            if trigger is None:
                continue
            if trigger == phase if trigger in PHASES else trigger.lower() in words:
                act()

    @property
    def sample_rate(self) -> int:
        return self.settings.sample_rate

    def voices(self) -> list[str]:
        return list(self.settings.voices)

    def memory_estimate(self) -> int:
        return 0 if self._ballast is None else self._ballast.nbytes

    def synthesize(self, request: SpeechRequest) -> Audio:
        self._fault("warmup" if not self._warmed_up else "", request.text)
        self._maybe_fail()
        return self._synthesize(request)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        self._fault("warmup" if not self._warmed_up else "", request.text)
        self._maybe_fail()  # before the first chunk, as a model that cannot start would
        _pitch_factor(request.options)  # a bad option fails before the first chunk too
        for sentence in split_sentences(request.text):
            if request.cancelled.is_set():
                return
            yield self._synthesize(replace(request, text=sentence))

    def _maybe_fail(self) -> None:
        with self._fail_lock:
            if not self._warmed_up:
                self._warmed_up = True
                return
            self._owed += self.settings.error_rate
            if self._owed < 1.0 - 1e-9:
                return
            self._owed -= 1.0
        raise RuntimeError(f"simulated failure (error_rate = {self.settings.error_rate:g})")

    def _synthesize(self, request: SpeechRequest) -> Audio:
        if self._ballast is None:
            raise RuntimeError("model is not loaded")
        samples = self._render(request, _pitch_factor(request.options))
        # Simulate inference cost, in slices so a cancelled request stops early.
        deadline = time.monotonic() + self.settings.rtf * len(samples) / self.sample_rate
        while time.monotonic() < deadline and not request.cancelled.is_set():
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return Audio(samples, self.sample_rate)

    def _render(self, request: SpeechRequest, pitch: float) -> np.ndarray:
        """One voiced 'syllable' per letter group, pauses at spaces and punctuation."""
        sr = self.sample_rate
        voice = request.voice or self.settings.voices[0]
        if request.sample is not None:  # a library voice: the pitch its sample speaks at
            f0 = pitch * sample_pitch(request.sample.path, request.sample.sha256)
        else:  # each voice its own pitch, deterministically from its name
            f0 = pitch * self._pitch * (0.8 + 0.4 * (zlib.crc32(voice.encode()) % 100) / 100)
        unit = int(0.075 * sr / request.speed)
        parts: list[np.ndarray] = []
        for ch in request.text:
            if ch.isalnum():
                parts.append(self._syllable(ch, f0, unit))
            elif ch.isspace():
                parts.append(np.zeros(unit // 2, dtype=np.float32))
            elif ch in ".!?;:,":
                parts.append(np.zeros(unit * 2, dtype=np.float32))
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts)

    def _syllable(self, ch: str, f0: float, n: int) -> np.ndarray:
        sr = self.sample_rate
        t = np.arange(n, dtype=np.float32) / sr
        code = ord(ch.lower())
        formant = 300.0 + (code * 37) % 1800  # the letter decides which harmonics are strong
        wave = np.zeros(n, dtype=np.float32)
        for k in range(1, 9):
            fk = f0 * k
            if fk >= sr / 2:
                break
            gain = math.exp(-(((fk - formant) / 400.0) ** 2)) + 0.3 / k
            wave += gain * np.sin(2 * np.pi * fk * t, dtype=np.float32)
        envelope = np.sin(np.pi * np.arange(n, dtype=np.float32) / n)
        peak = float(np.max(np.abs(wave))) or 1.0
        return (self._amplitude * envelope * wave / peak).astype(np.float32)


def _hang() -> None:
    """A stuck engine: never returns, and no cancel reaches it."""
    threading.Event().wait()


def _crash() -> None:
    """A crash in native code: reading address 0 is a segfault, the process ends at once."""
    ctypes.string_at(0)


def _pitch_factor(options: Mapping[str, Any]) -> float:
    """The request's pitch option (1.0 when absent); any other option is refused by name."""
    unknown = set(options) - {"pitch"}
    if unknown:
        raise BadRequest(f"unknown options {sorted(unknown)} for a reference model; known: "
                         "['pitch']", code=Code.BAD_OPTION)
    value = options.get("pitch", 1.0)
    scale = RESERVED_OPTIONS["pitch"]
    factor = number_in(value, scale.low, scale.high)
    if factor is None:
        raise BadRequest(f"pitch: {value!r:.40} is not a factor from {scale.low} to "
                         f"{scale.high} (1.0 is the voice's own pitch)", code=Code.BAD_OPTION)
    return factor


_PITCHES: dict[str, float] = {}  # a sample's content hash -> its pitch (a latents cache's role)
_PITCH_LOCK = threading.Lock()


def sample_pitch(path: Path, sha256: str) -> float:
    """The fundamental of a library sample (a 16-bit PCM wav), from the autocorrelation peak
    between 60 and 400 Hz of its loudest second; computed once per content."""
    with _PITCH_LOCK:
        if sha256 in _PITCHES:
            return _PITCHES[sha256]
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise BadRequest("the reference backend clones 16-bit PCM wav samples only",
                                 code=Code.BAD_VOICE_FILE)
            rate, channels = wav.getframerate(), wav.getnchannels()
            frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    except (OSError, EOFError, wave.Error) as exc:
        raise BadRequest(f"voice sample {path.name} is not a wav it can read: {exc}",
                         code=Code.BAD_VOICE_FILE) from None
    samples = frames.reshape(-1, channels).mean(axis=1).astype(np.float64) / 32768
    if len(samples) < rate // 2 or float(np.sqrt(np.mean(samples ** 2))) < 1e-3:
        raise BadRequest(f"voice sample {path.name} is shorter than 0.5 s or silent",
                         code=Code.BAD_VOICE_FILE)
    window = min(len(samples), rate)
    energy = np.convolve(samples ** 2, np.ones(window), "valid")
    start = int(np.argmax(energy))
    x = samples[start:start + window] - samples[start:start + window].mean()
    corr = np.fft.irfft(np.abs(np.fft.rfft(x, n=2 * len(x))) ** 2)[: len(x)]
    first, last = int(rate / 400), int(rate / 60)
    pitch = rate / (first + int(np.argmax(corr[first:last])))
    with _PITCH_LOCK:
        _PITCHES[sha256] = pitch
    return pitch


@hookimpl
def alltalk_host_register_backends(register):  # type: ignore[no-untyped-def]
    register(ReferenceBackend)
