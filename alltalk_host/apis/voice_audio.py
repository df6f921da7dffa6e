"""An uploaded voice sample, checked and made into the library's form: decoded in-process
(PyAV) with only known audio demuxers and decoders, within a time and a length limit, then
mono, 16-bit wav at the reference rate, leading and trailing silence trimmed, loudness
normalised. Each way an upload can be unusable is a 400 with code ``bad_voice_file`` and a
message that says what to do, and nothing is committed.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np

from ..audio import to_wav
from ..backend import Audio
from ..errors import BadRequest, Code

# Demuxers (PyAV's format names) and decoders an upload may use: the formats people record
# and share voice samples in. Anything else (video, playlists, images, exotic codecs) is
# refused before a frame is decoded.
DEMUXERS = {"wav", "flac", "mp3", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
DECODERS = {"pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8", "flac", "mp3",
            "mp3float", "vorbis", "opus", "aac"}
MAX_UPLOAD_BYTES = 20 * 2**20
DECODE_DEADLINE_S = 10.0
REFERENCE_RATE = 22050  # XTTS's reference rate (its conditioning resamples to it anyway)
MIN_SECONDS, MAX_SECONDS = 3.0, 30.0  # what XTTS clones well: a few seconds to half a minute
SILENCE_DBFS = -40.0  # quieter than this at the ends is trimmed; all of it: silence
TARGET_RMS_DBFS = -20.0
PEAK_LIMIT = 0.95
CLIPPED_SHARE = 0.5  # more than this share of (voiced) samples at full scale: clipped


@dataclass(frozen=True)
class Sample:
    wav: bytes  # mono 16-bit PCM wav at ``rate``
    rate: int
    seconds: float
    source_format: str  # the demuxer / decoder it came in, for the commit message


def _refuse(message: str) -> BadRequest:
    return BadRequest(message, code=Code.BAD_VOICE_FILE)


def normalise(data: bytes, rate: int = REFERENCE_RATE, min_s: float = MIN_SECONDS,
              max_s: float = MAX_SECONDS) -> Sample:
    """``data`` as a library sample, or BadRequest saying why it cannot be one."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise _refuse(f"the file is {len(data) / 2**20:.1f} MiB; at most "
                      f"{MAX_UPLOAD_BYTES // 2**20} MiB")
    samples, source = _decode(data, rate, max_s)
    voiced = _trim(samples, rate)
    if voiced is None:
        raise _refuse("the recording is silent: record a few seconds of clear speech")
    loud = np.abs(voiced) >= 0.999
    if loud.mean() > CLIPPED_SHARE:
        raise _refuse("the recording is clipped over most of its length: record it again "
                      "less loud")
    seconds = len(voiced) / rate
    if seconds < min_s:
        raise _refuse(f"the speech in it lasts {seconds:.1f} s; cloning needs at least "
                      f"{min_s:g} s")
    if seconds > max_s:
        raise _refuse(f"the speech in it lasts {seconds:.1f} s; at most {max_s:g} s (cut it "
                      "to the clearest part)")
    rms = float(np.sqrt(np.mean(voiced.astype(np.float64) ** 2)))
    gain = 10 ** (TARGET_RMS_DBFS / 20) / rms
    peak = float(np.max(np.abs(voiced))) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    out = (voiced * gain).astype(np.float32)
    return Sample(to_wav(Audio(out, rate)), rate, round(seconds, 2), source)


def _decode(data: bytes, rate: int, max_s: float) -> tuple[np.ndarray, str]:
    """Mono float samples at ``rate``; at most ``max_s`` plus 10 s of them are decoded (a
    longer file is refused once it passes that, a decompression bomb included)."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError):
        raise _refuse("the file is not audio this host can read (wav, flac, mp3, ogg/opus, "
                      "m4a)") from None
    with container:
        fmt = container.format.name
        if fmt not in DEMUXERS:
            raise _refuse(f"files of format {fmt[:40]!r} are not taken; upload wav, flac, "
                          "mp3, ogg/opus or m4a")
        streams = container.streams.audio
        if not streams:
            raise _refuse("the file has no audio")
        stream = streams[0]
        codec = stream.codec_context.name
        if codec not in DECODERS:
            raise _refuse(f"audio coded as {codec[:40]!r} is not taken; upload wav, flac, "
                          "mp3, ogg/opus or m4a")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        limit = int((max_s + 10) * rate)
        pieces: list[np.ndarray] = []
        total = 0
        started = time.monotonic()
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    piece = out.to_ndarray().reshape(-1)
                    pieces.append(piece)
                    total += len(piece)
                if total > limit:
                    raise _refuse(f"the recording is longer than {max_s + 10:g} s; at most "
                                  f"{max_s:g} s of speech are used")
                if time.monotonic() - started > DECODE_DEADLINE_S:
                    raise _refuse("the file took too long to decode")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, ValueError) as exc:
            raise _refuse(f"the audio is damaged: {str(exc)[:200]}") from None
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if not len(samples) or not np.isfinite(samples).all():
        raise _refuse("the file has no audio samples one can use")
    return np.clip(samples, -1.0, 1.0), f"{fmt.split(',')[0]}/{codec}"


def _trim(samples: np.ndarray, rate: int) -> np.ndarray | None:
    """``samples`` without the quiet at either end (20 ms frames under SILENCE_DBFS), keeping
    50 ms of it each side; None when all of it is quiet."""
    frame = max(1, rate // 50)
    usable = len(samples) // frame * frame
    if not usable:
        return None
    levels = np.sqrt(np.mean(samples[:usable].reshape(-1, frame).astype(np.float64) ** 2,
                             axis=1))
    loud = np.flatnonzero(levels > 10 ** (SILENCE_DBFS / 20))
    if not len(loud):
        return None
    pad = rate // 20
    return samples[max(0, loud[0] * frame - pad):min(len(samples), (loud[-1] + 1) * frame + pad)]
