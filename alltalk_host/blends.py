"""Voice blends: ``jf_alpha:0.6+jm_kumo:0.4`` names a mix of a model's voices.

A backend that mixes voices (Kokoro mixes their style vectors) declares
``Capabilities(voice_blending=True)``; a blend then works anywhere a voice name does, and the
host checks it before the backend sees it: every part a voice of the model, weights positive
numbers. Weights are normalised to sum to 1; ``a+b`` (no weights) is an equal mix. A part
without a weight in a weighted blend counts 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_PARTS = 8  # a mix of more is no voice anyone chose
MAX_NAME = 400  # longer is no blend: not parsed further

Blend = tuple[tuple[str, float], ...]


def is_blend(name: str) -> bool:
    """Whether ``name`` is written as a blend (it has a ``+`` or a ``:``)."""
    return "+" in name or ":" in name


def parse_blend(name: str) -> Blend:
    """The parts of a blend with weights summing to 1, in the order written (a voice named
    twice adds up). Raises ValueError saying what is wrong with it."""
    if len(name) > MAX_NAME:
        raise ValueError(f"a voice blend is at most {MAX_NAME} characters")
    pieces = name.split("+")
    if len(pieces) > MAX_PARTS:
        raise ValueError(f"a voice blend mixes at most {MAX_PARTS} voices")
    weights: dict[str, float] = {}
    for piece in pieces:
        voice, colon, weight = piece.strip().partition(":")
        voice = voice.strip()
        if not voice:
            raise ValueError(f"{name[:80]!r}: a voice name is missing (write "
                             "voice_a:0.6+voice_b:0.4)")
        value = 1.0
        if colon:
            try:
                value = float(weight)
            except ValueError:
                raise ValueError(f"{name[:80]!r}: the weight {weight.strip()[:20]!r} of "
                                 f"{voice[:40]!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name[:80]!r}: the weight of {voice[:40]!r} must be a "
                                 "number above 0")
        weights[voice] = weights.get(voice, 0.0) + value
    total = sum(weights.values())
    if not math.isfinite(total):
        raise ValueError(f"{name[:80]!r}: the weights are too large")
    return tuple((voice, value / total) for voice, value in weights.items())


def voice_problem(voice: str, voices: Sequence[str], blending: bool) -> str | None:
    """Why ``voice`` is not one a model with ``voices`` can speak, or None; read after "model
    NAME " ("has no voice 'x'"). An empty list is a single-voice model: any name goes to the
    backend."""
    if not voices or voice in voices:
        return None
    if not (blending and is_blend(voice)):
        return f"has no voice {voice[:100]!r}"
    try:
        parts = parse_blend(voice)
    except ValueError as exc:
        return f"cannot mix that voice blend: {exc}"
    unknown = [name for name, _ in parts if name not in voices]
    if unknown:
        return f"has no voice {unknown[0][:100]!r} for the blend {voice[:100]!r}"
    return None
