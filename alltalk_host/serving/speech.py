"""Serving speech: check a request against the serving config, run it on a leased generation.

Every front-end (the native /tts route, the AllTalk and OpenAI routes, a Ray deployment) calls
``SpeechService``; it returns the audio together with the commit, generation and arm that made
it. While a canary runs, each request goes to an arm (``canary.Arms``), and a canary request
that fails before its first audio is served by the stable arm instead, and one whose worker
process died before its first audio is tried once more (both in ``arms.Arms.serve``). Every
call into a backend goes through ``checked.AudioCheck``: within the lease's deadline for an
instance in a worker process, and audio that breaks the contract is a 502.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ..backend import Audio, SpeechRequest
from ..blends import voice_problem
from ..config.canary import STABLE
from ..config.settings import SPEED_RANGE
from ..errors import BadRequest, Code, HostError, NotFound
from ..languages import match_language
from ..numbers import number_in
from ..text import has_speakable
from .arms import Arms, server_side
from .checked import AudioCheck
from .lease import Lease
from .registry import Generation, ModelRegistry, Serving

# The silence answered for text with nothing to speak: short, but a complete, valid file.
SILENCE_S = 0.2


@dataclass(frozen=True)
class SpeechInput:
    """What a client asked for; None means the model's or the config's default."""

    text: str
    model: str | None = None
    voice: str | None = None
    language: str | None = None
    speed: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    phonemes: bool = False  # ``text`` is the model's phonemes (backends with phoneme_input)


@dataclass(frozen=True)
class Provenance:
    """Which config and which loaded model produced a response: sent as response headers."""

    commit: str
    model: str
    generation: int
    sample_rate: int
    arm: str = STABLE  # "canary" when a running canary's snapshot served it
    # The library samples that spoke ("NAME; sha256=<12 hex>"), when a voice of voices.toml did
    voice: str | None = None

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


class SpeechObserver(Protocol):
    """Told about every speech request that produced audio (metrics)."""

    def speech_done(self, model: str, first_audio_s: float | None, total_s: float,
                    busy_s: float, audio_s: float, arm: str = STABLE) -> None: ...


class Utterance:
    """One request whose text arrives in pieces (Wyoming's streaming synthesis), spoken piece
    by piece on one lease: every piece comes from the generation the first one started on, at
    one sample rate, as a streamed HTTP request does. Use as ``async with``.

    The lease's slot is set aside between pieces and taken again, in line, for the next one,
    so streams that run at once take turns piece by piece: with more streams than slots, each
    stream's first audio waits for one piece of the others, not for their whole utterances.
    Pieces after the first are marked ``continues``: only the first may be cut for a fast start.

    Together the pieces may be at most the config's ``max_text_length``, as one text would.
    """

    def __init__(self, service: SpeechService, wanted: SpeechInput,
                 lease: Lease[SpeechRequest], stack: AsyncExitStack,
                 arrived: float | None = None) -> None:
        self.provenance = _provenance(lease)
        self._service = service
        self._wanted = wanted
        self._lease = lease
        self._stack = stack
        self._length = 0
        self._spoken = False  # a piece was sent to the backend: the next ones continue it
        self._check = AudioCheck(lease.gen)  # the pieces are one stream
        # For the metrics, as one streamed request: the time spent speaking (not the waits
        # for the next piece of text), the first audio, and the audio's length.
        self._arrived = time.monotonic() if arrived is None else arrived
        self._first: float | None = None
        self._busy = 0.0
        self._audio = 0.0

    async def speak(self, text: str) -> AsyncIterator[Audio]:
        """Chunks of one piece as the backend makes them; the piece is checked like a request
        (text, voice, language, speed) against the snapshot the utterance started under."""
        limit = self._lease.serving.config.max_text_length
        self._length += len(text.strip())
        if self._length > limit:
            raise BadRequest(f"the streamed text passed {limit} characters, the limit",
                             code=Code.TEXT_TOO_LONG,
                             details={"length": self._length, "limit": limit})
        request = _build_request(replace(self._wanted, text=text), self._lease.serving,
                                 self._lease.gen)
        if self._spoken:
            request = replace(request, continues=True)
        self._spoken = True
        await self._lease.resume()  # a slot for this piece (the first piece holds it already)
        self._service._active[id(request)] = request
        try:
            # Timed as a streamed request's chunks are; the pieces add up in _piece_done.
            async for chunk in _measured(
                    self._lease.stream(self._check.stream(request,
                                                          self._lease.deadline_s(request)),
                                       self._service.registry.inference, request.cancelled),
                    self._arrived, self._piece_done):
                yield chunk
        finally:
            self._service._active.pop(id(request), None)
            self._lease.set_aside()  # back when the backend call has returned

    def _piece_done(self, first_audio_s: float, total_s: float, busy_s: float,
                    audio_s: float, error: BaseException | None) -> None:
        if self._first is None:
            self._first = first_audio_s
        self._busy += busy_s
        self._audio += audio_s

    async def aclose(self) -> None:
        first = self._first
        self._first = None  # counted once, however often it is closed
        if first is not None:  # in the metrics, and in its canary arm's measurements
            self._service._done(self._lease.arm, self._lease.gen.model.name)(
                first, time.monotonic() - self._arrived, self._busy, self._audio, None)
        await self._stack.aclose()

    async def __aenter__(self) -> Utterance:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SpeechService:
    def __init__(self, registry: ModelRegistry, observer: SpeechObserver | None = None,
                 arms: Arms | None = None) -> None:
        self.registry = registry
        self.observer = observer
        self.arms = arms or Arms()
        # Syntheses in progress, by identity (equal requests are still separate requests).
        self._active: dict[int, SpeechRequest] = {}

    async def synthesize(self, wanted: SpeechInput) -> SpeechResult:
        return await self.synthesize_parts([wanted])

    async def synthesize_parts(self, parts: Sequence[SpeechInput],
                               pause_s: float = 0.25) -> SpeechResult:
        """Several pieces (say, narrator and character) on one lease, joined with pauses.

        One lease means one generation: a swap between two pieces cannot mix models.
        """
        models = {p.model for p in parts}
        if not parts or len(models) != 1:
            raise BadRequest("parts of one utterance must name one model", code=Code.BAD_REQUEST)
        return await self.arms.serve(lambda arm: self._synthesize_on(arm, parts, pause_s))

    async def _synthesize_on(self, arm: str, parts: Sequence[SpeechInput],
                             pause_s: float) -> SpeechResult:
        def prepare(serving: Serving, gen: Generation) -> list[SpeechRequest]:
            return [_build_request(p, serving, gen) for p in parts]

        arrived = time.monotonic()
        async with self.registry.lease(parts[0].model, prepare, arm) as lease:
            started = time.monotonic()
            pieces = []
            check = AudioCheck(lease.gen)
            for request in lease.value:
                self._active[id(request)] = request
                try:
                    pieces.append(await lease.run(
                        check.synthesize(request, lease.deadline_s(request)),
                        self.registry.inference, request.cancelled))
                except asyncio.CancelledError:  # the client went away: stop the backend
                    request.cancelled.set()
                    raise
                finally:
                    self._active.pop(id(request), None)
                if request.cancelled.is_set():
                    raise HostError("the generation was cancelled", code=Code.CANCELLED,
                                    status=409)
            audio = _join(pieces, lease.gen.sample_rate, pause_s)
            now = time.monotonic()
            self._done(lease.arm, lease.gen.model.name)(now - arrived, now - arrived,
                                                         now - started, audio.duration, None)
            return SpeechResult(audio, _provenance(lease))

    async def stream(self, wanted: SpeechInput) -> SpeechStream:
        """Chunks as the backend makes them; the lease lasts until the stream is closed.

        Returns once the first chunk is ready (or the stream turned out empty), so a request
        that is refused, cannot be queued or fails before its first audio is still answered
        as an error before any byte is sent; a canary's is served by the stable arm instead,
        and the stream's provenance names the arm that did.
        """
        return await self.arms.serve(lambda arm: self._stream_on(arm, wanted))

    async def _stream_on(self, arm: str, wanted: SpeechInput) -> SpeechStream:
        arrived = time.monotonic()
        stack = AsyncExitStack()
        try:
            lease = await stack.enter_async_context(self.registry.lease(
                wanted.model, lambda s, g: _build_request(wanted, s, g), arm))
            request = lease.value
            self._active[id(request)] = request
            stack.callback(self._active.pop, id(request), None)
            checked = AudioCheck(lease.gen).stream(request, lease.deadline_s(request))
            chunks = _measured(lease.stream(checked, self.registry.inference, request.cancelled),
                               arrived, self._done(lease.arm, lease.gen.model.name))
            first = await anext(chunks, None)
        except BaseException:
            await stack.aclose()
            raise
        return SpeechStream(_provenance(lease), _after(first, chunks), request, stack)

    def _done(self, arm: str, model: str) -> Callable[..., None]:
        """What to tell when a request on ``arm`` has produced its audio (``error``: a
        failure after its first audio, which no retry can hide)."""
        def done(first_audio_s: float, total_s: float, busy_s: float, audio_s: float,
                 error: BaseException | None) -> None:
            if self.observer is not None:
                self.observer.speech_done(model, first_audio_s, total_s, busy_s, audio_s, arm)
            if error is None:
                self.arms.served(arm, first_audio_s, busy_s, audio_s)
            elif server_side(error):
                self.arms.failed(arm)
        return done

    async def utterance(self, wanted: SpeechInput) -> Utterance:
        """A lease for text that will come in pieces; ``wanted.text`` is the first piece, checked
        before the request queues. Returns once the request has started, like ``stream``."""
        arrived = time.monotonic()
        stack = AsyncExitStack()
        # During a canary it takes an arm like any request; its text comes later, so a
        # failure cannot be retried on the stable arm unheard, as a stream's first chunk is.
        lease = await stack.enter_async_context(self.registry.lease(
            wanted.model, lambda s, g: _build_request(wanted, s, g), self.arms.choose()))
        return Utterance(self, wanted, lease, stack, arrived)

    async def silence(self, model: str | None = None) -> SpeechResult:
        """Short silence as if ``model`` had spoken it, with that model's provenance.

        For clients that send text with nothing to speak and expect audio back (Open WebUI,
        Home Assistant's key check speaks "."). The model is resolved exactly as for speech,
        so an unknown or unloaded model is still refused; no backend runs.
        """
        serving, gen = self.registry.resolve(model)
        samples = np.zeros(int(gen.sample_rate * SILENCE_S), dtype=np.float32)
        return SpeechResult(Audio(samples, gen.sample_rate),
                            Provenance(serving.commit, gen.model.name, gen.number,
                                       gen.sample_rate))

    def cancel_all(self) -> int:
        """Ask every synthesis in progress to stop (between chunks); how many there were."""
        active = list(self._active.values())
        for request in active:
            request.cancelled.set()
        return len(active)


async def _measured(chunks: AsyncIterator[Audio], arrived: float,
                    done: Callable[..., None]) -> AsyncIterator[Audio]:
    """The same chunks, timed: first audio, the whole, and the audio's length. A stream that
    never produced audio is not told here: its failure is the caller's to count."""
    started = time.monotonic()
    first: float | None = None
    audio = 0.0
    error: BaseException | None = None
    try:
        async for chunk in chunks:
            if first is None:
                first = time.monotonic() - arrived
            audio += chunk.duration
            yield chunk
    except Exception as exc:
        error = exc
        raise
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        if first is not None:
            now = time.monotonic()
            done(first, now - arrived, now - started, audio, error)


async def _after(first: Audio | None, rest: AsyncIterator[Audio]) -> AsyncIterator[Audio]:
    """``first`` (read already, before the status line), then the rest."""
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def _join(pieces: list[Audio], rate: int, pause_s: float) -> Audio:
    if len(pieces) == 1:
        return pieces[0]
    gap = np.zeros(int(rate * pause_s), dtype=np.float32)
    joined: list[np.ndarray] = []
    for i, piece in enumerate(pieces):
        if i:
            joined.append(gap)
        joined.append(np.asarray(piece.samples, dtype=np.float32))
    return Audio(np.concatenate(joined), rate)


def _provenance(lease: Lease[Any]) -> Provenance:
    gen = lease.gen
    requests = lease.value if isinstance(lease.value, list) else [lease.value]
    samples = dict.fromkeys(r.sample for r in requests
                            if isinstance(r, SpeechRequest) and r.sample is not None)
    voice = ", ".join(f"{s.name}; sha256={s.sha256[:12]}" for s in samples) or None
    return Provenance(lease.serving.commit, gen.model.name, gen.number, gen.sample_rate,
                      lease.arm, voice)


def _build_request(wanted: SpeechInput, serving: Serving, gen: Generation) -> SpeechRequest:
    """The backend's request, checked against the snapshot it will run under.

    Defaults come from the applied config, not the generation's load-time definition: a
    runtime-only change (default voice, speed, language) applies to the next request.
    """
    config = serving.config
    model = config.models[gen.model.name]
    text = wanted.text.strip() if isinstance(wanted.text, str) else ""
    if not text:
        raise BadRequest("text is empty", code=Code.EMPTY_TEXT)
    if len(text) > config.max_text_length:
        raise BadRequest(
            f"text is {len(text)} characters; the limit is {config.max_text_length}",
            code=Code.TEXT_TOO_LONG,
            details={"length": len(text), "limit": config.max_text_length},
        )
    if wanted.phonemes and not gen.capabilities.phoneme_input:
        raise BadRequest(f"model {model.name} takes text, not phonemes", code=Code.NOT_CAPABLE)
    voice = wanted.voice or model.default_voice
    voices = gen.voices  # asked of the backend once per request
    sample = serving.sample_for(gen, voice)  # a voice of the library
    problem = (voice_problem(voice, voices, gen.capabilities.voice_blending)
               if voice and sample is None else None)
    if problem is not None:
        raise NotFound(
            f"model {model.name} {problem}",
            code=Code.UNKNOWN_VOICE,
            details={"voices": serving.offered(gen, voices)[:100]},  # the library's too
        )
    asked = wanted.language or model.default_language or config.default_language
    language = match_language(asked, gen.capabilities.languages)
    if language is None:
        raise BadRequest(
            f"model {model.name} does not speak {asked[:64]!r}",
            code=Code.UNSUPPORTED_LANGUAGE,
            details={"languages": list(gen.capabilities.languages)},
        )
    lo, hi = SPEED_RANGE
    speed = number_in(model.default_speed if wanted.speed is None else wanted.speed, lo, hi)
    if speed is None:
        raise BadRequest(f"speed must be a number from {lo} to {hi}", code=Code.BAD_SPEED)
    # Checked last, so that "nothing to speak" means everything else about the request is
    # valid: a route may then answer it with silence instead of an error.
    if not wanted.phonemes and not has_speakable(text):  # phonemes: the backend's to judge
        raise BadRequest("the text has nothing to speak (no letter or digit)",
                         code=Code.NOTHING_TO_SPEAK)
    return SpeechRequest(text=text, voice=voice, language=language, speed=speed,
                         options=dict(wanted.options), phonemes=wanted.phonemes,
                         sample=sample)
