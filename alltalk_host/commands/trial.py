"""``alltalk-host try``: one backend taken through a model's whole life, with no server.

Settings validation, the availability check, the memory the backend claims (judged as the
host's admission would), load (with its progress), the host's own warm-up check, synthesis,
streaming when asked (every chunk checked as the host checks it), unload: each step timed and
described, with no server, no config repo and no commit. A failure raises from the step that
failed (the CLI prints the traceback); what was loaded is unloaded first.

The backend runs as the host runs it: in a worker process, under the host's deadlines
(``WorkerLimits``); a step past its deadline kills the worker, a crash ends only the worker,
and either is one line naming the step. ``inline`` runs it in this process instead, each step
on a thread with the same deadline (``steps.within``): a hang is reported, not stopped, and
nothing runs beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..audio import audio_problem, chunk_problem
from ..backend import Audio, Backend, ModelContext, SpeechRequest
from ..change.loading import warm_up
from ..change.memory import claimed, implausible
from ..config.settings import ModelDef
from ..errors import Code, HostError
from ..serving.checked import first_silent
from ..workers import WorkerBackend, WorkerDied, WorkerGroup, WorkerLimits
from .steps import StepTimedOut, within

Say = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Trial:
    """What to try: a backend, its settings, and the request."""

    backend: type[Backend]
    settings: Mapping[str, Any]
    text: str
    context: ModelContext
    voice: str | None = None
    language: str | None = None
    stream: bool = False
    warmup_text: str = "The quick brown fox jumps over the lazy dog."
    default_language: str = "en"
    model: ModelDef | None = None  # from a config repo: its default voice and language
    limits: WorkerLimits = field(default_factory=WorkerLimits)  # max_restarts: none taken
    inline: bool = False  # in this process, not a worker (its class need not be importable)


class StepFailed(Exception):
    """Raised from a step: ``step`` names it, the cause is chained. ``ended`` says how a step
    that raised nothing ended: "timed out after N s (...)" or "the worker died (...)"."""

    def __init__(self, step: str, ended: str | None = None) -> None:
        super().__init__(f"{step}: {ended}" if ended else f"{step} failed")
        self.step = step
        self.ended = ended


def describe(audio: Audio) -> str:
    """Duration, rate and level of ``audio`` in one phrase."""
    samples = np.asarray(audio.samples, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return (f"{audio.duration:.2f} s at {audio.sample_rate} Hz, RMS {_db(rms)}, "
            f"peak {_db(peak)}")


def run(trial: Trial, say: Say) -> Audio:
    """Every step in order; the audio to keep (the stream's, when streaming was asked)."""
    cls = trial.backend
    with _step("settings", say) as note:
        parsed = cls.validate_settings(trial.settings)
        note(f"{len(trial.settings)} key(s) given, parsed as {type(parsed).__name__}")
    with _step("available", say):
        cls.check_available(parsed, trial.context)
    with _step("memory", say) as note:
        need = cls.memory_needed(parsed, trial.context)
        problem = implausible(need)
        if problem:
            raise ValueError(problem)
        note("memory_needed() says nothing: the host admits the model unchecked"
             if need is None else f"memory_needed() {claimed(need)}")
    group = None if trial.inline else WorkerGroup(spare=False)
    try:
        return _life(trial, parsed, say, group)
    finally:
        if group is not None:
            group.kill_all("the trial is over")


def _life(trial: Trial, parsed: Any, say: Say, group: WorkerGroup | None) -> Audio:
    limits = trial.limits
    with _step("load", say, limits.load_s) as note:
        context = ModelContext(trial.context.name, trial.context.models_dir,
                               trial.context.cache_dir,
                               progress=lambda message, fraction=None: say(
                                   f"         {message}"
                                   + (f" ({fraction:.0%})" if fraction is not None else "")))
        instance = (trial.backend(parsed, context) if group is None else WorkerBackend(
            trial.backend, parsed, context, group=group, limits=replace(limits, max_restarts=0)))
        _call(trial, "load", limits.load_s, instance.load)
        note(f"{instance.sample_rate} Hz, {len(instance.voices())} voice(s), languages "
             f"{', '.join(instance.capabilities.languages[:8])}"
             + (" ..." if len(instance.capabilities.languages) > 8 else ""))
    stuck: StepFailed | None = None
    try:
        return _loaded(trial, instance, parsed, say)
    except StepFailed as exc:
        stuck = exc if exc.ended else None
        raise
    finally:
        if stuck is not None:  # the worker is gone, or (inline) the call still runs
            say(f"{'unload':<9} skipped: " + ("the worker is gone" if group is not None else
                                             f"{stuck.step} still runs, and unload() never "
                                             "runs beside a call"))
        else:
            with _step("unload", say, limits.unload_s):
                _unload(trial, instance)


def _unload(trial: Trial, instance: Backend) -> None:
    if isinstance(instance, WorkerBackend):
        instance.unload()  # it kills the worker past unload_s, and says why afterwards
        if instance.unload_error is not None:
            raise instance.unload_error
    else:
        _call(trial, "unload", trial.limits.unload_s, instance.unload)


def _call(trial: Trial, step: str, seconds: float, fn: Callable[[], T]) -> T:
    """A call of the backend's under its deadline: a worker enforces its own (and kills
    itself past it); inline, the call runs on a thread the deadline gives up on."""
    return within(step, seconds, fn) if trial.inline else fn()


def _loaded(trial: Trial, instance: Backend, parsed: Any, say: Say) -> Audio:
    model = trial.model or ModelDef(name=trial.context.name, backend=trial.backend.name,
                                    settings=dict(trial.settings), parsed=parsed)
    limits = trial.limits
    with _step("warm-up", say, limits.warmup_s) as note:
        warming = instance.warming() if isinstance(instance, WorkerBackend) else instance
        config = _WarmUpConfig(trial.warmup_text, trial.default_language)
        spoken = _call(trial, "warm-up", limits.warmup_s,
                       lambda: warm_up(warming, model, config))
        note(f"'{spoken[:40]}' passed the host's output check")
    request = dict(text=trial.text, voice=trial.voice or model.default_voice,
                   language=trial.language or model.default_language
                   or _language(instance, trial.default_language))
    deadline = limits.request_deadline_s(trial.text)  # a stream's: for each chunk
    with _step("synthesis", say, deadline) as note:
        started = time.perf_counter()
        audio = _call(trial, "synthesis", deadline,
                      lambda: instance.synthesize(SpeechRequest(**request)))
        seconds = time.perf_counter() - started
        problem = audio_problem(audio, instance.sample_rate)
        if problem:
            raise ValueError(problem)
        note(f"{describe(audio)}, RTF {seconds / audio.duration:.3f}")
    if not trial.stream:
        return audio
    with _step("stream", say, deadline) as note:
        started = time.perf_counter()
        chunks: list[Audio] = []
        first = None
        stream = instance.stream(SpeechRequest(**request))
        while (chunk := _call(trial, "stream", deadline, lambda: next(stream, None))) is not None:
            first = first if first is not None else time.perf_counter() - started
            problem = chunk_problem(chunk, instance.sample_rate)
            if problem:  # what the host refuses with a 502, or aborts a stream with
                # Left now, not when collected: a worker's stream counts as a running call,
                # and unload() next would kill the worker instead of unloading it.
                getattr(stream, "close", lambda: None)()
                raise ValueError(f"chunk {len(chunks) + 1}: {problem}")
            chunks.append(chunk)
        seconds = time.perf_counter() - started
        streamed = Audio(np.concatenate([np.asarray(c.samples, dtype=np.float32)
                                         for c in chunks]) if chunks
                         else np.zeros(0, np.float32), instance.sample_rate)
        problem = audio_problem(streamed, instance.sample_rate)
        if problem:
            raise ValueError(problem)
        note(f"{len(chunks)} chunk(s), the first after {first or 0:.2f} s; "
             f"{describe(streamed)}, RTF {seconds / streamed.duration:.3f}")
        silent = first_silent(chunks)
        if silent:  # the host serves it and logs a warning
            note(f"(warning: chunk {silent} is silent after the first)")
    return streamed


@dataclass(frozen=True)
class _WarmUpConfig:
    """The settings of the host's config that the warm-up reads (no voice library)."""

    warmup_text: str
    default_language: str
    voices: Mapping[str, Any] = field(default_factory=dict)


def _language(instance: Backend, wanted: str) -> str:
    languages = instance.capabilities.languages
    return wanted if wanted in languages else languages[0]


@contextmanager
def _step(name: str, say: Say, deadline: float | None = None
          ) -> Iterator[Callable[[str], None]]:
    detail: list[str] = []
    started = time.perf_counter()
    try:
        yield detail.append
    except Exception as exc:
        ended = _ended(exc, deadline)
        say(f"{name:<9} FAILED after {time.perf_counter() - started:.3f} s: "
            + (ended or f"{type(exc).__name__}: {exc}"))
        raise StepFailed(name, ended) from exc
    say(f"{name:<9} ok {time.perf_counter() - started:8.3f} s  {' '.join(detail)}".rstrip())


def _ended(exc: Exception, deadline: float | None) -> str | None:
    """How a step ended that has no error of the backend's to show: past its deadline, or
    with its worker dead; None for an error the step raised."""
    if isinstance(exc, StepTimedOut):
        return (f"timed out after {exc.seconds:g} s (inline: it still runs on a thread, "
                "nothing can stop it)")
    if isinstance(exc, WorkerDied):
        how = str((exc.details or {}).get("exit") or "it is gone")
        return f"the worker died ({how.removeprefix('killed by ')})"
    if (isinstance(exc, HostError) and exc.code in (Code.LOAD_TIMED_OUT, Code.BACKEND_TIMEOUT)
            and deadline is not None):
        return f"timed out after {deadline:g} s (the worker was stopped)"
    return None


def _db(value: float) -> str:
    return f"{20 * np.log10(value):.1f} dBFS" if value > 0 else "-inf dBFS"


def write_wav(audio: Audio, path: Path) -> None:
    from ..audio import to_wav

    path.write_bytes(to_wav(audio))
