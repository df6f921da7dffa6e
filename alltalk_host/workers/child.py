"""The worker's side: one backend instance in a process of its own, driven over a socket.

``main(fd)`` runs in a fresh interpreter the host started (``processes.py``). Its main thread
only reads the socket, so a ``cancel`` reaches a call that is running: load, every call and
unload each run on a thread of their own. The worker sends back results and stream chunks,
errors as parts (``protocol.encode_error``), its log records (the host re-emits them under
their own logger names), the backend's load progress, and the facts the host reads without a
call (voices, status, capabilities, sample rate, the backend's memory estimate) whenever they
change: after load, after each call, and once a second (a voice file added to a folder shows
without a call).

It dies with the host (PR_SET_PDEATHSIG on Linux, or when the socket closes) and ignores
SIGINT: Ctrl-C in a terminal reaches the whole process group, and the host decides how its
workers end.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np

from ..backend import Audio, Backend, ModelContext, SpeechRequest
from ..errors import BadAudio
from . import protocol as p

FACTS_EVERY_S = 1.0
PRELOAD_AFTER_IDLE_S = 10.0  # a spare's heavy imports wait for this long without a message
_PR_SET_PDEATHSIG = 1


def main(fd: int, host_pid: int | None = None, preload: Sequence[str] = (),
         preload_after_s: float = PRELOAD_AFTER_IDLE_S) -> None:
    """Serve the host on socket ``fd`` until it unloads the instance or goes away."""
    _die_with_host(host_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_inheritable(fd, False)  # an engine's own child processes must not hold the socket
    conn = Connection(fd)
    # A spare pays for heavy imports before it is needed, once nothing has asked anything of
    # it for a while: one is started as the load that took the previous spare begins, and
    # its imports would compete with that load's warm-up for the CPU (on 2 cores a tiny XTTS
    # swap took 4.6 s instead of 1.5: docs/benchmarks.md). A load that comes first imports
    # what it needs itself.
    if preload and not conn.poll(preload_after_s):
        for module in preload:
            # One that fails is imported again by load(), which then says why.
            with contextlib.suppress(Exception):
                importlib.import_module(module)
    worker = _Worker(conn)
    worker.send(p.READY, 0, None)
    worker.run()
    os._exit(0)  # not sys.exit: an engine's non-daemon threads must not keep the process


def _die_with_host(host_pid: int | None) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if host_pid is not None and os.getppid() != host_pid:
        os._exit(0)  # the host died before prctl took effect


class _Forward(logging.Handler):
    """Every record, as plain fields, to the host (which applies its own handlers)."""

    def __init__(self, send: Callable[[str, int, Any], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = logging.Formatter().formatException(record.exc_info)
            self._send(p.LOG, 0, {
                "name": record.name, "levelno": record.levelno,
                "levelname": record.levelname, "msg": record.getMessage(), "args": None,
                "exc_text": exc_text, "stack_info": record.stack_info,
                "created": record.created, "msecs": record.msecs,
                "pathname": record.pathname, "filename": record.filename,
                "module": record.module, "lineno": record.lineno, "funcName": record.funcName,
                "threadName": record.threadName, "process": os.getpid()})
        except Exception:  # noqa: BLE001 - logging must never raise into the backend
            self.handleError(record)


class _Worker:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()  # one message at a time on the socket
        self._backend: Backend | None = None
        self._cancels: dict[int, threading.Event] = {}
        self._facts_lock = threading.Lock()  # facts are never read while unload() runs
        self._last_facts = b""
        self._unloading = False
        root = logging.getLogger()
        root.handlers[:] = [_Forward(self.send)]
        logging.captureWarnings(True)

    def send(self, kind: str, call_id: int, payload: Any) -> None:
        data = ForkingPickler.dumps((kind, call_id, payload))
        if len(data) > p.MAX_MESSAGE_BYTES:
            data = ForkingPickler.dumps(_oversized(kind, call_id, len(data)))
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
        except (OSError, EOFError):
            os._exit(0)  # the host is gone: nobody to serve

    def run(self) -> None:
        while True:
            try:
                kind, call_id, payload = self._conn.recv()
            except (OSError, EOFError):
                return
            if kind == p.LOAD:
                _thread(self._load, payload)
            elif kind == p.CALL:
                cancelled = self._cancels[call_id] = threading.Event()
                _thread(self._call, call_id, *payload, cancelled)
            elif kind == p.CANCEL:
                event = self._cancels.get(call_id)
                if event is not None:
                    event.set()
            elif kind == p.UNLOAD:
                _thread(self._unload)

    def _load(self, spec_bytes: bytes) -> None:
        try:
            # Unpickled here, not in the reader: it imports the plugin, which may be slow.
            spec: p.LoadSpec = pickle.loads(spec_bytes)
            logging.getLogger().setLevel(spec.log_level)
            # The host's variables, but this process's PYTHONPATH (the host's sys.path), which
            # an engine's own Python subprocesses need as much as this one did.
            os.environ.update({k: v for k, v in spec.environ.items() if k != "PYTHONPATH"})
            for gone in set(os.environ) - set(spec.environ) - {"PYTHONPATH"}:
                del os.environ[gone]
            context = ModelContext(spec.name, spec.models_dir, spec.cache_dir,
                                   progress=self._progress)
            backend = spec.backend(spec.settings, context)
            self._backend = backend  # before load(): unload() releases a half-done load
            backend.load()
            facts = self._facts()
        except BaseException as exc:  # noqa: BLE001 - the host reports it
            self.send(p.ERROR, 0, p.encode_error(exc))
            return
        self.send(p.LOADED, 0, facts)
        _thread(self._refresh_facts)

    def _progress(self, message: str, fraction: float | None = None) -> None:
        with contextlib.suppress(Exception):  # the contract: progress never raises
            self.send(p.PROGRESS, 0, (str(message), fraction))

    def _call(self, call_id: int, method: str, fields: dict[str, Any],
              cancelled: threading.Event) -> None:
        backend = self._backend
        try:
            if backend is None:
                raise RuntimeError("the worker has no loaded backend")
            request = SpeechRequest(**fields, cancelled=cancelled)
            if method == "synthesize":
                self.send(p.RESULT, call_id, _plain(backend.synthesize(request)))
            else:
                for chunk in backend.stream(request):
                    self.send(p.CHUNK, call_id, _plain(chunk))
                    if cancelled.is_set():  # the host stopped pulling, as it does inline
                        break
                self.send(p.END, call_id, None)
        except BaseException as exc:  # noqa: BLE001 - the caller gets it
            self.send(p.ERROR, call_id, p.encode_error(exc))
        finally:
            self._cancels.pop(call_id, None)
        self._send_facts()

    def _unload(self) -> None:
        with self._facts_lock:
            self._unloading = True
        try:
            if self._backend is not None:
                self._backend.unload()
        except BaseException as exc:  # noqa: BLE001 - the host logs it; the process ends
            self.send(p.ERROR, 0, p.encode_error(exc))
        else:
            self.send(p.UNLOADED, 0, None)
        os._exit(0)

    def _facts(self) -> p.Facts:
        backend = self._backend
        assert backend is not None
        return p.Facts(
            sample_rate=int(backend.sample_rate),
            voices=tuple(_asked(backend.voices, [])),
            capabilities=backend.capabilities,
            status=_data(_asked(backend.status, {})),
            memory_estimate=int(_asked(backend.memory_estimate, 0)),
        )

    def _send_facts(self) -> None:
        with self._facts_lock:
            if self._unloading or self._backend is None:
                return
            try:
                facts = self._facts()
                data = pickle.dumps(facts)
            except Exception:  # facts are best effort; calls carry on
                logging.getLogger(__name__).warning("facts of the backend", exc_info=True)
                return
            if data == self._last_facts:
                return
            self._last_facts = data
        self.send(p.FACTS, 0, facts)

    def _refresh_facts(self) -> None:
        while not self._unloading:
            time.sleep(FACTS_EVERY_S)
            self._send_facts()


def _asked(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception:  # as inline, a failing status() is logged, not fatal
        logging.getLogger(__name__).warning("%s() failed", fn.__name__, exc_info=True)
        return default


def _data(value: Any) -> Any:
    """Status as plain data: what unpickles in any host (an engine's device object becomes its
    text, so reading status never imports the engine into the host)."""
    if isinstance(value, dict):
        return {str(k): _data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_data(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _plain(audio: Audio) -> Audio:
    """The audio as numpy, so unpickling it never imports an engine's types (a CPU tensor)."""
    if not isinstance(audio, Audio):
        raise TypeError(f"the backend returned {type(audio).__name__}, not an Audio")
    return Audio(np.asarray(audio.samples), int(audio.sample_rate))


def _thread(target: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def _oversized(kind: str, call_id: int, size: int) -> tuple[str, int, Any]:
    """What is sent instead of a message past ``MAX_MESSAGE_BYTES``: the call's (or the
    load's) error naming the size, or for a log line or progress, a note that one was cut."""
    what = (f"the backend's {kind} is {size / 2**20:.0f} MiB, more than the "
            f"{p.MAX_MESSAGE_BYTES // 2**20} MiB one message may carry to the host")
    if call_id != 0:
        return p.ERROR, call_id, p.encode_error(BadAudio(
            f"{what}; a long text streams in chunks (stream=True) or is split",
            details={"bytes": size, "limit": p.MAX_MESSAGE_BYTES}))
    if kind == p.LOADED:
        return p.ERROR, 0, p.encode_error(RuntimeError(f"{what} (its voices or status)"))
    return p.LOG, 0, {"name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                      "msg": f"{what}: not sent", "process": os.getpid()}
