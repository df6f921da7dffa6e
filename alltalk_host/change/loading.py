"""Bringing one model up beside the serving ones: construct, load, warm up, check the output.

Each instance is a ``WorkerBackend`` (the backend in a worker process, with the model's
``[workers]`` deadlines: a load or warm-up past its deadline fails with ``load_timed_out``)
unless the model says ``isolation = "inline"``, when it is the backend class itself.

Runs in a thread of the host. On any failure every instance it created is unloaded again, the one
whose load() or warm-up raised included, once the failure's traceback has let go of what that
call held (a CUDA out-of-memory error mid-load must not keep the half-loaded model alive through
its frames); the caller gets an ApplyFailed that says which model failed and why; nothing
serving is touched.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..audio import audio_problem
from ..backend import Audio, Backend, ModelContext, SpeechRequest
from ..blends import voice_problem
from ..config.settings import HostConfig, ModelDef
from ..config.voices import speaks
from ..errors import ApplyFailed, Code, HostError
from ..plugins import BackendCatalog
from ..serving.registry import unload_instances
from ..workers import WorkerBackend, WorkerGroup, WorkerLimits

log = logging.getLogger(__name__)

# A warm-up phrase per language, for a model that sets no ``warmup_text`` and speaks another
# language than English (the config's ``warmup_text`` is English in the template): a Japanese
# model spelled "The quick brown fox" letter by letter, 3-18 s per load. Each is a sentence
# or two of ordinary text, so a warm-up exercises what requests will.
WARMUP_PHRASES = {
    "ja": "こんにちは。今日はいい天気ですね。",
    "zh": "你好。今天天气很好。",
    "ko": "안녕하세요. 오늘은 날씨가 좋네요.",
    "de": "Der schnelle braune Fuchs springt über den faulen Hund.",
    "fr": "Le vif renard brun saute par-dessus le chien paresseux.",
    "es": "El rápido zorro marrón salta sobre el perro perezoso.",
    "it": "La veloce volpe marrone salta sopra il cane pigro.",
    "pt": "A rápida raposa marrom pula sobre o cão preguiçoso.",
    "nl": "De snelle bruine vos springt over de luie hond.",
    "ru": "Быстрая коричневая лиса прыгает через ленивую собаку.",
}
# A warm-up slower than this is logged with the text it spoke (a wrong language is the usual
# reason: letters spelled out one by one).
SLOW_WARMUP_S = 5.0


def warmup_text(model: ModelDef, config: HostConfig, language: str) -> str:
    """What ``model``'s warm-up speaks in ``language``: its own ``warmup_text``; else, for a
    language other than English with a phrase above, that phrase; else the config's."""
    if model.warmup_text:
        return model.warmup_text
    base = language.replace("_", "-").split("-")[0].lower()
    if base != "en" and base in WARMUP_PHRASES:
        return WARMUP_PHRASES[base]
    return config.warmup_text


def load_model(model: ModelDef, config: HostConfig, catalog: BackendCatalog,
               cache_dir: Path, on_step: Callable[[str, int], None] | None = None,
               on_progress: Callable[[int, str, float | None], None] | None = None,
               group: WorkerGroup | None = None,
               on_worker: Callable[[int, dict[str, Any]], None] | None = None) -> list[Backend]:
    """Loaded and warmed-up instances of ``model`` (``model.instances`` of them).

    ``on_step(step, instance_number)`` is told when each instance starts loading and warming
    up, ``on_progress(instance_number, message, fraction)`` what the backend says of its own
    load (``context.progress``); both run on this thread (progress from a worker process
    arrives on its reader thread). ``group``: the host's worker processes; without one every
    instance runs inline. ``on_worker(instance_number, info)`` hears, for the model's life, a
    worker process end, restart or give up (``WorkerBackend``), on a thread of the worker's."""
    report = on_step or (lambda step, number: None)
    cls = catalog.get(model.backend)
    if cls is None:  # validated already; the catalog cannot shrink at run time
        raise ApplyFailed(f"model {model.name}: backend {model.backend!r} is not installed")
    context = ModelContext(
        name=model.name, models_dir=config.models_dir, cache_dir=cache_dir / model.name
    )
    instances: list[Backend] = []
    step = "create"
    failure: ApplyFailed | None = None
    try:
        for i in range(model.instances):
            started = time.monotonic()
            step = "create"
            number = i + 1
            instance = new_instance(cls, model, config, context if on_progress is None else
                                    replace(context, progress=lambda message, fraction=None,
                                            n=number: on_progress(n, message, fraction)),
                                    group, None if on_worker is None else
                                    lambda info, n=number: on_worker(n, info))
            # Listed before load(): an instance whose load or warm-up raises holds whatever it
            # got onto the device so far, and must be unloaded like the others.
            instances.append(instance)
            step = "load"
            report("loading", i + 1)
            instance.load()
            step = "warm up"
            report("warming up", i + 1)
            warm_up(instance, model, config)
            log.info("model %s: instance %d/%d loaded and warmed up in %.2f s",
                     model.name, i + 1, model.instances, time.monotonic() - started)
            del instance
    except ApplyFailed as exc:
        failure = _detached(exc)
    except Exception as exc:
        log.warning("model %s: %s failed", model.name, step, exc_info=exc)
        failure = ApplyFailed(
            f"model {model.name} ({model.backend}): {step} failed: {type(exc).__name__}: {exc}",
            code=Code.MODEL_LOAD_FAILED,
            details={"model": model.name, "step": step},
        )
        failure.__cause__ = _detached(exc)
    if failure is not None:
        # Outside the except blocks, and after _detached cleared the traceback's frames: a
        # frame of the failed load() (its locals: the model, a CUDA tensor) would otherwise
        # keep alive what unload() and the cache release are meant to free.
        instance = None  # noqa: F841 - this frame lets go of it too
        unload_instances(instances)
        raise failure
    return instances


def new_instance(cls: type[Backend], model: ModelDef, config: HostConfig,
                 context: ModelContext, group: WorkerGroup | None,
                 on_worker: Callable[[dict[str, Any]], None] | None = None) -> Backend:
    """One instance of ``model``, not loaded: in a worker process of ``group`` (a restarted
    worker warms up as a new load does before it takes requests), or inline."""
    if group is None or not model.workers.in_process:
        return cls(model.parsed, context)
    return WorkerBackend(cls, model.parsed, context, group=group,
                         limits=WorkerLimits.from_settings(model.workers),
                         check_after_restart=lambda backend: warm_up(backend, model, config),
                         on_worker=on_worker)


def _detached(exc: BaseException) -> BaseException:
    """``exc`` and every exception chained to it, their tracebacks' frames cleared and dropped:
    the messages stay, the locals of the failed calls go (the traceback was logged first)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current.__traceback__ = None
        pending += [current.__cause__, current.__context__]
    return exc


def warm_up(instance: Backend, model: ModelDef, config: HostConfig) -> str:
    """Synthesise the model's warm-up phrase and insist on real audio in the contract's
    format; the phrase it spoke."""
    voices = instance.voices()
    blending = instance.capabilities.voice_blending
    # A default voice of the library (voices.toml) warms up cloning it.
    sample = config.voices.get(model.default_voice or "")
    if sample is not None and not speaks(sample, model.name,
                                         instance.capabilities.voice_cloning):
        sample = None
    if (model.default_voice and sample is None
            and voice_problem(model.default_voice, voices, blending)):
        raise ApplyFailed(
            f"model {model.name} {voice_problem(model.default_voice, voices, blending)} "
            f"(its default_voice); its voices: {voices[:20]}",
            code=Code.UNKNOWN_VOICE,
            details={"model": model.name, "step": "warm up"},
        )
    voice = model.default_voice or (voices[0] if voices else None)
    language = model.default_language or config.default_language
    if language not in instance.capabilities.languages:
        language = instance.capabilities.languages[0]
    text = warmup_text(model, config, language)
    started = time.monotonic()
    audio = _warm_up_call(instance, model,
                          SpeechRequest(text=text, voice=voice, language=language,
                                        sample=sample))
    took = time.monotonic() - started
    if took > SLOW_WARMUP_S:
        log.warning("model %s: the warm-up took %.1f s speaking %r (language %s); if that is "
                    "not the model's language, set warmup_text for it in models.toml",
                    model.name, took, text[:80], language)
    # The contract's sample format (float in [-1, 1], finite, mono, at the declared rate: a
    # model whose warm-up breaks it would answer every request with a 502 bad_audio), then
    # non-empty and not silent.
    problem = audio_problem(audio, instance.sample_rate)
    if problem:
        raise ApplyFailed(
            f"model {model.name} ({model.backend}): warm-up output rejected: {problem}",
            code=Code.WARMUP_FAILED,
            details={"model": model.name, "step": "warm up", "problem": problem},
        )
    return text


def _warm_up_call(instance: Backend, model: ModelDef, request: SpeechRequest) -> Audio:
    """The warm-up's synthesis; in a worker, within the warm-up deadline (past it the worker
    is killed and the load fails with ``load_timed_out``)."""
    if not isinstance(instance, WorkerBackend):
        return instance.synthesize(request)
    timeout = instance.limits.warmup_s
    try:
        return instance.synthesize_within(request, timeout)
    except HostError as exc:
        if exc.code != Code.BACKEND_TIMEOUT:
            raise
        raise ApplyFailed(
            f"model {model.name} ({model.backend}): warm-up timed out after {timeout:g} s",
            code=Code.LOAD_TIMED_OUT, details={"model": model.name, "step": "warm up"},
        ) from exc
