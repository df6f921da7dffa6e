"""Audio helpers shared by every front-end: PCM conversion, WAV framing, and the checks of what
a backend returns (``chunk_problem`` per chunk, ``audio_problem`` for the warm-up)."""

from __future__ import annotations

import io
import math
import struct
import wave
from typing import cast

import numpy as np

from .backend import Audio

# Below this RMS (about -80 dBFS) we call the output silent.
SILENCE_RMS = 1e-4
# How far past full scale a sample may go: 10 % (under 1 dB) forgives a resampler's ringing or
# float rounding, which the PCM encoder clips unheard. Beyond it the samples were never scaled
# to [-1, 1] (integer PCM passed as floats, a missing normalisation) and clip into loud noise.
PEAK_LIMIT = 1.1


def to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def to_wav(audio: Audio) -> bytes:
    """A complete 16-bit mono WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.sample_rate)
        w.writeframes(to_pcm16(audio.samples))
    return buf.getvalue()


def wav_stream_header(sample_rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes set to the maximum, as players expect)."""
    byte_rate = sample_rate * 2
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, 2, 16)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def chunk_problem(audio: object, expected_rate: int) -> str | None:
    """Why one chunk of a backend's output breaks the contract's sample format, or None.

    Samples are floats in [-1, 1] (up to ``PEAK_LIMIT``), mono, finite, at ``expected_rate``.
    Integer PCM is refused, since its scale cannot be guessed safely; float64 and float16 pass
    (the host converts them to float32). Cheap enough for every chunk: two reductions, no copy.
    """
    if not isinstance(audio, Audio):
        return f"backend returned {type(audio).__name__}, not Audio"
    if audio.sample_rate != expected_rate:
        return f"sample rate {audio.sample_rate} Hz differs from the declared {expected_rate} Hz"
    samples = np.asarray(audio.samples)
    if samples.dtype.kind != "f":
        hint = (f" (integer PCM: divide by {2 ** (8 * samples.dtype.itemsize - 1)})"
                if samples.dtype.kind == "i" else "")
        return f"samples are {samples.dtype}, not float32 in [-1, 1]{hint}"
    if samples.ndim != 1:
        return f"expected mono samples (one dimension), got shape {samples.shape}"
    if samples.size == 0:
        return None
    high, low = float(samples.max()), float(samples.min())  # NaN and inf propagate
    if not (math.isfinite(high) and math.isfinite(low)):
        return "samples contain NaN or infinity"
    peak = max(high, -low)
    if peak > PEAK_LIMIT:
        return (f"samples reach {peak:.4g}, outside [-1, 1] (scale them so that full scale is "
                "1.0: clipped, they are loud noise)")
    return None


def as_float32(audio: Audio) -> Audio:
    """``audio`` with float32 samples (a chunk that passed ``chunk_problem``)."""
    samples = audio.samples
    if isinstance(samples, np.ndarray) and samples.dtype == np.float32:
        return audio
    return Audio(np.asarray(samples, dtype=np.float32), audio.sample_rate)


def rms_of(samples: np.ndarray) -> float:
    """The RMS level of ``samples`` (0 for none)."""
    samples = np.asarray(samples)
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def audio_problem(audio: object, expected_rate: int) -> str | None:
    """Why this output is not usable speech, or None when it is (the warm-up check): the
    chunk's format (``chunk_problem``), and non-empty and not silent."""
    problem = chunk_problem(audio, expected_rate)
    if problem is not None:
        return problem
    samples = np.asarray(cast(Audio, audio).samples)  # an Audio: chunk_problem made sure
    if samples.size == 0:
        return "output is empty"
    rms = rms_of(samples)
    if rms < SILENCE_RMS:
        return f"output is silent (RMS {rms:.2e})"
    return None
