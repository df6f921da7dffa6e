"""Reference voices for cloning: wav files in a folder, and their conditioning latents.

Latents are computed once per distinct audio content and cached in memory and on disk, keyed by
a hash of the file's bytes: a changed file gets new latents, an unchanged one never costs the
model again, and a new file in the folder is a voice on the next request. Latents belong to the
weights that computed them, so the disk cache has a folder per checkpoint
(``checkpoint.checkpoint_key``): a fine-tuned checkpoint under the same model name computes its own.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alltalk_host import BadRequest, Code

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MIN_SECONDS = 0.5  # Coqui itself refuses below 0.33 s; below half a second cloning is noise
SILENCE_RMS = 1e-3


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    computed: int = 0


def read_reference(path: Path) -> tuple[np.ndarray, int, bytes]:
    """Mono float32 samples, rate and raw bytes of a reference file; BadRequest if unusable."""
    import soundfile

    try:
        raw = path.read_bytes()
        samples, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
        raise BadRequest(f"voice file {path.name} cannot be read as audio: {exc}",
                         code=Code.BAD_VOICE_FILE) from None
    mono = samples.mean(axis=1)
    seconds = len(mono) / rate
    if seconds < MIN_SECONDS:
        raise BadRequest(f"voice file {path.name} is {seconds:.2f} s long; cloning needs at "
                         f"least {MIN_SECONDS} s of speech", code=Code.BAD_VOICE_FILE)
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    if not np.isfinite(rms) or rms < SILENCE_RMS:
        raise BadRequest(f"voice file {path.name} is silent (RMS {rms:.1e})",
                         code=Code.BAD_VOICE_FILE)
    return mono, rate, raw


class VoiceLibrary:
    """The voices folder of one model instance, with its latents cache."""

    def __init__(self, folder: Path | None, cache_dir: Path,
                 compute: Callable[[np.ndarray, int], tuple[Any, Any]],
                 save: Callable[[Any, Path], None], load: Callable[[Path], Any]) -> None:
        self.folder = folder
        self.cache_dir = cache_dir
        self._compute, self._save, self._load = compute, save, load
        self._memory: dict[str, tuple[Any, Any]] = {}  # content hash -> latents
        self._keys: dict[tuple[str, int, int], str] = {}  # (name, mtime, size) -> content hash
        self._listing: tuple[int, list[str]] | None = None  # (folder mtime, file names)
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def names(self) -> list[str]:
        """File names in the folder now: new files need no restart. The listing is redone only
        when the folder's modification time changes (a file added, removed or renamed)."""
        if self.folder is None:
            return []
        try:
            mtime = self.folder.stat().st_mtime_ns
        except OSError:
            return []
        with self._lock:
            if self._listing is not None and self._listing[0] == mtime:
                return list(self._listing[1])
        names = sorted(p.name for p in self.folder.iterdir()
                       if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        with self._lock:
            self._listing = (mtime, names)
        return list(names)

    def latents(self, name: str) -> tuple[Any, Any]:
        """The latents of voice file ``name`` of the folder."""
        if self.folder is None:
            raise BadRequest(f"unknown voice {name!r}", code=Code.UNKNOWN_VOICE)
        path = self.folder / name
        if path.parent != self.folder or not path.is_file():
            raise BadRequest(f"unknown voice {name!r}", code=Code.UNKNOWN_VOICE)
        return self.latents_of(path)

    def latents_of(self, path: Path) -> tuple[Any, Any]:
        """The latents of the reference recording at ``path`` (a file of the folder, or a
        sample of the config repo's voice library), cached by its content."""
        stat = path.stat()
        signature = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:  # an unchanged file is not even read again
            key = self._keys.get(signature)
            if key is not None and key in self._memory:
                self.stats.memory_hits += 1
                return self._memory[key]
        samples, rate, raw = read_reference(path)
        key = hashlib.sha256(raw).hexdigest()
        with self._lock:
            self._keys[signature] = key
            if key in self._memory:  # the same audio under another name or date
                self.stats.memory_hits += 1
                return self._memory[key]
        cached = self.cache_dir / f"{key}.pt"
        if cached.is_file():
            try:
                value = self._load(cached)
                self.stats.disk_hits += 1
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
                log.warning("latents cache %s is unreadable; recomputing", cached)
                value = None
        else:
            value = None
        if value is None:
            value = self._compute(samples, rate)
            self.stats.computed += 1
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            self._save(value, tmp)
            tmp.replace(cached)
        with self._lock:
            self._memory[key] = value
        return value

    def clear(self) -> None:
        with self._lock:
            self._memory.clear()
            self._keys.clear()
