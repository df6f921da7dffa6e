"""Audio helpers shared by every front-end: PCM conversion, WAV framing, output sanity checks."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

from .backend import Audio

# Below this RMS (about -80 dBFS) we call the output silent.
SILENCE_RMS = 1e-4


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


def audio_problem(audio: object, expected_rate: int) -> str | None:
    """Why this output is not usable speech, or None when it is (the warm-up check)."""
    if not isinstance(audio, Audio):
        return f"backend returned {type(audio).__name__}, not Audio"
    if audio.sample_rate != expected_rate:
        return f"sample rate {audio.sample_rate} Hz differs from the declared {expected_rate} Hz"
    samples = np.asarray(audio.samples)
    if samples.ndim != 1 or samples.size == 0:
        return f"expected non-empty mono samples, got shape {samples.shape}"
    if not np.all(np.isfinite(samples)):
        return "output contains NaN or infinite samples"
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms < SILENCE_RMS:
        return f"output is silent (RMS {rms:.2e})"
    return None
