"""Audio encodings for clients: wav, pcm, mp3, opus, aac, flac, in-process through PyAV.

No encoder process is spawned per request: PyAV binds FFmpeg's libraries (bundled in its
wheel). Every format can stream: ``encode()`` returns the bytes ready so far, ``finish()`` the
rest, so a response can be sent as sentences complete.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import to_pcm16, to_wav, wav_stream_header
from ..backend import Audio
from ..errors import BadRequest, Code


@dataclass(frozen=True)
class Format:
    name: str
    content_type: str
    container: str | None  # None: written by hand (wav, pcm)
    codec: str | None
    rate: int | None  # forced output rate, else the model's


FORMATS = {
    "wav": Format("wav", "audio/wav", None, None, None),
    # OpenAI's pcm: raw 16-bit little-endian mono at 24 kHz, whatever the model's rate.
    "pcm": Format("pcm", "audio/pcm", None, None, 24000),
    "mp3": Format("mp3", "audio/mpeg", "mp3", "libmp3lame", None),
    "opus": Format("opus", "audio/ogg", "ogg", "libopus", 48000),
    "aac": Format("aac", "audio/aac", "adts", "aac", None),
    "flac": Format("flac", "audio/flac", "flac", "flac", None),
}


def get_format(name: str) -> Format:
    fmt = FORMATS.get(name)
    if fmt is None:
        raise BadRequest(f"unsupported response_format {name!r}; supported: "
                         f"{', '.join(FORMATS)}", code=Code.UNSUPPORTED_FORMAT)
    return fmt


class _Sink:
    """A write-only file for PyAV: collects what the muxer writes until it is taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class StreamEncoder:
    def __init__(self, fmt: Format, sample_rate: int) -> None:
        self.format = fmt
        self.sample_rate = sample_rate
        self._started = False
        self._resampler = None
        if fmt.container is None:
            if fmt.rate and fmt.rate != sample_rate:
                import av

                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=fmt.rate)
            return
        import av

        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=fmt.container)
        self._stream = self._container.add_stream(fmt.codec, rate=fmt.rate or sample_rate,
                                                  layout="mono")

    def encode(self, audio: Audio) -> bytes:
        if audio.sample_rate != self.sample_rate:
            raise ValueError("all chunks of one stream share one sample rate")
        if self.format.container is None:
            return self._raw(audio.samples)
        for packet in self._stream.encode(self._frame(audio.samples)):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self.format.container is None:
            tail = b""
            if self._resampler is not None:
                tail = b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(None))
            return (b"" if self._started else self._header()) + tail
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def _raw(self, samples: np.ndarray) -> bytes:
        head = b"" if self._started else self._header()
        self._started = True
        if self._resampler is None:
            return head + to_pcm16(samples)
        frames = self._resampler.resample(self._frame(samples))
        return head + b"".join(f.to_ndarray().tobytes() for f in frames)

    def _header(self) -> bytes:
        return wav_stream_header(self.sample_rate) if self.format.name == "wav" else b""

    def _frame(self, samples: np.ndarray):  # type: ignore[no-untyped-def]
        import av

        pcm = np.frombuffer(to_pcm16(samples), dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        return frame


def encode(audio: Audio, fmt: Format) -> bytes:
    """A whole file. WAV gets exact sizes in its header (players and some clients need them)."""
    if fmt.name == "wav":
        return to_wav(audio)
    encoder = StreamEncoder(fmt, audio.sample_rate)
    return encoder.encode(audio) + encoder.finish()
