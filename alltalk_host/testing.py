"""The conformance check: a backend's contract exercised on a real instance, in this process.

For plugin authors' tests (``assert_conforms(MyBackend, {...})`` in pytest) and for
``alltalk-host plugin check BACKEND``. Each check is one line of the report; the first failure
of settings, availability or load stops the checks that need a loaded model. What it checks:

- settings: good ones parse, an unknown key and the author's bad examples are a ValueError that
  names the key;
- availability: ``check_available`` passes for the settings given;
- load and warm-up, as the host does them (``alltalk_host.change.loading.warm_up``);
- synthesis: non-silent audio in the contract's format (floats in [-1, 1], finite, mono, at
  ``sample_rate``: ``audio_problem``) in each declared language and voice (a deterministic
  sample of at most ``max_languages`` and ``max_voices``);
- streaming: every chunk in the contract's format (``chunk_problem``), the concatenated chunks
  as long as a whole synthesis (within ``length_tolerance``), and cancelling after the first
  chunk stops the stream (it needs three chunks: pass a ``stream_text`` that makes them);
- concurrency: ``capabilities.max_concurrency`` requests at once all succeed;
- cloning, for a backend that declares it: a voice of the library (``request.sample``, a
  speech-like recording at its ``clone_rate``) is spoken, a silent one refused or spoken;
- client errors: an unknown option, a reserved option off its scale, an unknown voice are
  ``BadRequest`` (an unknown voice may also be ignored), never another exception;
- unload releases what load took (resident memory, measured around a second load), and
  ``memory_estimate()`` is within ``memory_factor`` of that measurement;
- ``memory_needed()`` fits the machine that just loaded the model (``change.memory.implausible``).

The requests that speak one text use ``language`` (default: ``en`` when the model speaks it,
else its first language). A check that cannot run here is a skip, and the summary names it.

Each call of the backend has the host's deadline (``limits``, a ``WorkerLimits``: load,
warm-up, each request by its text's length, unload), on a daemon thread (``commands.steps``):
a call past it fails its check naming the step and the deadline ("load timed out after 300
s"), and since it still runs, every check after it is a skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audio import audio_problem, chunk_problem
from .backend import RESERVED_OPTIONS, Audio, Backend, ModelContext, SpeechRequest, VoiceSample
from .change.loading import warm_up
from .change.memory import claimed, implausible
from .commands.steps import Steps, StepSkipped, StepTimedOut
from .config.settings import ModelDef
from .errors import BadRequest
from .serving.checked import first_silent
from .serving.registry import release_memory
from .workers import WorkerLimits

WARMUP_TEXT = "The quick brown fox jumps over the lazy dog."
STREAM_TEXT = ("The first sentence is short. A second one follows it. Then comes a third. "
               "And a fourth sentence ends the test.")
# A sentence per language the checks may meet; others get the digits, which most engines read.
PHRASES = {
    "en": "Hello, this is a test.", "de": "Guten Tag, das ist ein Test.",
    "fr": "Bonjour, ceci est un essai.", "es": "Hola, esto es una prueba.",
    "it": "Ciao, questa è una prova.", "pt": "Olá, isto é um teste.",
    "nl": "Hallo, dit is een test.", "pl": "Dzień dobry, to jest test.",
}
MIB = 1024 * 1024


@dataclass
class Check:
    """One line of the report: ``ok`` is None when the check did not apply (say why)."""

    name: str
    ok: bool | None
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        return f"{mark} {self.name:<44} {self.seconds:7.2f} s  {self.detail}"


@dataclass
class Report:
    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    def summary(self) -> str:
        failed = [c for c in self.checks if c.ok is False]
        skipped = [c.name for c in self.checks if c.ok is None]
        head = (f"backend {self.backend}: " + (f"{len(failed)} of {len(self.checks)} checks "
                                                "failed" if failed else "conforms"))
        if skipped:  # never a bare "conforms" over checks that did not run
            head += f"; {len(skipped)} skipped: " + ", ".join(skipped)
        return "\n".join([head, *(c.line() for c in self.checks)])


class _Stop(Exception):
    """A check that later checks depend on failed."""


# Checks that follow the model's own (speech, streaming, ...), named when a timed-out load
# keeps them from running.
TAIL = ("unload", "unload releases what load took", "memory_estimate() fits the measured load",
        "memory_needed() fits this machine")


def assert_conforms(backend: type[Backend], settings: Mapping[str, Any] | None = None,
                    **options: Any) -> Report:
    """``check_backend``, raising AssertionError with the report when a check fails."""
    report = check_backend(backend, settings, **options)
    if not report.ok:
        raise AssertionError(report.summary())
    return report


def check_backend(backend: type[Backend], settings: Mapping[str, Any] | None = None, *,
                  bad_settings: Sequence[Mapping[str, Any]] = (), language: str | None = None,
                  models_dir: Path | None = None, request_options: Mapping[str, Any] | None = None,
                  max_languages: int = 3, max_voices: int = 3, length_tolerance: float = 0.25,
                  memory_factor: float = 4.0, memory_floor_mb: float = 32.0,
                  stream_text: str = STREAM_TEXT, limits: WorkerLimits | None = None,
                  on_check: Callable[[Check], None] | None = None) -> Report:
    """Run every check against ``backend`` with model ``settings``; see the module docstring.

    ``request_options`` are sent with every synthesis (say, a low temperature so that a
    sampling model's two runs are comparable); ``models_dir`` resolves relative paths. A slow
    model keeps the check short with ``max_languages=1``, ``max_voices`` and a shorter
    ``stream_text`` (it needs enough to stream three chunks). ``language`` is the one the
    warm-up and the single-text checks speak (the stream's, the client errors'); a model
    without English needs it, with a ``stream_text`` in that language. ``limits`` are the
    deadlines (default: the host's, ``WorkerLimits()``).
    """
    report = Report(backend.name)
    with tempfile.TemporaryDirectory(prefix="alltalk-check-") as tmp:
        context = ModelContext("conformance", Path(models_dir or tmp), Path(tmp) / "cache")
        run = _Runner(backend, dict(settings or {}), context, dict(request_options or {}),
                      report, on_check, limits or WorkerLimits())
        run.language = language
        with contextlib.suppress(_Stop):
            run.settings(bad_settings)
            run.loaded(max_languages, max_voices, length_tolerance, stream_text)
            run.memory(memory_factor, memory_floor_mb * MIB)
            run.memory_needed()
        if run.steps.halted:  # a load past its deadline stopped the checks above: name the rest
            done = {c.name for c in report.checks}
            for name in TAIL:
                if name not in done:
                    run.record(Check(name, None, f"not run: {run.steps.halted}"))
    return report


class _Runner:
    def __init__(self, cls: type[Backend], settings: dict[str, Any], context: ModelContext,
                 options: dict[str, Any], report: Report,
                 on_check: Callable[[Check], None] | None, limits: WorkerLimits) -> None:
        self.cls, self.raw, self.context, self.options = cls, settings, context, options
        self.report, self.on_check, self.limits = report, on_check, limits
        self.parsed: Any = None
        self.language: str | None = None  # asked for; after load, the one the checks speak
        self.steps = Steps()  # each call of the backend's: after one past its deadline, none

    def synthesize(self, instance: Backend, request: SpeechRequest) -> Audio:
        return self.steps.call("synthesis", self.limits.request_deadline_s(request.text),
                               lambda: instance.synthesize(request))

    def record(self, result: Check) -> None:
        self.report.checks.append(result)
        if self.on_check:
            self.on_check(result)

    @contextlib.contextmanager
    def check(self, name: str, stop: bool = False) -> Iterator[Check]:
        """Times the block; a failed assertion or exception is a FAIL line, not a crash."""
        result = Check(name, True)
        started = time.perf_counter()
        try:
            yield result
        except AssertionError as exc:
            result.ok, result.detail = False, str(exc)
        except StepSkipped as exc:
            result.ok, result.detail = None, f"not run: {exc}"
        except StepTimedOut as exc:
            result.ok, result.detail = False, f"{exc} (it still runs: the rest is skipped)"
        except Exception as exc:  # noqa: BLE001 - anything a backend raises is its failure
            result.ok, result.detail = False, f"{type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - started
        self.record(result)
        if stop and result.ok is False:
            raise _Stop

    # --- the checks ------------------------------------------------------------------------

    def settings(self, bad: Sequence[Mapping[str, Any]]) -> None:
        with self.check("settings: good ones parse", stop=True):
            self.parsed = self.cls.validate_settings(self.raw)
        with self.check("settings: bad ones are a ValueError") as c:
            key = "no_such_setting_for_conformance"
            _expect_value_error(self.cls, {**self.raw, key: 1}, key)
            for example in bad:
                _expect_value_error(self.cls, {**self.raw, **example}, next(iter(example), ""))
            c.detail = f"an unknown key and {len(bad)} bad example(s) refused"
        with self.check("available", stop=True):
            self.cls.check_available(self.parsed, self.context)

    def loaded(self, max_languages: int, max_voices: int, tolerance: float,
               stream_text: str) -> None:
        with self.check("load and warm-up", stop=True) as c:
            instance = self.cls(self.parsed, self.context)
            self.steps.call("load", self.limits.load_s, instance.load)
            try:
                languages = instance.capabilities.languages
                assert self.language is None or self.language in languages, (
                    f"language {self.language!r} is not one of {list(languages)}")
                self.language = self.language or ("en" if "en" in languages else languages[0])
                model, config = (_model(self.cls, self.raw, self.parsed),
                                 _WarmUp(default_language=self.language))
                self.steps.call("warm-up", self.limits.warmup_s,
                                lambda: warm_up(instance, model, config))
            except BaseException:
                if not self.steps.halted:  # never beside a call still running
                    with contextlib.suppress(StepTimedOut):  # halted: reported by the rest
                        self.steps.call("unload", self.limits.unload_s, instance.unload)
                raise
            c.detail = (f"{instance.sample_rate} Hz, {len(instance.voices())} voices, "
                        f"{len(instance.capabilities.languages)} languages")
        try:
            self.speech(instance, max_languages, max_voices)
            self.streaming(instance, tolerance, stream_text)
            self.concurrency(instance)
            self.client_errors(instance)
            if instance.capabilities.voice_cloning:
                self.cloning(instance)
        finally:
            with self.check("unload"):
                self.steps.call("unload", self.limits.unload_s, instance.unload)

    def speech(self, instance: Backend, max_languages: int, max_voices: int) -> None:
        languages = _sample(list(instance.capabilities.languages), max_languages)
        voices = _sample(instance.voices(), max_voices)
        first_voice = voices[0] if voices else None
        for language in languages:
            with self.check(f"speaks language {language}") as c:
                c.detail = self.speak(instance, PHRASES.get(language, "1 2 3 4 5."),
                                      voice=first_voice, language=language)
                c.detail += f" (voice {first_voice})" if first_voice else ""
        for voice in voices[1:]:  # the first spoke every language above
            with self.check(f"speaks voice {voice}") as c:
                c.detail = self.speak(instance, WARMUP_TEXT, voice=voice,
                                      language=languages[0])

    def speak(self, instance: Backend, text: str, **fields: Any) -> str:
        audio = self.synthesize(instance, self.request(text, **fields))
        problem = audio_problem(audio, instance.sample_rate)
        assert problem is None, problem
        return f"{audio.duration:.2f} s of audio"

    def streaming(self, instance: Backend, tolerance: float, text: str) -> None:
        chunks: list[Any] = []  # what the first check got, if anything
        with self.check("stream is as long as a whole synthesis") as c:
            whole = self.synthesize(instance, self.request(text))
            problem = audio_problem(whole, instance.sample_rate)
            assert problem is None, f"the whole synthesis: {problem}"
            for i, chunk in enumerate(self.chunks(instance.stream(self.request(text)), text), 1):
                problem = chunk_problem(chunk, instance.sample_rate)
                assert problem is None, f"chunk {i}: {problem}"
                chunks.append(chunk)
            assert chunks, "stream() yielded nothing"
            streamed = sum(len(chunk.samples) for chunk in chunks) / instance.sample_rate
            ratio = streamed / whole.duration
            c.detail = (f"{len(chunks)} chunks, {streamed:.2f} s streamed, "
                        f"{whole.duration:.2f} s whole")
            assert abs(ratio - 1) <= tolerance, (
                f"{c.detail}: they differ by {abs(ratio - 1):.0%} (tolerance {tolerance:.0%})")
            silent = first_silent(chunks)
            if silent:  # the host logs it and serves it: a warning here too, not a failure
                c.detail += f"; warning: chunk {silent} is silent after the first"
        stream_check = c
        with self.check("cancelling stops the stream") as c:
            self.steps.check()
            if stream_check.ok is False:
                c.ok, c.detail = None, "the stream check failed, so there is none to cancel"
                return
            if len(chunks) < 3:
                c.ok, c.detail = None, (f"the stream has {len(chunks)} chunk(s); needs 3 or "
                                        "more (give a longer stream_text)")
                return
            request = self.request(text)
            stream = self.chunks(instance.stream(request), text)
            next(stream)
            request.cancelled.set()
            after = sum(1 for _ in stream)
            c.detail = f"{after} chunk(s) after cancelling, of {len(chunks) - 1} to come"
            assert after <= 1, f"{c.detail}: the stream went on"

    def concurrency(self, instance: Backend) -> None:
        n = max(1, min(instance.capabilities.max_concurrency, 8))
        with self.check(f"{n} request(s) at once") as c:
            if n == 1:
                c.ok, c.detail = None, "max_concurrency 1: the speech checks ran one at a time"
                return
            results: list[str | None] = [None] * n
            start = threading.Barrier(n)

            def one(i: int) -> None:
                start.wait()
                try:
                    audio = instance.synthesize(self.request(WARMUP_TEXT))
                    results[i] = audio_problem(audio, instance.sample_rate) or "ok"
                except Exception as exc:  # noqa: BLE001 - reported below
                    results[i] = f"{type(exc).__name__}: {exc}"

            def all_at_once() -> None:  # each its own deadline, from the same start
                threads = [threading.Thread(target=one, args=(i,), daemon=True)
                           for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            self.steps.call("synthesis", self.limits.request_deadline_s(WARMUP_TEXT),
                            all_at_once)
            bad = [r for r in results if r != "ok"]
            assert not bad, f"{len(bad)} of {n} failed: {bad[0]}"
            c.detail = f"max_concurrency {instance.capabilities.max_concurrency}"

    def client_errors(self, instance: Backend) -> None:
        with self.check("an unknown option is a BadRequest"):
            self.expect_bad_request(instance, self.request(
                WARMUP_TEXT, options={**self.options, "no_such_option_x": 1.0}))
        for name in instance.capabilities.parameters:
            scale = RESERVED_OPTIONS.get(name)
            if scale is None:
                continue
            with self.check(f"option {name} keeps the contract's scale") as c:
                for off in (scale.high * 10 + 1, scale.low - abs(scale.low) - 1, "x"):
                    self.expect_bad_request(instance, self.request(
                        WARMUP_TEXT, options={**self.options, name: off}))
                if scale.neutral is not None:
                    c.detail = self.speak(instance, WARMUP_TEXT,
                                          options={**self.options, name: scale.neutral})
        with self.check("an unknown voice is a BadRequest or ignored") as c:
            try:
                c.detail = self.speak(instance, WARMUP_TEXT, voice="no-such-voice-x")
                c.detail = "ignored: " + c.detail
            except BadRequest as exc:
                c.detail = f"BadRequest: {exc}"

    def cloning(self, instance: Backend) -> None:
        """A backend that clones speaks a library sample (``request.sample``), and refuses a
        silent one with a BadRequest (or speaks something all the same)."""
        caps = instance.capabilities
        seconds = min(max(caps.clone_seconds[0] + 1.0, 4.0), caps.clone_seconds[1])
        folder = self.context.cache_dir.parent / "samples"
        with self.check("speaks a voice of the library (cloning)") as c:
            sample = _reference_sample(folder / "speech.wav", caps.clone_rate, seconds, 0.3)
            c.detail = self.speak(instance, WARMUP_TEXT, voice=sample.name, sample=sample)
        with self.check("a silent library sample is a BadRequest or spoken") as c:
            silent = _reference_sample(folder / "silent.wav", caps.clone_rate, seconds, 0.0)
            try:
                c.detail = "spoken: " + self.speak(instance, WARMUP_TEXT, voice=silent.name,
                                                   sample=silent)
            except BadRequest as exc:
                c.detail = f"BadRequest: {exc}"

    def memory(self, factor: float, floor: float) -> None:
        """A second load on a warm process, measured: what it takes, what unload gives back."""
        took: int | None = None
        with self.check("unload releases what load took") as c:
            self.steps.check()
            # RSS is the whole process's: memory another thread held for a moment (a timer's
            # run, an arena shrinking, the test's own server) is not the backend's. So a cycle
            # that seems to keep memory is measured once more: a real leak keeps it again.
            for attempt in (1, 2):
                measured = self._load_unload()
                if measured is None:
                    c.ok, c.detail = None, "resident memory cannot be read on this system"
                    return
                took, kept, estimate = measured
                c.detail = (f"load took {took / MIB:.0f} MiB, {kept / MIB:.0f} MiB still held "
                            "after unload" + (" (measured twice)" if attempt == 2 else ""))
                if kept <= max(floor / 2, took / 4):
                    break
            assert kept <= max(floor / 2, took / 4), c.detail
        with self.check("memory_estimate() fits the measured load") as e:
            self.steps.check()
            if took is None:
                e.ok, e.detail = None, "the measured load failed, so there is nothing to compare"
                return
            e.detail = f"estimate {estimate / MIB:.0f} MiB, measured {took / MIB:.0f} MiB"
            if max(estimate, took) < floor:
                e.detail += f" (both under {floor / MIB:.0f} MiB: close enough)"
                return
            assert estimate > 0, f"{e.detail}: memory_estimate() says nothing"
            ratio = max(estimate, floor) / max(took, floor)
            assert 1 / factor <= ratio <= factor, f"{e.detail}: off by more than {factor:g}x"

    def _load_unload(self) -> tuple[int, int, int] | None:
        """One load and unload of a new instance: (RSS it took, RSS still held after unload,
        its memory_estimate()); None where RSS cannot be read."""
        release_memory()
        before = _rss()
        if before is None:
            return None
        instance = self.cls(self.parsed, self.context)
        self.steps.call("load", self.limits.load_s, instance.load)
        loaded, estimate = _rss() or 0, instance.memory_estimate()
        self.steps.call("unload", self.limits.unload_s, instance.unload)
        release_memory()
        after = _rss() or 0  # the instance still exists: unload() itself must free
        if after - before > (loaded - before) / 4:
            time.sleep(1.0)  # a moment for another thread's memory to go
            release_memory()
            after = min(after, _rss() or after)
        del instance
        return loaded - before, after - before, estimate

    def memory_needed(self) -> None:
        """What the backend claims before loading, judged against this machine."""
        with self.check("memory_needed() fits this machine") as c:
            need = self.steps.call("memory_needed()", None,
                                   lambda: self.cls.memory_needed(self.parsed, self.context))
            if need is None:
                c.ok, c.detail = None, "it says nothing: the host admits the model unchecked"
                return
            problem = implausible(need)
            assert problem is None, problem
            c.detail = claimed(need)

    def chunks(self, stream: Iterator[Audio], text: str) -> Iterator[Audio]:
        """``stream``'s chunks, each under the request's deadline (as the host's workers)."""
        deadline = self.limits.request_deadline_s(text)
        while (chunk := self.steps.call("stream", deadline,
                                        lambda: next(stream, None))) is not None:
            yield chunk

    def expect_bad_request(self, instance: Backend, request: SpeechRequest) -> None:
        try:
            self.synthesize(instance, request)
        except BadRequest:
            return
        except (StepSkipped, StepTimedOut):
            raise
        except Exception as exc:  # noqa: BLE001 - the wrong kind of error is the failure
            raise AssertionError(f"options {dict(request.options)}: {type(exc).__name__}: "
                                 f"{exc} (expected alltalk_host.BadRequest)") from None
        raise AssertionError(f"options {dict(request.options)} were accepted")

    def request(self, text: str, **fields: Any) -> SpeechRequest:
        fields.setdefault("options", self.options)
        fields.setdefault("language", self.language or "en")
        return SpeechRequest(text=text, **fields)


@dataclass(frozen=True)
class _WarmUp:
    """The settings of the host's config that the warm-up reads (no voice library)."""

    warmup_text: str = WARMUP_TEXT
    default_language: str = "en"
    voices: Mapping[str, Any] = field(default_factory=dict)


def _reference_sample(path: Path, rate: int, seconds: float, amplitude: float) -> VoiceSample:
    """A speech-like recording (a 140 Hz harmonic stack in syllables) as a library sample."""
    import hashlib
    import wave

    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    signal = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    signal = signal * np.sin(2 * np.pi * 4 * t) ** 2
    pcm = (amplitude * signal / np.max(np.abs(signal)) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    data = path.read_bytes()
    return VoiceSample(name=f"conformance-{path.stem}", path=path,
                       sha256=hashlib.sha256(data).hexdigest(), file=f"voices/{path.name}",
                       size=len(data), seconds=seconds)


def _model(cls: type[Backend], raw: dict[str, Any], parsed: Any) -> ModelDef:
    return ModelDef(name="conformance", backend=cls.name, settings=raw, parsed=parsed)


def _sample(items: list[str], n: int) -> list[str]:
    """The first item and a fixed pseudo-random pick of the rest: the same on every run."""
    if len(items) <= n:
        return items
    return [items[0], *random.Random(15).sample(items[1:], n - 1)]


def _expect_value_error(cls: type[Backend], settings: Mapping[str, Any], key: str) -> None:
    try:
        cls.validate_settings(settings)
    except ValueError as exc:
        assert key in str(exc), f"the error does not name {key!r}: {exc}"
        return
    raise AssertionError(f"settings {dict(settings)} were accepted")


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


__all__ = ["Check", "Report", "WorkerLimits", "assert_conforms", "check_backend"]
