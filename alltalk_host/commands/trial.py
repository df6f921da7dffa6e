"""``alltalk-host try``: one backend taken through a model's whole life in this process.

Settings validation, the availability check, the memory the backend claims (judged as the
host's admission would), load (with its progress), the host's own warm-up check, synthesis,
streaming when asked (every chunk checked as the host checks it), unload: each step timed and
described, with no server, no config repo and no commit. A failure raises from the step that
failed (the CLI prints the traceback); what was loaded is unloaded first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import audio_problem, chunk_problem
from ..backend import Audio, Backend, ModelContext, SpeechRequest
from ..change.loading import warm_up
from ..change.memory import claimed, implausible
from ..config.settings import ModelDef
from ..serving.checked import first_silent

Say = Callable[[str], None]


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


class StepFailed(Exception):
    """Raised from a step: ``step`` names it, the cause is chained."""

    def __init__(self, step: str) -> None:
        super().__init__(f"{step} failed")
        self.step = step


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
    with _step("load", say) as note:
        context = ModelContext(trial.context.name, trial.context.models_dir,
                               trial.context.cache_dir,
                               progress=lambda message, fraction=None: say(
                                   f"         {message}"
                                   + (f" ({fraction:.0%})" if fraction is not None else "")))
        instance = cls(parsed, context)
        instance.load()
        note(f"{instance.sample_rate} Hz, {len(instance.voices())} voice(s), languages "
             f"{', '.join(instance.capabilities.languages[:8])}"
             + (" ..." if len(instance.capabilities.languages) > 8 else ""))
    try:
        return _loaded(trial, instance, parsed, say)
    finally:
        with _step("unload", say):
            instance.unload()


def _loaded(trial: Trial, instance: Backend, parsed: Any, say: Say) -> Audio:
    model = trial.model or ModelDef(name=trial.context.name, backend=trial.backend.name,
                                    settings=dict(trial.settings), parsed=parsed)
    with _step("warm-up", say) as note:
        warm_up(instance, model, _WarmUpConfig(trial.warmup_text, trial.default_language))
        note(f"'{trial.warmup_text[:40]}' passed the host's output check")
    request = dict(text=trial.text, voice=trial.voice or model.default_voice,
                   language=trial.language or model.default_language
                   or _language(instance, trial.default_language))
    with _step("synthesis", say) as note:
        started = time.perf_counter()
        audio = instance.synthesize(SpeechRequest(**request))
        seconds = time.perf_counter() - started
        problem = audio_problem(audio, instance.sample_rate)
        if problem:
            raise ValueError(problem)
        note(f"{describe(audio)}, RTF {seconds / audio.duration:.3f}")
    if not trial.stream:
        return audio
    with _step("stream", say) as note:
        started = time.perf_counter()
        chunks: list[Audio] = []
        first = None
        for chunk in instance.stream(SpeechRequest(**request)):
            first = first if first is not None else time.perf_counter() - started
            problem = chunk_problem(chunk, instance.sample_rate)
            if problem:  # what the host refuses with a 502, or aborts a stream with
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
    """The two settings of the host's config that the warm-up reads."""

    warmup_text: str
    default_language: str


def _language(instance: Backend, wanted: str) -> str:
    languages = instance.capabilities.languages
    return wanted if wanted in languages else languages[0]


@contextmanager
def _step(name: str, say: Say) -> Iterator[Callable[[str], None]]:
    detail: list[str] = []
    started = time.perf_counter()
    try:
        yield detail.append
    except Exception as exc:
        say(f"{name:<9} FAILED after {time.perf_counter() - started:.3f} s: "
            f"{type(exc).__name__}: {exc}")
        raise StepFailed(name) from exc
    say(f"{name:<9} ok {time.perf_counter() - started:8.3f} s  {' '.join(detail)}".rstrip())


def _db(value: float) -> str:
    return f"{20 * np.log10(value):.1f} dBFS" if value > 0 else "-inf dBFS"


def write_wav(audio: Audio, path: Path) -> None:
    from ..audio import to_wav

    path.write_bytes(to_wav(audio))
