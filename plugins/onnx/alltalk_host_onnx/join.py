"""A first sentence cut between two words for streaming, and its halves joined without a pause.

A sentence with no clause mark used to be cut as text: each half phonemised and spoken as a
sentence of its own, so the first half ended as a sentence ends (its last word drawn out, then
~0.2 s of the model's closing silence) and a pause sat where the sentence has none. Here the
whole sentence is phonemised once (so every word keeps the stress and reductions it has in the
sentence) and its phonemes split at a word boundary; the head's closing silence and the tail's
opening one are trimmed to an ordinary gap between words. Measured on joe (tests/test_onnx.py):
the halves last within 6 % of the whole sentence, and the gap at the join is no longer than the
longest gap between words inside it.
"""

from __future__ import annotations

import numpy as np

WINDOW_S = 0.01
QUIET_RMS = 0.02  # -34 dBFS over 10 ms: silence between words, as the tests measure it
HEAD_KEEPS_S = 0.03  # of the head's closing silence
TAIL_KEEPS_S = 0.01  # of the tail's opening silence
FADE_S = 0.005  # at each trimmed edge, so a cut inside low noise does not click


def peak_normalised(samples: np.ndarray) -> np.ndarray:
    """``samples`` scaled so the loudest is at full scale, as piper-tts does; near-silence
    (a peak under 1e-8) becomes silence rather than noise blown up to full scale."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return np.zeros_like(samples) if peak < 1e-8 else samples / peak


def split_words(phonemes: list[str], words: int) -> tuple[list[str], list[str]] | None:
    """``phonemes`` cut after the ``words``-th word, when as many words follow; else None."""
    spaces = [i for i, p in enumerate(phonemes) if p == " "]
    if words < 1 or len(spaces) + 1 < 2 * words:
        return None
    at = spaces[words - 1]
    return phonemes[:at], phonemes[at + 1:]


def trim_end(samples: np.ndarray, rate: int, keep_s: float = HEAD_KEEPS_S) -> np.ndarray:
    """``samples`` without the closing silence beyond ``keep_s``."""
    loud = _loud_frames(samples, rate)
    if not loud.size:
        return samples
    end = min(len(samples), (int(loud[-1]) + 1) * _frame(rate) + int(keep_s * rate))
    out = samples[:end].copy()
    fade = min(int(FADE_S * rate), len(out))
    if end < len(samples) and fade:
        out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=out.dtype)
    return out


def trim_start(samples: np.ndarray, rate: int, keep_s: float = TAIL_KEEPS_S) -> np.ndarray:
    """``samples`` without the opening silence beyond ``keep_s``."""
    loud = _loud_frames(samples, rate)
    if not loud.size:
        return samples
    start = max(0, int(loud[0]) * _frame(rate) - int(keep_s * rate))
    out = samples[start:].copy()
    fade = min(int(FADE_S * rate), len(out))
    if start and fade:
        out[:fade] *= np.linspace(0.0, 1.0, fade, dtype=out.dtype)
    return out


def _frame(rate: int) -> int:
    return max(1, int(rate * WINDOW_S))


def _loud_frames(samples: np.ndarray, rate: int) -> np.ndarray:
    n = _frame(rate)
    frames = len(samples) // n
    if not frames:
        return np.zeros(0, dtype=np.int64)
    rms = np.sqrt((samples[:frames * n].astype(np.float64).reshape(frames, n) ** 2).mean(axis=1))
    return np.flatnonzero(rms >= QUIET_RMS)
