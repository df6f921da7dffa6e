"""Speech-like reference audio for voice cloning in tests and benchmarks (no recordings here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_reference_wav(path: Path, seconds: float = 3.0, amplitude: float = 0.5,
                        rate: int = 22050) -> Path:
    """Speech-like audio to clone from: a harmonic stack at 140 Hz with a syllable envelope."""
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    signal = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    signal = signal * np.sin(2 * np.pi * 4 * t) ** 2
    peak = float(np.abs(signal).max()) or 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, (amplitude * signal / peak).astype(np.float32), rate)
    return path
