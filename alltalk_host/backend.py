"""The backend contract: the one class a plugin implements so the host can serve its models.

A backend class describes a kind of model (XTTS, Piper ONNX, ...). The host creates one instance
per loaded copy of a configured model. load(), unload(), synthesize() and stream() run on worker
threads, never with more concurrent requests than ``capabilities.max_concurrency``; voices(),
status() and memory_estimate() are asked on the event loop, so they must be cheap.

Lifecycle of an instance:  validate_settings() -> check_available() -> __init__() -> load() ->
synthesize()/stream() ... -> unload().  Import heavy libraries (torch, onnxruntime) inside
load(), never at module import: discovery imports every plugin.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

S = TypeVar("S")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. Declared, never guessed by the host."""

    streaming: bool = False
    languages: tuple[str, ...] = ("en",)
    voice_cloning: bool = False
    # How many requests one loaded instance can serve at once; the host queues beyond that.
    max_concurrency: int = 1
    devices: tuple[str, ...] = ("cpu",)
    # Per-request options it takes (SpeechRequest.options), e.g. "temperature".
    parameters: tuple[str, ...] = ()
    # Boolean model settings a client may flip by a commit (e.g. "low_vram", "deepspeed").
    toggles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelContext:
    """Where a model instance lives on this machine."""

    name: str  # the model's name in the config
    models_dir: Path  # relative paths in settings resolve against this
    cache_dir: Path  # a folder the backend may keep derived data in (e.g. voice latents)

    def resolve(self, value: str) -> Path:
        """A path from the model's settings: ``~`` expanded, relative ones under models_dir."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.models_dir / path


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str | None = None
    language: str = "en"
    speed: float = 1.0
    # Backend-specific parameters (temperature, noise_scale, ...), validated by the backend.
    options: Mapping[str, Any] = field(default_factory=dict)
    # Set when the caller has gone away; long-running backends check it between chunks.
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # mono float32, nominally in [-1, 1]
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


class Backend(ABC):
    """Subclass this, set ``name`` and ``capabilities``, implement the abstract methods."""

    name: ClassVar[str]
    capabilities: Capabilities = Capabilities()  # an instance may narrow it from its settings

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

    def __init__(self, settings: Any, context: ModelContext) -> None:
        self.settings = settings
        self.context = context

    @abstractmethod
    def load(self) -> None:
        """Load weights. Raise with a clear message on failure; the old model keeps serving."""

    @abstractmethod
    def unload(self) -> None:
        """Release everything load() took (references, device memory). Also called on an
        instance whose load() or warm-up raised: release whatever it got so far."""

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """The rate of every Audio this instance returns (checked at warm-up)."""

    @abstractmethod
    def voices(self) -> list[str]:
        """Voices a request may name. An empty list means the backend has a single voice."""

    @abstractmethod
    def synthesize(self, request: SpeechRequest) -> Audio:
        """The whole utterance. Raise ``alltalk_host.errors.BadRequest`` for a request this
        model cannot take (an option out of range, nothing to say): the client gets a 400."""

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        """Chunks as they are ready. Backends with ``capabilities.streaming`` override this."""
        yield self.synthesize(request)

    def memory_estimate(self) -> int:
        """Bytes this loaded instance holds, as well as the backend can tell."""
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
