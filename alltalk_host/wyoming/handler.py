"""One Wyoming connection: its events in, speech (or an ``error``) out, one request at a time.

Event order follows wyoming-piper's. ``synthesize`` answers ``audio-start``, ``audio-chunk``s of
1024 samples and ``audio-stop``. A stream (``synthesize-start``, ``synthesize-chunk``s,
``synthesize-stop``) answers each sentence as it completes with its own ``audio-start`` ...
``audio-stop``, then ``synthesize-stopped``; Home Assistant sends the whole text once more as a
``synthesize`` inside the stream, which is ignored.

A request that fails answers an ``error`` event (its text and the host's error code), then
the event that ends the request (``audio-stop``, or ``synthesize-stopped`` at the end of a
stream): a client that does not read ``error`` events (Home Assistant's) ends the request
instead of waiting, and the connection stays usable for the next one. Every request is
logged with the commit and model generation that served it; the protocol has no headers.

A stream takes a model slot for each sentence and gives it back in between (``Utterance``), so
streams running at once take turns sentence by sentence, and a stream waiting for text holds no
slot; it keeps its model's generation from its first sentence to its last. Events are read
within the limits by ``connection.py``. A stream that has started speaking and then goes quiet
for ``wyoming_idle_timeout_s`` ends with an ``error`` (``idle_timeout``) and
``synthesize-stopped``, the generation it kept let go, and the connection closes.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from ..audio import to_pcm16
from ..backend import Audio
from ..errors import BadRequest, Code, HostError
from ..host import Host
from ..serving.speech import Provenance, SpeechInput, Utterance
from ..text import has_speakable
from .connection import LimitedConnection
from .events import text_of, voice_of
from .sentences import SentenceBuffer
from .voices import choose, describe

log = logging.getLogger(__name__)

# wyoming-piper's default --samples-per-chunk.
SAMPLES_PER_CHUNK = 1024
WIDTH = 2  # 16-bit PCM
CHANNELS = 1


@dataclass
class _Request:
    """What the log line of one request says."""

    kind: str
    started: float = field(default_factory=time.monotonic)
    provenance: Provenance | None = None
    first_audio: float | None = None
    audio_s: float = 0.0
    sentences: int = 0


@dataclass
class _Stream:
    """A streaming request between ``synthesize-start`` and ``synthesize-stop``."""

    voice: SynthesizeVoice | None
    sentences: SentenceBuffer
    request: _Request = field(default_factory=lambda: _Request("stream"))
    text: list[str] = field(default_factory=list)
    utterance: Utterance | None = None
    failed: bool = False


class SpeechHandler(LimitedConnection):
    def __init__(self, reader: Any, writer: Any, host: Host) -> None:
        super().__init__(reader, writer, host.options.limits)
        self.host = host
        self._stream: _Stream | None = None

    def holding(self) -> bool:
        stream = self._stream
        return stream is not None and stream.utterance is not None and not stream.failed

    async def went_quiet(self, idle_s: float) -> None:
        stream, self._stream = self._stream, None
        assert stream is not None  # holding() said so
        await self._stream_failed(stream, BadRequest(
            f"the stream sent nothing for {idle_s:g} s while holding the model "
            "(wyoming_idle_timeout_s)", code=Code.IDLE_TIMEOUT))
        await self.write_event(SynthesizeStopped().event())

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.host).event())
        elif Synthesize.is_type(event.type):
            if self._stream is None:  # inside a stream it repeats the text: ignored
                await self._synthesize(event)
        elif SynthesizeStart.is_type(event.type):
            await self._start_stream(event)
        elif SynthesizeChunk.is_type(event.type):
            await self._stream_chunk(event)
        elif SynthesizeStop.is_type(event.type):
            await self._stop_stream()
        # Any other event is not for a TTS server: ignored, as wyoming-piper does.
        return True

    async def disconnect(self) -> None:
        if self._stream is not None and self._stream.utterance is not None:
            await self._stream.utterance.aclose()  # gives the lease back
            self._stream = None

    # --- synthesize: the whole text at once ------------------------------------------------

    async def _synthesize(self, event: Event) -> None:
        request = _Request("synthesize")
        try:
            text, voice = text_of(event.data), voice_of(event.data)
            stream = await self.host.speech.stream(self._input(text, voice))
        except HostError as exc:
            await self._fail(request, exc)
            await self.write_event(AudioStop().event())
            return
        except Exception as exc:  # noqa: BLE001 - answered, the details go to the log
            await self._crash(request, exc)
            await self.write_event(AudioStop().event())
            return
        request.provenance = stream.provenance
        async with stream:
            try:
                # The first chunk before audio-start: what fails before any audio (an
                # option the backend refuses) gets no audio-start.
                first = await anext(stream.chunks, None)
                await self._audio_start(request.provenance)
                if first is not None:
                    await self._send(request, first)
                async for chunk in stream.chunks:
                    await self._send(request, chunk)
            except HostError as exc:  # after the first audio: a drain deadline, a backend error
                await self._fail(request, exc)
            except ConnectionError:
                raise  # the client went away: nobody to answer
            except Exception as exc:  # noqa: BLE001 - answered, the details go to the log
                await self._crash(request, exc)
            else:
                self._served(request)
            await self.write_event(AudioStop().event())

    # --- streaming synthesis: text as a language model writes it ---------------------------

    async def _start_stream(self, event: Event) -> None:
        if self._stream is not None:
            # A client that starts again without stopping: the unfinished stream ends here.
            await self._stop_stream()
        try:
            voice = voice_of(event.data)
            # The text limit is the config's at the start; the splitter never reads more.
            limit = self.host.registry.require_serving().config.max_text_length
        except HostError as exc:  # the stream is refused at once; its text is dropped
            self._stream = _Stream(voice=None, sentences=SentenceBuffer())
            await self._stream_failed(self._stream, exc)
            return
        self._stream = _Stream(voice=voice, sentences=SentenceBuffer(limit))

    async def _stream_chunk(self, event: Event) -> None:
        stream = self._stream
        if stream is None:
            await self._refuse("synthesize-chunk without synthesize-start")
            return
        if stream.failed:
            return  # after an error the rest is dropped
        try:
            text = text_of(event.data)
            sentences = stream.sentences.add(text)
        except HostError as exc:
            if exc.code == Code.TEXT_TOO_LONG:  # what came within the limit is said first
                for sentence in stream.sentences.finish():
                    await self._speak(stream, sentence)
            if not stream.failed:
                await self._stream_failed(stream, exc)
            return
        stream.text.append(text)
        for sentence in sentences:
            await self._speak(stream, sentence)

    async def _stop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            await self._refuse("synthesize-stop without synthesize-start")
            await self.write_event(SynthesizeStopped().event())
            return
        try:
            for sentence in stream.sentences.finish():
                await self._speak(stream, sentence)
            if stream.utterance is None and not stream.failed:
                await self._nothing_spoken(stream)
        finally:
            if stream.utterance is not None:
                await stream.utterance.aclose()
        if not stream.failed:
            self._served(stream.request)
        await self.write_event(SynthesizeStopped().event())

    async def _speak(self, stream: _Stream, sentence: str) -> None:
        """One sentence on the stream's lease (taken with its first speakable sentence), with
        a slot for this sentence only."""
        if stream.failed or not has_speakable(sentence):
            return  # after an error the rest is dropped; "..." between sentences is no error
        try:
            if stream.utterance is None:
                choice = self._input(sentence, stream.voice)
                stream.utterance = await self.host.speech.utterance(choice)
                stream.request.provenance = stream.utterance.provenance
            async with aclosing(stream.utterance.speak(sentence)) as chunks:
                # Checked and started before its audio-start (see _synthesize).
                first = await anext(chunks, None)
                await self._audio_start(stream.utterance.provenance)
                stream.request.sentences += 1
                try:
                    if first is not None:
                        await self._send(stream.request, first)
                    async for chunk in chunks:
                        await self._send(stream.request, chunk)
                finally:
                    await self.write_event(AudioStop().event())
        except HostError as exc:
            await self._stream_failed(stream, exc)
        except ConnectionError:
            raise  # the client went away: nobody to answer
        except Exception as exc:  # noqa: BLE001 - answered, the details go to the log
            stream.failed = True
            await self._crash(stream.request, exc)

    async def _nothing_spoken(self, stream: _Stream) -> None:
        """No sentence had anything to speak: the core says why (empty text, nothing to
        speak, or a voice it refuses), checking the whole text before it would queue."""
        try:
            utterance = await self.host.speech.utterance(
                self._input("".join(stream.text), stream.voice))
        except HostError as exc:
            await self._stream_failed(stream, exc)
        else:  # cannot happen (no sentence was speakable); never hold a lease for nothing
            await utterance.aclose()

    async def _stream_failed(self, stream: _Stream, exc: HostError) -> None:
        stream.failed = True
        if stream.utterance is not None:
            await stream.utterance.aclose()  # the lease goes back now, not at the stop
        await self._fail(stream.request, exc)

    # --- shared ----------------------------------------------------------------------------

    def _input(self, text: str, voice: SynthesizeVoice | None) -> SpeechInput:
        choice = choose(self.host, voice)
        return SpeechInput(text=text, model=choice.model, voice=choice.voice,
                           language=choice.language)

    async def _audio_start(self, provenance: Provenance) -> None:
        await self.write_event(
            AudioStart(rate=provenance.sample_rate, width=WIDTH, channels=CHANNELS).event())

    async def _send(self, request: _Request, chunk: Audio) -> None:
        if request.first_audio is None:
            request.first_audio = time.monotonic()
        request.audio_s += chunk.duration
        pcm = to_pcm16(chunk.samples)
        step = SAMPLES_PER_CHUNK * WIDTH * CHANNELS
        for offset in range(0, len(pcm), step):
            await self.write_event(AudioChunk(rate=chunk.sample_rate, width=WIDTH,
                                              channels=CHANNELS,
                                              audio=pcm[offset:offset + step]).event())

    async def _refuse(self, message: str) -> None:
        await self._fail(_Request("event"), BadRequest(message, code=Code.BAD_REQUEST))

    async def _fail(self, request: _Request, exc: HostError) -> None:
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(level, "wyoming %s from %s failed%s: %s (%s)", request.kind, self.peer,
                _served_by(request), exc.message, exc.code)
        # Positional: the code is the host's (a Code) or a plugin's own, passed on as it is.
        await self.write_event(Error(exc.message, exc.code).event())

    async def _crash(self, request: _Request, exc: Exception) -> None:
        log.error("wyoming %s from %s failed%s", request.kind, self.peer, _served_by(request),
                  exc_info=exc)
        await self.write_event(Error("internal error; the server log has the details",
                                     code=Code.INTERNAL_ERROR).event())

    def _served(self, request: _Request) -> None:
        now = time.monotonic()
        first = f"{request.first_audio - request.started:.3f} s" if request.first_audio else "-"
        sentences = f", {request.sentences} sentences" if request.kind == "stream" else ""
        log.info("wyoming %s from %s%s: %.2f s of audio%s, first audio after %s, done in "
                 "%.3f s", request.kind, self.peer, _served_by(request), request.audio_s,
                 sentences, first, now - request.started)


def _served_by(request: _Request) -> str:
    p = request.provenance
    return f" ({p.model_label}, commit {p.commit[:10]})" if p else ""
