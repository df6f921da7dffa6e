"""What crosses between the host and a backend worker: the deadlines, the messages, the errors.

A message is a tuple ``(kind, call_id, payload)``, sent as one length-prefixed pickle over a
socket (``multiprocessing.connection.Connection``). Measured on the 2-core test machine: a small
message makes a round trip in ~40 us; 12 s of 22 kHz audio (1.1 MB) takes ~1-2 ms through the
proxy, a synthesis call ~0.5 ms more than inline. Pickle protocol 5 with the arrays as raw
frames halved the bare transfer (2.1 -> 0.8 ms) but made no difference through the proxy
(thread hand-offs dominate), so messages stay plain pickles. Call id 0 is the instance itself
(load, unload, facts, logs); requests take ids from 1.

One message carries at most ``MAX_MESSAGE_BYTES``: a backend that returns more audio at once
(a runaway loop, a wrong sample rate by a factor of 1000) fails its call with ``BadAudio``
in the worker, before anything is sent; a message past it that reaches the host anyway (a
worker whose own checks were bypassed) ends the worker, which restarts, rather than the host
reading it into memory.

An error crosses as its parts, never as a live object the host might not be able to import:
a ``HostError`` is rebuilt as the same class with the same code, status and details; another
exception is unpickled only when its class's module is already imported in the host (so a
torch error never imports torch into the host), else it arrives as a ``RemoteError`` subclass
named like the original. Either way the child's traceback is its ``__cause__``.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backend import Backend, Capabilities, SpeechRequest
from ..config.workers import WorkerSettings
from ..errors import HostError

# 256 MiB: 23 minutes of 48 kHz float32 audio in one result or chunk; a longer text streams
# in chunks, each far smaller, and a non-stream result of that size is no request a host serves.
MAX_MESSAGE_BYTES = 256 * 2**20

# host -> worker
LOAD = "load"  # payload: LoadSpec
CALL = "call"  # payload: (method, request fields): method "synthesize" or "stream"
CANCEL = "cancel"  # payload: None; sets the call's request.cancelled
UNLOAD = "unload"  # payload: None; the worker unloads, answers and exits
# worker -> host
READY = "ready"  # payload: None, the interpreter is up (its imports done)
LOADED = "loaded"  # payload: Facts
RESULT = "result"  # payload: Audio (synthesize)
CHUNK = "chunk"  # payload: Audio (stream)
END = "end"  # payload: None (stream finished)
ERROR = "error"  # payload: encoded error (a load, a call or unload failed)
FACTS = "facts"  # payload: Facts, sent whenever they change
PROGRESS = "progress"  # payload: (message, fraction), the backend's load progress
LOG = "log"  # payload: a log record's fields
UNLOADED = "unloaded"  # payload: None, unload() returned; the worker exits next


# The defaults are the [workers] settings' own: one place says what they are.
_DEFAULT = WorkerSettings()


@dataclass(frozen=True)
class WorkerLimits:
    """The deadlines the host enforces on a worker, in seconds, and how often it restarts."""

    load_s: float = _DEFAULT.load_timeout_s
    warmup_s: float = _DEFAULT.warmup_timeout_s
    # A request's deadline grows with its text: request_s + request_per_char_s per character.
    # A stream gets the same deadline for each chunk (from the call or the previous chunk).
    request_s: float = _DEFAULT.request_timeout_s
    request_per_char_s: float = _DEFAULT.request_timeout_per_char_s
    unload_s: float = _DEFAULT.unload_timeout_s
    max_restarts: int = _DEFAULT.max_restarts
    # Whether a spare with the backend's worker_preload imported is kept ready.
    preload_spare: bool = _DEFAULT.preload_spare

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> WorkerLimits:
        """A model's ``[workers]`` settings as the limits its workers run under."""
        return cls(load_s=settings.load_timeout_s, warmup_s=settings.warmup_timeout_s,
                   request_s=settings.request_timeout_s,
                   request_per_char_s=settings.request_timeout_per_char_s,
                   unload_s=settings.unload_timeout_s, max_restarts=settings.max_restarts,
                   preload_spare=settings.preload_spare)

    def request_deadline_s(self, text: str) -> float:
        return self.request_s + self.request_per_char_s * len(text)


@dataclass(frozen=True)
class LoadSpec:
    """What a worker needs to build the instance: the class travels by reference (module and
    name), the settings pickled, the context as its plain fields (progress comes back as
    messages)."""

    backend: type[Backend]
    settings: Any
    name: str
    models_dir: Path
    cache_dir: Path
    log_level: int  # the host's root level: records below it are not worth sending
    # The host's environment as of the load: a spare process started earlier would otherwise
    # load with the variables of its own start.
    environ: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Facts:
    """What the host reads of a loaded backend without a call, as of the last change."""

    sample_rate: int
    voices: tuple[str, ...]
    capabilities: Capabilities
    status: dict[str, Any] = field(default_factory=dict)
    memory_estimate: int = 0  # the backend's own figure; the proxy measures the process


def request_fields(request: SpeechRequest) -> dict[str, Any]:
    """A request without its ``cancelled`` event (an Event does not pickle; cancel is a
    message)."""
    return {"text": request.text, "voice": request.voice, "language": request.language,
            "speed": request.speed, "options": dict(request.options),
            "continues": request.continues, "phonemes": request.phonemes,
            "sample": request.sample}


class RemoteError(RuntimeError):
    """An exception from a worker whose class the host does not import. Subclasses are made
    per original class, named like it, so ``type(exc).__name__`` reads as it did inline."""

    original: str = ""  # "module.Qualname" of the worker's exception


class RemoteTraceback(Exception):
    """The worker's traceback, as text: the ``__cause__`` of every error that crossed."""

    def __str__(self) -> str:
        return f"\n(in the worker)\n{self.args[0]}"


# One RemoteError subclass per original class, so ``except`` and ``type(exc)`` are stable.
_REMOTE_CLASSES: dict[str, type[RemoteError]] = {}


@dataclass(frozen=True)
class ErrorParts:
    """An exception as data that always pickles (what ``encode_error`` sends)."""

    module: str
    qualname: str
    message: str
    traceback: str
    host: bool = False  # a HostError: rebuilt from code, status and details
    code: str = ""
    status: int = 500
    details: Any = None
    pickled: bytes | None = None  # any other exception that pickles both ways

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"


def encode_error(exc: BaseException) -> ErrorParts:
    """An exception raised in the worker, as parts that always pickle."""
    cls = type(exc)
    where = {"module": cls.__module__, "qualname": cls.__qualname__, "message": str(exc),
             "traceback": "".join(traceback.format_exception(exc))}
    if isinstance(exc, HostError):
        return ErrorParts(**where, host=True, code=exc.code, status=exc.status,
                          details=_picklable(exc.details))
    try:
        pickled = pickle.dumps(exc.with_traceback(None))
        pickle.loads(pickled)  # some pickle one way and not back (a required argument)
    except Exception:  # noqa: BLE001 - any failure: it crosses as text
        pickled = None
    return ErrorParts(**where, pickled=pickled)


def decode_error(parts: ErrorParts) -> BaseException:
    """The error ``encode_error`` took apart, rebuilt on the host side."""
    error = _rebuild(parts)
    error.__cause__ = RemoteTraceback(parts.traceback)
    return error


def _rebuild(parts: ErrorParts) -> BaseException:
    if parts.host:
        cls = _imported_class(parts.module, parts.qualname)
        if not (isinstance(cls, type) and issubclass(cls, HostError)):
            cls = HostError
        # HostError's own __init__, whatever the subclass's: a plugin's subclass may take
        # other arguments, and the parts are exactly what HostError holds.
        error = cls.__new__(cls)
        HostError.__init__(error, parts.message, code=parts.code, status=parts.status,
                           details=parts.details)
        return error
    # Unpickling imports the class's module: only where the host has it already.
    if parts.pickled is not None and parts.module in sys.modules:
        unpickled = _unpickled(parts.pickled)
        if unpickled is not None:
            return unpickled
    remote = _REMOTE_CLASSES.get(parts.name)
    if remote is None:
        remote = type(parts.qualname.rpartition(".")[2], (RemoteError,),
                      {"original": parts.name, "__module__": __name__})
        _REMOTE_CLASSES[parts.name] = remote
    return remote(parts.message)


def _unpickled(data: bytes) -> BaseException | None:
    try:
        error = pickle.loads(data)
    except Exception:  # noqa: BLE001 - it crosses as text instead
        return None
    return error if isinstance(error, BaseException) else None


def _imported_class(module: str, qualname: str) -> Any:
    """The class by name, importing its module only when it is the host's own (alltalk_host)
    or already imported."""
    if module not in sys.modules and module.split(".")[0] != "alltalk_host":
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found


def _picklable(value: Any) -> Any:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - details are for people: their text is enough
        return repr(value)
    return value
