"""libespeak-ng through ctypes, one private copy of the library per engine.

espeak-ng keeps all of its state in C globals (the voice, the parameters, the synth callback,
the text decoder) and is not thread-safe. Other code in this process may use the same library
(the onnx plugin phonemises with it), and a model may have several instances. So each engine
loads its own copy: the shared object is copied to a temporary file and opened from there,
which gives it its own globals (the dynamic loader keys loaded objects by file, and the copy
is a new file; it is removed at once, the mapping stays). Nothing else in the process can then
change this engine's voice under it, and ``instances = 2`` really runs two at once. unload()
terminates espeak and closes the copy, so a load/unload cycle returns its memory.

The library and its data come from the espeakng-loader wheel (espeak-ng 1.52.0, GPL-3.0-or-
later): nothing is downloaded at run time.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # never call exit() on a data error
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
RATE, VOLUME, PITCH, RANGE, WORDGAP = 1, 2, 3, 4, 7
RATE_MIN = 80  # espeak-ng refuses to speak slower (words per minute)
# Audio comes to the callback in blocks of this many ms: fewer, larger blocks than espeak's
# default made a 2000-character text 13 % faster (tools/bench_espeak.py); a cancelled request
# still stops within one block (a few ms of work).
BLOCK_MS = 500

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.c_void_p)


class _Voice(ctypes.Structure):
    # languages is a run of bytes with NULs inside: an address, not a C string.
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p),
                ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte),
                ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte),
                ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


def library_files() -> tuple[Path, Path]:
    """The shared library and the data folder that espeakng-loader ships."""
    import espeakng_loader

    return Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())


def variants(data: Path) -> list[str]:
    """The voice variants (m1..m7, f1..f5, klatt, whisper, ...): files in voices/!v."""
    folder = data / "voices" / "!v"
    return sorted((p.name for p in folder.iterdir() if p.is_file()), key=str.lower)


def _dictionary(data: Path, identifier: str) -> str:
    """The dictionary a voice file uses: its ``dictionary`` line, else its first language."""
    try:
        lines = (data / "lang" / identifier).read_text(encoding="utf-8",
                                                       errors="replace").splitlines()
    except OSError:
        return identifier.rsplit("/", 1)[-1].split("-")[0].lower()
    words = [line.split() for line in lines if line.strip()]
    for key in ("dictionary", "language"):
        for parts in words:
            if parts[0] == key and len(parts) > 1:
                return parts[1].split("-")[0].lower()
    return identifier.rsplit("/", 1)[-1].split("-")[0].lower()


class Engine:
    """One private espeak-ng: list languages, speak text, close."""

    def __init__(self, library: Path, data: Path) -> None:
        self.data = data
        self._lock = threading.Lock()  # one synthesis at a time in this copy
        with tempfile.TemporaryDirectory(prefix="alltalk-espeak-") as tmp:
            private = Path(tmp) / f"libespeak-ng-{os.getpid()}-{id(self)}{library.suffix}"
            shutil.copyfile(library, private)
            self._lib = ctypes.CDLL(str(private))
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, BLOCK_MS,
                                                 str(data).encode(), _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            self.close()
            raise RuntimeError(f"espeak-ng did not initialise (data folder {data})")
        self._chunks: list[np.ndarray] = []
        self._stop: Callable[[], bool] = lambda: False
        # Kept referenced: espeak holds a pointer to it.
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def languages(self) -> dict[str, str]:
        """Language code -> the voice that speaks it (its identifier, e.g. gmw/en-US), for the
        languages whose dictionary the data folder has (espeakng-loader 0.2.4 lacks a few:
        fo, kaa, xex; espeak would speak silence in them)."""
        found: dict[str, tuple[int, str]] = {}
        voices = self._lib.espeak_ListVoices(None)
        i = 0
        while voices[i]:
            voice = voices[i].contents
            identifier = voice.identifier.decode()
            # A run of (priority byte, NUL-terminated code) pairs, ended by a zero byte: read
            # pair by pair, never past the end (a fixed-size read can reach unmapped memory).
            at = voice.languages
            while (priority := ctypes.c_ubyte.from_address(at).value) != 0:
                raw = ctypes.string_at(at + 1)
                code = raw.decode(errors="replace").lower()
                if code and (code not in found or priority < found[code][0]):
                    found[code] = (priority, identifier)
                at += len(raw) + 2
            i += 1
        return {code: identifier for code, (_, identifier) in sorted(found.items())
                if (self.data / f"{_dictionary(self.data, identifier)}_dict").is_file()}

    def speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int,
              volume: int, stop: Callable[[], bool]) -> np.ndarray:
        """16-bit samples of ``text`` in ``voice`` ("gmw/en-US+f3"); ``stop()`` is asked as
        audio comes and ends the synthesis early when it says so."""
        lib = self._lib
        with self._lock:
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            for parameter, value in ((RATE, rate), (PITCH, pitch), (RANGE, pitch_range),
                                     (VOLUME, volume)):
                lib.espeak_SetParameter(parameter, value, 0)
            self._chunks, self._stop = [], stop
            data = text.encode("utf-8", errors="replace").replace(b"\0", b" ")
            result = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                      None, None)
            chunks, self._chunks, self._stop = self._chunks, [], lambda: False
        if result != _EE_OK and not stop():
            raise RuntimeError(f"espeak_Synth failed with code {result}")
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def _collect(self, wav: ctypes._Pointer, count: int, events: int) -> int:
        if count > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 1 if self._stop() else 0  # 1 aborts the synthesis

    def close(self) -> None:
        """Terminate espeak and unmap this copy of the library."""
        lib, self._lib = self._lib, None
        if lib is None:
            return
        lib.espeak_Terminate()
        # ctypes never closes a library itself; this copy is ours alone, so closing it is
        # safe once nothing calls into it (the lock is free: unload runs after the last
        # request). Windows has no dlclose: the copy stays mapped there.
        import _ctypes

        close = getattr(_ctypes, "dlclose", None)
        if close is not None:
            close(lib._handle)
