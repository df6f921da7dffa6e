"""Serving speech: check a request against the serving config, run it on a leased generation.

Every front-end (the native /tts route, the AllTalk and OpenAI routes, a Ray deployment) calls
``SpeechService``; it returns the audio together with the commit and generation that made it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from .backend import Audio, SpeechRequest
from .config.settings import SPEED_RANGE
from .errors import BadRequest, NotFound
from .registry import Generation, ModelRegistry, Serving


@dataclass(frozen=True)
class SpeechInput:
    """What a client asked for; None means the model's or the config's default."""

    text: str
    model: str | None = None
    voice: str | None = None
    language: str | None = None
    speed: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """Which config and which loaded model produced a response: sent as response headers."""

    commit: str
    model: str
    generation: int
    sample_rate: int

    @property
    def model_label(self) -> str:
        return f"{self.model}; generation={self.generation}"


@dataclass(frozen=True)
class SpeechResult:
    audio: Audio
    provenance: Provenance


class SpeechStream:
    """Audio chunks and their provenance. Use as ``async with``: leaving it ends the lease."""

    def __init__(self, provenance: Provenance, chunks: AsyncIterator[Audio],
                 request: SpeechRequest, stack: AsyncExitStack) -> None:
        self.provenance = provenance
        self.chunks = chunks
        self._request = request
        self._stack = stack

    async def aclose(self) -> None:
        self._request.cancelled.set()  # stops the backend between chunks if still running
        await self.chunks.aclose()  # type: ignore[attr-defined]
        await self._stack.aclose()

    async def __aenter__(self) -> SpeechStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SpeechService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def synthesize(self, wanted: SpeechInput) -> SpeechResult:
        async with self.registry.lease(wanted.model) as (serving, gen):
            request = _build_request(wanted, serving, gen)
            audio = await gen.run(lambda backend: backend.synthesize(request),
                                  self.registry.inference, serving.config.queue_limit)
            return SpeechResult(audio, _provenance(serving, gen))

    async def stream(self, wanted: SpeechInput) -> SpeechStream:
        """Chunks as the backend makes them; the lease lasts until the stream is closed.

        Validation happens before this returns, so a bad request fails before any byte is sent.
        """
        stack = AsyncExitStack()
        serving, gen = await stack.enter_async_context(self.registry.lease(wanted.model))
        try:
            request = _build_request(wanted, serving, gen)
        except BaseException:
            await stack.aclose()
            raise
        chunks = gen.run_stream(lambda backend: backend.stream(request),
                                self.registry.inference, serving.config.queue_limit,
                                request.cancelled)
        return SpeechStream(_provenance(serving, gen), chunks, request, stack)


def _provenance(serving: Serving, gen: Generation) -> Provenance:
    return Provenance(serving.commit, gen.model.name, gen.number, gen.sample_rate)


def _build_request(wanted: SpeechInput, serving: Serving, gen: Generation) -> SpeechRequest:
    config, model = serving.config, gen.model
    text = wanted.text.strip() if isinstance(wanted.text, str) else ""
    if not text:
        raise BadRequest("text is empty", code="empty_text")
    if len(text) > config.max_text_length:
        raise BadRequest(
            f"text is {len(text)} characters; the limit is {config.max_text_length}",
            code="text_too_long",
            details={"length": len(text), "limit": config.max_text_length},
        )
    voice = wanted.voice or model.default_voice
    if voice is not None and gen.voices and voice not in gen.voices:
        raise NotFound(
            f"model {model.name} has no voice {voice!r}",
            code="unknown_voice",
            details={"voices": gen.voices[:100]},
        )
    language = wanted.language or model.default_language or config.default_language
    if language not in gen.capabilities.languages:
        raise BadRequest(
            f"model {model.name} does not speak {language!r}",
            code="unsupported_language",
            details={"languages": list(gen.capabilities.languages)},
        )
    speed = model.default_speed if wanted.speed is None else wanted.speed
    lo, hi = SPEED_RANGE
    if (isinstance(speed, bool) or not isinstance(speed, int | float)
            or not math.isfinite(speed) or not lo <= speed <= hi):
        raise BadRequest(f"speed must be a number from {lo} to {hi}", code="bad_speed")
    return SpeechRequest(text=text, voice=voice, language=language, speed=float(speed),
                         options=dict(wanted.options))
