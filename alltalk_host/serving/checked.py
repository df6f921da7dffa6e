"""Backend audio as it enters the host: every chunk checked against the contract's sample format.

A backend's ``synthesize()`` and ``stream()`` run in threads of the host; the calls the speech
service hands to a lease are made here (an instance in a worker process within the lease's
deadline, ``synthesize_within`` / ``stream_within``), so the check runs on that thread, beside
the backend, before any front-end encodes a sample. A chunk that breaks the format (integer PCM,
samples past full scale, NaN or infinity, another sample rate: ``audio.chunk_problem``) ends
the request with ``BadAudio`` (502 ``bad_audio``) naming the model and its backend; in a stream
after the first chunk that is an aborted transfer, as any failure of a started stream is.
float64 and float16 samples are converted to float32. A stream that turns silent after its
first chunk is logged once, never refused: a pause is not an error, a model that stopped
speaking is worth a look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from ..audio import SILENCE_RMS, as_float32, chunk_problem, rms_of
from ..backend import Audio, Backend, SpeechRequest
from ..errors import BadAudio
from ..workers import WorkerBackend
from .generation import Generation

log = logging.getLogger(__name__)

# A silent chunk shorter than this is a pause, not a model that stopped speaking.
SILENT_CHUNK_S = 0.25


class AudioCheck:
    """The checks of one request's audio: a whole synthesis, one stream, or the pieces of one
    utterance (which count as one stream: "after the first chunk" means after its first)."""

    def __init__(self, gen: Generation) -> None:
        self.rate = gen.sample_rate
        self.model, self.backend = gen.model.name, gen.model.backend
        self.source = f"model {self.model} (backend {self.backend})"
        self._chunks = 0
        self._told_silence = False

    def synthesize(self, request: SpeechRequest,
                   deadline_s: float | None = None) -> Callable[[Backend], Audio]:
        """``backend.synthesize(request)``, its audio checked; in a worker process within
        ``deadline_s`` (when given)."""
        def call(backend: Backend) -> Audio:
            if deadline_s is not None and isinstance(backend, WorkerBackend):
                return self._check(backend.synthesize_within(request, deadline_s), "")
            return self._check(backend.synthesize(request), "")
        return call

    def stream(self, request: SpeechRequest,
               deadline_s: float | None = None) -> Callable[[Backend], Iterator[Audio]]:
        """``backend.stream(request)``, each chunk checked as it comes; in a worker process
        each chunk within ``deadline_s`` (when given)."""
        def chunks(backend: Backend) -> Iterator[Audio]:
            inner = (backend.stream_within(request, deadline_s)
                     if deadline_s is not None and isinstance(backend, WorkerBackend)
                     else backend.stream(request))
            try:
                for chunk in inner:
                    self._chunks += 1
                    audio = self._check(chunk, f" in chunk {self._chunks}")
                    if self._chunks > 1:
                        self._silence(audio)
                    yield audio
            finally:
                # Stops the backend's generator now (a bad chunk, a consumer gone), not
                # whenever it is collected: it may hold a device's memory until it ends.
                close = getattr(inner, "close", None)
                if close is not None:
                    close()
        return chunks

    def _check(self, audio: object, where: str) -> Audio:
        problem = chunk_problem(audio, self.rate)
        if problem is not None:
            message = f"{self.source} returned bad audio{where}: {problem}"
            log.warning("%s", message)
            raise BadAudio(message, details={"model": self.model, "backend": self.backend,
                                             "problem": problem})
        return as_float32(audio)  # type: ignore[arg-type]  # an Audio: chunk_problem said so

    def _silence(self, audio: Audio) -> None:
        if not self._told_silence and silent(audio):
            self._told_silence = True  # once per stream: a silent model would flood the log
            log.warning("%s: stream chunk %d (%.2f s) is silent after the first; the model "
                        "may have stopped speaking (logged once per stream)",
                        self.source, self._chunks, audio.duration)


def silent(audio: Audio) -> bool:
    """A chunk long enough not to be a pause, and silent."""
    return audio.duration >= SILENT_CHUNK_S and rms_of(audio.samples) < SILENCE_RMS


def first_silent(chunks: Sequence[Audio]) -> int | None:
    """The number (from 1) of the first silent chunk after the first, as the host finds it in
    a stream; None when there is none."""
    return next((i for i, chunk in enumerate(chunks[1:], 2) if silent(chunk)), None)
