"""The backend contract: the one class a plugin implements so the host can serve its models.

A backend class describes a kind of model (XTTS, Piper ONNX, ...). The host creates one instance
per loaded copy of a configured model. docs/plugins.md is the authors' guide; the rules:

Threads. ``load()``, ``unload()``, ``synthesize()`` and ``stream()`` run on worker threads, never
on the event loop, and never with more requests at once per instance than
``capabilities.max_concurrency``. ``voices()``, ``status()`` and ``memory_estimate()`` are asked
on the event loop (``voices()`` on every request): answer from what ``load()`` kept. The
classmethods ``validate_settings()`` and ``check_available()`` run on the host's I/O thread at
every apply: cheap, no model files read beyond a stat or a few kB of config.

Lifecycle of an instance:  validate_settings() -> check_available() -> __init__() -> load() ->
warm-up -> synthesize()/stream() ... -> unload(). ``sample_rate``, ``voices()`` and
``capabilities`` are read after ``load()`` returns (so load may set them from the model's files)
and must not change until ``unload()``. The warm-up synthesises the model's warm-up phrase in
the model's ``default_language`` (else the config's ``default_language``; if the instance does
not list it, its first language) with its ``default_voice`` (else its first voice), and the
output must be finite, non-silent audio at ``sample_rate``. ``unload()`` is called once, never
while a request of that instance is still running (the host waits for the last, or for the
drain deadline and the backend's return). Import heavy libraries (torch, onnxruntime) inside
load(), never at module import: discovery imports every plugin.

Per-model capabilities: the class declares defaults; an instance narrows them in ``__init__``
(from its settings) or in ``load()`` (from its files) with ``self.capabilities =
dataclasses.replace(self.capabilities, languages=...)``. An empty ``voices()`` means a single
voice: the host then checks no voice name, and the backend gets whatever the client sent.

Streaming and back-pressure: the host iterates ``stream()`` in a worker thread and queues each
chunk for the client as it comes; it does not hold the generator back for a slow client (the
queue is bounded only by the text, at most ``max_text_length`` characters of audio). So yield
each chunk as soon as it is ready, do not compute ahead, and check ``request.cancelled``
between chunks (and inside long loops): it is set when the client goes away, a client presses
Stop (AllTalk's ``/api/stop-generation``), or a drain deadline passes, and the host stops pulling
at once.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

S = TypeVar("S")

# ``progress(message, fraction)``: how far a load has come (fraction 0..1, or None if unknown).
ProgressCallback = Callable[[str, float | None], None]


def _no_progress(message: str, fraction: float | None = None) -> None:
    """The default callback: nobody is listening."""


@dataclass(frozen=True)
class OptionScale:
    """The one meaning of a reserved option name, whatever the backend."""

    meaning: str
    neutral: float | None  # the value that changes nothing (None: the model's own default)
    low: float
    high: float


# Option names (``SpeechRequest.options``) that mean the same for every backend. A backend that
# takes one lists it in ``capabilities.parameters``, reads it on this scale and refuses values
# outside it with BadRequest. Front-ends map their clients' scales onto these (the AllTalk
# routes: AllTalk's pitch 0, "unchanged", becomes 1.0). ``speed`` is reserved too, but it is no
# option: it is ``SpeechRequest.speed``, a rate factor (1.0 the voice's own, 0.25 to 4).
RESERVED_OPTIONS: Mapping[str, OptionScale] = {
    "pitch": OptionScale("a factor on the voice's own pitch: 1.0 unchanged, 2.0 an octave up",
                         1.0, 0.5, 2.0),
    "temperature": OptionScale("the sampling temperature of a generative model: lower is "
                               "steadier, absent is the model's default", None, 0.01, 2.0),
    "repetition_penalty": OptionScale("how much a generative model avoids repeating itself: "
                                      "1.0 not at all, absent is the model's default",
                                      None, 1.0, 50.0),
}


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. Declared, never guessed by the host."""

    streaming: bool = False
    languages: tuple[str, ...] = ("en",)
    voice_cloning: bool = False
    # For a backend that clones: how much speech a reference sample should hold (seconds, the
    # library refuses an upload outside it) and the rate uploads are stored at.
    clone_seconds: tuple[float, float] = (3.0, 30.0)
    clone_rate: int = 22050
    # Mixes its voices: ``a:0.6+b:0.4`` works wherever a voice name does (alltalk_host.blends).
    voice_blending: bool = False
    # Takes phonemes instead of text (``SpeechRequest.phonemes``), in its own symbol set.
    phoneme_input: bool = False
    # How many requests one loaded instance can serve at once; the host queues beyond that.
    max_concurrency: int = 1
    devices: tuple[str, ...] = ("cpu",)
    # Per-request options it takes (SpeechRequest.options), e.g. "noise_scale". The names in
    # RESERVED_OPTIONS carry the scale given there; "speed" is a request field, never an option.
    parameters: tuple[str, ...] = ()
    # Boolean model settings a client may flip by a commit (e.g. "low_vram", "deepspeed").
    toggles: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemoryNeed:
    """What one loaded instance will hold, as a backend can tell before loading it."""

    ram_bytes: int = 0  # host RAM
    device: str = "cpu"  # where its weights go: "cpu", "cuda:0", ...
    device_bytes: int = 0  # memory on that device (0 for "cpu")


@dataclass(frozen=True)
class ModelContext:
    """Where a model instance lives on this machine, and whom to tell how its load goes."""

    name: str  # the model's name in the config
    models_dir: Path  # relative paths in settings resolve against this
    cache_dir: Path  # a folder the backend may keep derived data in (e.g. voice latents)
    # Call it from load() for a load that takes more than a moment:
    # ``self.context.progress("reading weights", 0.4)``. The host shows it live while the model
    # loads; ``alltalk-host try`` prints it. Cheap, thread-safe, never raises; optional.
    progress: ProgressCallback = field(default=_no_progress, compare=False, repr=False)

    def resolve(self, value: str) -> Path:
        """A path from the model's settings: ``~`` expanded, relative ones under models_dir."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.models_dir / path


@dataclass(frozen=True)
class VoiceSample:
    """A voice of the config repo's library: a reference recording kept in the commit
    (``voices/``, described in ``voices.toml``), for backends that clone voices."""

    name: str
    path: Path  # the commit's own copy, named by its content (read it; never write it)
    sha256: str  # of the file's bytes: a replaced sample is a new voice to a latents cache
    model: str | None = None  # the model it is for; None: any model that clones
    language: str | None = None  # the language spoken in it
    transcript: str | None = None  # what is said in it, for backends that use one
    source: str = ""  # where it comes from and the speaker's consent, as written
    file: str = ""  # its path in the commit (``voices/NAME.wav``)
    size: int = 0  # bytes
    seconds: float | None = None  # its length, read from a wav's header (None: another format)
    rate: int | None = None  # its sample rate, from the same header


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str | None = None
    language: str = "en"
    speed: float = 1.0
    # Backend-specific parameters (temperature, noise_scale, ...), validated by the backend.
    options: Mapping[str, Any] = field(default_factory=dict)
    # A later piece of one utterance (Wyoming's streaming synthesis): its audio follows audio
    # that is already playing, so ``stream`` need not cut its first sentence for a fast start
    # (a cut costs a little prosody and length; it buys nothing here).
    continues: bool = False
    # ``text`` is phonemes in the model's own symbols (a client sent ``phonemes``; only to a
    # backend with ``capabilities.phoneme_input``): speak them as they are, and refuse symbols
    # the model lacks with BadRequest(code=Code.UNKNOWN_PHONEMES), naming them.
    phonemes: bool = False
    # ``voice`` is a voice of the library (only for a backend with ``voice_cloning``): clone
    # this sample. The request carries the sample of the commit it was admitted under, so a
    # voice replaced or rolled back meanwhile changes no request already taken.
    sample: VoiceSample | None = None
    # Set when the caller has gone away; long-running backends check it between chunks.
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class Audio:
    """Samples are mono floats in [-1, 1] (float32; float64 and float16 are converted) at the
    instance's ``sample_rate``, finite. The host checks every chunk (``chunk_problem``) and
    refuses integer PCM, samples past full scale, NaN and another rate: a 502 ``bad_audio``
    for the request, a failed warm-up for a load."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


class Backend(ABC):
    """Subclass this, set ``name`` and ``capabilities``, implement the abstract methods."""

    name: ClassVar[str]
    capabilities: Capabilities = Capabilities()  # an instance may narrow it from its settings
    # The settings that name a file or folder (resolved with ``ModelContext.resolve``). When a
    # config commit sets one, the host refuses it unless it is relative and without '..', so
    # it stays inside models_dir; the host-local file and ALLTALK_ variables may name any.
    path_settings: ClassVar[tuple[str, ...]] = ()
    # Heavy modules ``load()`` imports (``("torch",)``): the host keeps a worker process with
    # them imported ready for this backend, so a load or reload skips the imports. It costs
    # that process's memory while it waits; leave it empty for light imports.
    worker_preload: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> Any:
        """Check one model's settings namespace; return the parsed form given to ``__init__``.

        Raise ``ValueError`` with a message that names the offending key. Runs before any swap,
        so it must be cheap and must not touch the model files' contents.
        """

    @classmethod
    def check_available(cls, settings: Any, context: ModelContext) -> None:
        """Whether this model could load on this machine, decided cheaply, without loading:
        its files exist and look right, the optional libraries it needs can be found.

        Raise any exception whose message says what is missing ("checkpoint folder ... not
        found"). Asked at every apply for every configured model, so an unusable model is
        reported before anyone switches to it. The default finds nothing missing.
        """
        return None

    @classmethod
    def memory_needed(cls, settings: Any, context: ModelContext) -> MemoryNeed | None:
        """What one instance will take once loaded, guessed cheaply before loading (file
        sizes, dtype, device). The host checks it fits beside what serves before it loads;
        after a load it measures what the load took and trusts that next time. None (the
        default): unknown, and the model is admitted without a check."""
        return None

    def __init__(self, settings: Any, context: ModelContext) -> None:
        self.settings = settings
        self.context = context

    @abstractmethod
    def load(self) -> None:
        """Load weights. Raise with a clear message on failure; the old model keeps serving."""

    @abstractmethod
    def unload(self) -> None:
        """Release everything load() took (references, device memory, child processes).
        Called once, after the instance's last request has finished; also on an instance
        whose load() or warm-up raised: release whatever it got so far."""

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """The rate of every Audio this instance returns (checked on every chunk)."""

    @abstractmethod
    def voices(self) -> list[str]:
        """Voices a request may name. An empty list means the backend has a single voice."""

    @abstractmethod
    def synthesize(self, request: SpeechRequest) -> Audio:
        """The whole utterance. Raise ``alltalk_host.errors.BadRequest`` for a request this
        model cannot take (an option out of range, nothing to say): the client gets a 400."""

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        """Chunks as they are ready, stopping when ``request.cancelled`` is set (see the module
        docstring on back-pressure). Backends with ``capabilities.streaming`` override this;
        the default is one whole chunk."""
        yield self.synthesize(request)

    def memory_estimate(self) -> int:
        """Bytes this loaded instance holds, as well as the backend can tell: memory it took
        in this process (RSS) plus device memory. An engine that runs in another process (a
        server, a child process) counts that process's memory too, since unloading frees it;
        0 means unknown. The conformance check compares it with the measured load."""
        return 0

    def status(self) -> dict[str, Any]:
        """Extra facts for the control status (e.g. the execution providers really in use)."""
        return {}


def parse_settings(settings_class: type[S], settings: Mapping[str, Any]) -> S:
    """``settings_class(**settings)`` for a (frozen) dataclass: unknown keys are refused by name,
    lists become tuples. The usual first line of ``validate_settings``."""
    known = {f.name for f in fields(settings_class)}  # type: ignore[arg-type]
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return settings_class(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in settings.items()})
