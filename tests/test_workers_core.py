"""Issue 23, the core: one backend instance in a worker process behind ``WorkerBackend``, driven
directly (no host). The reference backend misbehaves on purpose (``hang_on``, ``crash_on``,
``leak_mb``); ``JournalBackend`` below writes what it is asked to a file, so a test can see what
ran inside the worker. Deadlines here are short (2 s) only where something must hang; nothing
asserts how long a step took."""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import alltalk_host_reference
from alltalk_host import Audio, Backend, BadRequest, ModelContext, SpeechRequest, parse_settings
from alltalk_host.errors import ApplyFailed, Code, HostError
from alltalk_host.workers import (
    WorkerBackend,
    WorkerDied,
    WorkerGroup,
    WorkerLimits,
    WorkerState,
)
from alltalk_host.workers.link import Link
from alltalk_host.workers.processes import WorkerProcess
from alltalk_host.workers.protocol import (
    MAX_MESSAGE_BYTES,
    RemoteError,
    decode_error,
    encode_error,
)
from alltalk_host_reference import ReferenceBackend

MIB = 1024 * 1024
HANG = WorkerLimits(load_s=2, warmup_s=2, request_s=2, request_per_char_s=0, unload_s=2)


@dataclass(frozen=True)
class JournalSettings:
    journal: str


class JournalBackend(Backend):
    """Appends each thing it is asked to its journal file; a call waits for its cancel (up to
    30 s), so a test decides when it ends. Imported by the worker from this module."""

    name = "journal"

    @classmethod
    def validate_settings(cls, settings: Any) -> JournalSettings:
        return parse_settings(JournalSettings, settings)

    def _note(self, line: str) -> None:
        with open(self.settings.journal, "a", encoding="utf-8") as journal:
            journal.write(line + "\n")

    def load(self) -> None:
        logging.getLogger("tests.journal").info("loaded in pid %d", os.getpid())
        self._note("load")
        if "WORKER_MARK" in os.environ:
            self._note(f"env {os.environ['WORKER_MARK']}")

    def unload(self) -> None:
        self._note("unload")

    @property
    def sample_rate(self) -> int:
        return 16000

    def voices(self) -> list[str]:
        return []

    def synthesize(self, request: SpeechRequest) -> Audio:
        self._note("start")
        if request.cancelled.wait(30):
            self._note("cancelled")
        return Audio(np.full(1600, 0.1, dtype=np.float32), 16000)


class FloodBackend(Backend):
    """Returns more audio in one go than one message may carry when the text starts with
    "Flood" (as a runaway loop would), a short tone otherwise. Imported by the worker."""

    name = "flood"

    @classmethod
    def validate_settings(cls, settings: Any) -> dict[str, Any]:
        return dict(settings)

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    @property
    def sample_rate(self) -> int:
        return 16000

    def voices(self) -> list[str]:
        return []

    def synthesize(self, request: SpeechRequest) -> Audio:
        samples = MAX_MESSAGE_BYTES // 4 + 16 if request.text.startswith("Flood") else 1600
        return Audio(np.full(samples, 0.1, dtype=np.float32), 16000)


class PreloadBackend(JournalBackend):
    """Writes which of its preloads were imported before ``load()`` ran (a module that does
    not exist is skipped, and load() goes on). Imported by the worker."""

    name = "preload"
    worker_preload = ("colorsys", "no_such_module_for_alltalk")

    def load(self) -> None:
        self._note(f"colorsys {'colorsys' in sys.modules} pid {os.getpid()}")

    def synthesize(self, request: SpeechRequest) -> Audio:
        return Audio(np.full(1600, 0.1, dtype=np.float32), 16000)


class RecordingGroup(WorkerGroup):
    """A group that keeps every process it hands out, so a test can see how each ended."""

    def __init__(self) -> None:
        super().__init__(preload_after_s=0.2)  # a spare's preloads: soon, not after 10 s
        self.started: list[WorkerProcess] = []

    def new_process(self, preload: Sequence[str] = ()) -> WorkerProcess:
        process = super().new_process(preload)
        self.started.append(process)
        return process


@pytest.fixture
def group() -> Iterator[RecordingGroup]:
    workers = RecordingGroup()
    yield workers
    workers.kill_all()


@pytest.fixture
def make(group: RecordingGroup, tmp_path: Path) -> Callable[..., WorkerBackend]:
    def make(backend: type[Backend] = ReferenceBackend, limits: WorkerLimits | None = None,
             check: Callable[[Backend], None] | None = None, progress: Any = None,
             **settings: Any) -> WorkerBackend:
        context = ModelContext("m", tmp_path, tmp_path / "cache")
        if progress is not None:
            context = ModelContext("m", tmp_path, tmp_path / "cache", progress=progress)
        return WorkerBackend(backend, backend.validate_settings(settings), context,
                             group=group, limits=limits, check_after_restart=check)
    return make


def until(condition: Callable[[], bool], within: float = 60.0) -> None:
    """Wait for something that happens in the background (never a measure of speed)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "it never happened"
        time.sleep(0.02)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize(("bad", "says"), [
    ({"hang_on": "two words"}, "hang_on: expected one of load, warmup, unload or a single word"),
    ({"crash_on": 3}, "crash_on: expected one of load"),
    ({"hang_on": "boom", "crash_on": "boom"}, "hang_on and crash_on both name 'boom'"),
    ({"leak_mb": -1}, "leak_mb: -1 is outside 0..4096"),
    ({"leak_mb": True}, "leak_mb: expected a number"),
])
def test_the_reference_backends_faults_are_validated(bad, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        ReferenceBackend.validate_settings(bad)


def test_a_worker_loads_speaks_streams_and_unloads_as_inline(make, group, tmp_path):
    heard: list[tuple[str, float | None]] = []
    worker = make(progress=lambda message, fraction=None: heard.append((message, fraction)),
                  max_concurrency=3, voices=["anna", "bert"], memory_mb=16)
    worker.load()
    inline = ReferenceBackend(ReferenceBackend.validate_settings(
        {"max_concurrency": 3, "voices": ["anna", "bert"]}), ModelContext("m", tmp_path, tmp_path))
    inline.load()
    assert worker.state == WorkerState.READY and worker.accepting
    assert heard == [("reading the model file", 0.0)]
    assert worker.voices() == ["anna", "bert"] and worker.sample_rate == 22050
    assert worker.capabilities.max_concurrency == 3  # narrowed in the worker's __init__
    assert worker.status() == {}
    request = SpeechRequest("Hello there. How are you?", voice="bert")
    audio = worker.synthesize(request)
    assert np.array_equal(audio.samples, inline.synthesize(request).samples)
    chunks = list(worker.stream(request))
    assert len(chunks) == 2
    assert np.array_equal(np.concatenate([c.samples for c in chunks]),
                          np.concatenate([c.samples for c in inline.stream(request)]))
    assert worker.memory_estimate() >= 16 * MIB  # the process, measured
    status = worker.worker()
    assert status["pid"] == group.started[0].pid and status["restarts"] == 0
    assert status["running"] == 0 and status["rss"] >= 16 * MIB
    worker.unload()
    assert worker.state == WorkerState.UNLOADED and not worker.accepting
    assert group.started[0].popen.returncode == 0  # it unloaded and exited by itself
    assert worker.memory_estimate() == 0


def test_calls_at_once_each_get_their_own_answer(make):
    worker = make(max_concurrency=4)
    worker.load()
    texts = ["One.", "Two words.", "Three words here.", "Four words are here."]
    runs = [in_thread(lambda text=text: worker.synthesize(SpeechRequest(text)))
            for text in texts]
    inline = ReferenceBackend(ReferenceBackend.validate_settings({}),
                              ModelContext("m", Path("."), Path(".")))
    inline.load()
    for (thread, outcome), text in zip(runs, texts, strict=True):
        thread.join()
        assert np.array_equal(outcome["value"].samples,
                              inline.synthesize(SpeechRequest(text)).samples)
    assert worker.worker()["running"] == 0
    worker.unload()


def test_the_workers_log_records_reach_the_hosts_loggers(make, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    worker = make(JournalBackend, journal=str(tmp_path / "journal"))
    worker.load()
    worker.unload()
    records = [r for r in caplog.records if r.name == "tests.journal"]
    assert [r.levelname for r in records] == ["INFO"]
    assert records[0].getMessage() == f"loaded in pid {records[0].process}"
    assert records[0].process != os.getpid()


def test_a_spare_loads_with_the_hosts_environment_of_the_load(make, group, tmp_path,
                                                              monkeypatch):
    journal = tmp_path / "journal"
    group.prestart()  # the spare's process starts with the environment of now
    monkeypatch.setenv("WORKER_MARK", "set after the spare started")
    worker = make(JournalBackend, journal=str(journal))
    worker.load()
    worker.unload()
    assert journal.read_text().splitlines() == ["load", "env set after the spare started",
                                                "unload"]


def test_a_backend_that_names_heavy_imports_gets_a_spare_with_them_imported(make, group,
                                                                            tmp_path):
    journal = tmp_path / "journal"
    first = make(PreloadBackend, journal=str(journal))
    first.load()
    loaded_first = time.monotonic()
    # A spare like it was started meanwhile (its imports wait until it has been idle a
    # moment: 0.2 s here); the next load of that backend takes it.
    time.sleep(1.0)
    second = make(PreloadBackend, journal=str(journal))
    second.load()
    spare = group.started[1]
    assert spare.started < loaded_first
    # The first process had its load at once: the load imports what it needs itself.
    assert [line.split(" pid ") for line in journal.read_text().splitlines()] == [
        ["colorsys False", str(group.started[0].pid)], ["colorsys True", str(spare.pid)]]
    assert second.worker()["pid"] == spare.pid
    first.unload()
    second.unload()


def test_errors_cross_as_the_same_class_and_code(make):
    worker = make(error_rate=1.0)
    worker.load()
    with pytest.raises(BadRequest) as refused:
        worker.synthesize(SpeechRequest("Hi", options={"pitch": 5}))
    assert refused.value.code == Code.BAD_OPTION and refused.value.status == 400
    assert "pitch: 5" in refused.value.message
    assert "in the worker" in str(refused.value.__cause__)  # the worker's traceback
    with pytest.raises(RuntimeError, match="simulated failure"):
        worker.synthesize(SpeechRequest("Hi"))
    assert worker.accepting and worker.worker()["restarts"] == 0
    worker.unload()


class _EngineError(Exception):
    def __init__(self, handle: Any, message: str) -> None:
        super().__init__(message)
        self.handle = handle


def test_an_error_the_host_cannot_import_arrives_as_text_naming_its_type():
    engine = type("OrtFail", (Exception,), {"__module__": "some_engine.capi"})
    error = decode_error(pickle.loads(pickle.dumps(encode_error(engine("bad graph")))))
    assert isinstance(error, RemoteError) and type(error).__name__ == "OrtFail"
    assert error.original == "some_engine.capi.OrtFail" and str(error) == "bad graph"
    # One that does not pickle back (a required argument, a handle) crosses as text too.
    error = decode_error(encode_error(_EngineError(threading.Lock(), "lost the device")))
    assert isinstance(error, RemoteError) and str(error) == "lost the device"
    # A plugin's own HostError subclass, whatever its __init__, keeps its class and parts.
    rebuilt = decode_error(encode_error(HostError("nope", code="engine_busy", status=429,
                                                  details={"retry": 2})))
    assert type(rebuilt) is HostError and rebuilt.code == "engine_busy"
    assert rebuilt.status == 429 and rebuilt.details == {"retry": 2}


def test_a_hung_load_ends_at_its_deadline_and_its_worker_is_gone(make, group):
    worker = make(limits=HANG, hang_on="load")
    with pytest.raises(ApplyFailed) as failed:
        worker.load()
    assert failed.value.code == Code.LOAD_TIMED_OUT
    assert "load timed out after 2 s" in failed.value.message
    assert worker.state == WorkerState.FAILED
    assert group.started[0].popen.returncode == -signal.SIGKILL
    worker.unload()  # what the host does after a failed load: nothing left to do
    assert worker.state == WorkerState.UNLOADED


def test_a_load_that_raises_keeps_its_worker_for_unload(make, group, tmp_path):
    worker = make(model_file="missing.toml")
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        worker.load()
    assert group.started[0].alive()  # so unload() can release what load() took
    worker.unload()
    assert group.started[0].popen.returncode == 0


def test_a_hung_request_ends_with_backend_timeout_and_the_worker_restarts(make, group):
    worker = make(limits=HANG, hang_on="stuck")
    worker.load()
    with pytest.raises(HostError) as timed_out:
        worker.synthesize(SpeechRequest("I am stuck here"))
    assert timed_out.value.code == Code.BACKEND_TIMEOUT and timed_out.value.status == 503
    assert worker.synthesize(SpeechRequest("Hello")).duration > 0  # waits for the restart
    assert group.started[0].popen.returncode == -signal.SIGKILL
    status = worker.worker()
    assert status["restarts"] == 1 and status["pid"] == group.started[1].pid
    assert "no answer within 2 s" in status["last_exit"]
    worker.unload()


def test_a_crash_fails_only_its_call_and_the_next_call_works(make, group):
    worker = make(crash_on="boom")
    worker.load()
    with pytest.raises(WorkerDied) as died:
        worker.synthesize(SpeechRequest("Say boom now"))
    assert died.value.code == Code.WORKER_CRASHED and died.value.status == 503
    assert "SIGSEGV" in died.value.message
    # The restart runs in a thread of its own; the worker must outlive it (PDEATHSIG fires
    # when the thread that started a process ends, so the group starts them all).
    until(lambda: worker.accepting)
    until(lambda: not any(t.name.startswith("restart") for t in threading.enumerate()))
    assert worker.synthesize(SpeechRequest("Say hello")).duration > 0
    status = worker.worker()
    assert status["restarts"] == 1 and "SIGSEGV" in status["last_exit"]
    worker.unload()


def test_a_worker_killed_between_calls_is_restarted_and_says_so(make, group):
    worker = make()
    worker.load()
    os.kill(worker.worker()["pid"], signal.SIGKILL)
    until(lambda: worker.worker()["restarts"] == 1)
    assert worker.synthesize(SpeechRequest("Hello again")).duration > 0
    status = worker.worker()
    assert status["state"] == "ready" and status["last_exit"] == "killed by signal SIGKILL"
    assert status["pid"] == group.started[1].pid
    worker.unload()


def test_a_restart_whose_warm_up_hangs_gives_up_after_max_restarts(make):
    limits = WorkerLimits(load_s=30, warmup_s=2, request_s=30, unload_s=2, max_restarts=1)
    worker = make(limits=limits, hang_on="warmup",
                  check=lambda backend: backend.synthesize(SpeechRequest("Warm up.")))
    worker.load()
    with pytest.raises(HostError) as timed_out:
        worker.synthesize_within(SpeechRequest("Warm up."), limits.warmup_s)
    assert timed_out.value.code == Code.BACKEND_TIMEOUT
    until(lambda: worker.state == WorkerState.FAILED)
    assert worker.worker()["restarts"] == 1
    with pytest.raises(WorkerDied):
        worker.synthesize(SpeechRequest("Hello"))
    worker.unload()


def test_cancel_reaches_a_running_call_in_the_worker(make, tmp_path):
    journal = tmp_path / "journal"
    worker = make(JournalBackend, journal=str(journal))
    worker.load()
    request = SpeechRequest("Hello")
    thread, outcome = in_thread(lambda: worker.synthesize(request))
    until(lambda: journal.read_text().splitlines()[-1:] == ["start"])
    request.cancelled.set()
    thread.join()
    assert outcome["value"].duration > 0
    assert journal.read_text().splitlines() == ["load", "start", "cancelled"]
    worker.unload()


def test_a_stream_left_by_its_consumer_stops_in_the_worker_without_a_kill(make):
    worker = make()
    worker.load()
    stream = worker.stream(SpeechRequest("One. Two. Three. Four. Five."))
    next(stream)
    stream.close()
    assert worker.worker()["running"] == 0 and worker.worker()["restarts"] == 0
    assert worker.synthesize(SpeechRequest("Still here")).duration > 0
    worker.unload()


def test_unload_never_runs_beside_a_call(make, tmp_path):
    journal = tmp_path / "journal"
    worker = make(JournalBackend, journal=str(journal))
    worker.load()
    thread, outcome = in_thread(lambda: worker.synthesize(SpeechRequest("Hello")))
    until(lambda: worker.worker()["running"] == 1 and "start" in journal.read_text())
    worker.unload()
    thread.join()
    assert isinstance(outcome["error"], WorkerDied)
    assert journal.read_text().splitlines() == ["load", "start"]  # unload() never ran
    # With nothing running, the backend's own unload() runs, once.
    idle = make(JournalBackend, journal=str(tmp_path / "idle"))
    idle.load()
    idle.unload()
    idle.unload()
    assert (tmp_path / "idle").read_text().splitlines() == ["load", "unload"]


def test_a_hung_unload_is_killed_at_its_deadline(make, group):
    worker = make(limits=HANG, hang_on="unload")
    worker.load()
    worker.unload()  # never raises: the host only logs it
    assert worker.state == WorkerState.UNLOADED
    assert group.started[0].popen.returncode == -signal.SIGKILL
    assert isinstance(worker.unload_error, HostError)
    assert worker.unload_error.code == Code.BACKEND_TIMEOUT


def test_a_warm_up_by_hand_has_the_warm_up_deadline(make):
    worker = make(limits=WorkerLimits(warmup_s=1, max_restarts=0), hang_on="warmup")
    worker.load()
    with pytest.raises(HostError) as timed_out:  # not the request's 60 s
        worker.warming().synthesize(SpeechRequest("Hello"))
    assert timed_out.value.code == Code.BACKEND_TIMEOUT
    assert timed_out.value.details["timeout_s"] == 1
    worker.unload()


def test_an_unload_that_crashes_says_so(make, group):
    worker = make(crash_on="unload")
    worker.load()
    worker.unload()
    assert worker.state == WorkerState.UNLOADED
    assert isinstance(worker.unload_error, WorkerDied)
    assert worker.unload_error.details["exit"] == "killed by signal SIGSEGV"
    clean = make()
    clean.load()
    clean.unload()
    assert clean.unload_error is None


def test_kill_loading_abandons_a_hung_load(make, group):
    worker = make(hang_on="load")  # the default deadline, 300 s: only the kill ends it
    thread, outcome = in_thread(worker.load)
    until(lambda: worker.loading and bool(group.started))
    assert group.kill_loading() == 1
    thread.join()
    assert isinstance(outcome["error"], WorkerDied)
    assert "shutting down" in outcome["error"].message
    assert worker.state == WorkerState.FAILED


def test_leaked_memory_goes_with_the_worker(make, group):
    host = psutil.Process()
    before = host.memory_info().rss
    worker = make(leak_mb=64, memory_mb=0)
    worker.load()
    assert worker.memory_estimate() >= 64 * MIB  # measured in the worker, not estimated
    assert alltalk_host_reference._LEAKED == []  # the leak is not in this process
    worker.unload()
    assert group.started[0].popen.returncode == 0
    assert host.memory_info().rss - before < 32 * MIB


def test_a_result_too_big_for_one_message_fails_its_call_and_the_worker_serves_on(make):
    worker = make(FloodBackend)
    worker.load()
    with pytest.raises(HostError) as refused:
        worker.synthesize(SpeechRequest("Flood the host"))
    assert refused.value.code == Code.BAD_AUDIO and refused.value.status == 502
    assert "more than the 256 MiB one message may carry" in refused.value.message
    assert worker.synthesize(SpeechRequest("Hello")).duration == 0.1
    assert worker.worker()["restarts"] == 0
    worker.unload()


def test_a_message_past_the_limit_that_reaches_the_host_ends_the_worker_unread():
    """The host's own bound, for a worker whose check was bypassed: a length past it is
    refused before a byte of the body is read, and the worker is killed to restart."""
    host_end, child_end = socket.socketpair()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended: list[str] = []
    link = Link(WorkerProcess(sleeper, Connection(host_end.detach())), "m", "model m (flood)",
                lambda kind, payload: None, lambda link, reason: ended.append(reason))
    _, inbox = link.open_call()
    child_end.sendall(struct.pack("!i", -1) + struct.pack("!Q", 4 * MAX_MESSAGE_BYTES))
    kind, error = inbox.get(timeout=30)
    child_end.close()
    assert kind == "died" and isinstance(error, WorkerDied)
    assert link.ended_by == "it sent a message past the 256 MiB limit" and link.restart_after
    assert "past the 256 MiB limit" in error.message and ended
    assert sleeper.wait(10) == -signal.SIGKILL


def test_a_worker_imports_the_hosts_modules_whatever_its_working_folder(make, tmp_path,
                                                                       monkeypatch):
    shadow = tmp_path / "elsewhere" / "alltalk_host"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('another checkout shadowed me')\n")
    monkeypatch.chdir(shadow.parent)  # `python -c` would put this folder first on sys.path
    worker = make()
    worker.load()
    assert worker.synthesize(SpeechRequest("Hello")).duration > 0
    worker.unload()
