"""``WorkerBackend``: one backend instance in a worker process, behind the ``Backend`` interface.

The host calls it as it calls any backend; the instance itself lives in a child process the
host can stop (``supervisor.py`` keeps it alive, ``calls.py`` runs each request). What the
interface adds:

- ``synthesize_within(request, timeout)`` and ``stream_within(request, chunk_timeout)``: past
  the deadline the worker is killed and the call raises 503 ``backend_timeout``. The plain
  ``synthesize`` and ``stream`` take ``limits.request_deadline_s(text)`` (for a stream, per
  chunk); the host's warm-up should call ``synthesize_within(request, limits.warmup_s)``.
- ``load()`` gives up at ``limits.load_s`` (ApplyFailed ``load_timed_out``); ``unload()``
  never calls the backend's unload beside a running call, kills the worker past
  ``limits.unload_s`` and never raises (``unload_error`` says what went wrong);
  ``kill(reason)`` ends it for good. ``warming()`` is the instance as a warm-up sees it.
- ``voices()``, ``status()``, ``capabilities`` and ``sample_rate`` answer from the facts the
  worker last sent; ``memory_estimate()`` measures the process; ``worker()`` is its status.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..backend import Audio, Backend, Capabilities, ModelContext, SpeechRequest
from . import protocol as p
from .calls import Call
from .link import Link, WorkerDied
from .processes import WorkerGroup, memory_of
from .supervisor import Supervisor, WorkerState

__all__ = ["WorkerBackend", "WorkerDied", "WorkerState"]


class WorkerBackend(Backend):
    """A proxy with the ``Backend`` interface for one instance of ``backend_class`` in a
    worker process of ``group``. ``check_after_restart(backend)`` (the host's warm-up) runs on
    a restarted worker before it takes calls; a failure counts as a failed restart.
    ``on_worker(info)`` hears its process end, come back after a restart, or give up
    (``info`` is ``worker()`` plus ``change``: "ended", "restarted" or "gave_up")."""

    name = "worker"

    def __init__(self, backend_class: type[Backend], settings: Any, context: ModelContext, *,
                 group: WorkerGroup, limits: p.WorkerLimits | None = None,
                 check_after_restart: Callable[[Backend], None] | None = None,
                 on_worker: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(settings, context)
        self.backend_class = backend_class
        self.limits = limits or p.WorkerLimits()
        self._facts: p.Facts | None = None
        self._check_after_restart = check_after_restart
        self._supervisor = Supervisor(
            group, self.limits, context.name, f"model {context.name} ({backend_class.name})",
            self._spec, self._on_message,
            warm=self._warm if check_after_restart is not None else None, on_change=on_worker,
            preload=tuple(backend_class.worker_preload) if self.limits.preload_spare else ())

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> Any:
        raise TypeError("a WorkerBackend takes settings its backend class has parsed")

    # --- what the host reads without a call ------------------------------------------------

    @property  # type: ignore[override]
    def capabilities(self) -> Capabilities:
        facts = self._facts
        return facts.capabilities if facts else self.backend_class.capabilities

    @property
    def sample_rate(self) -> int:
        return self._loaded_facts().sample_rate

    def voices(self) -> list[str]:
        return list(self._loaded_facts().voices)

    def status(self) -> dict[str, Any]:
        return dict(self._loaded_facts().status)

    def memory_estimate(self) -> int:
        """The worker's resident memory, plus its GPU memory where NVML measures it (else the
        larger of the RSS and the backend's own figure, which may count device memory the
        host cannot see)."""
        link = self._supervisor.link
        if link is None or link.exited.is_set():
            return 0
        rss, gpu = memory_of(link.pid)
        if gpu is not None:
            return rss + gpu
        facts = self._facts
        return max(rss, facts.memory_estimate if facts else 0)

    @property
    def state(self) -> WorkerState:
        return self._supervisor.state

    @property
    def accepting(self) -> bool:
        """Whether a call made now would reach a loaded worker (no wait for a restart)."""
        return self._supervisor.accepting

    @property
    def loading(self) -> bool:
        return self._supervisor.loading

    def worker(self) -> dict[str, Any]:
        """For status: pid, state, restarts, last exit, calls running and their ages, memory
        (``rss``, ``gpu_bytes``: None where NVML cannot tell)."""
        return self._supervisor.info()

    # --- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        self._supervisor.load()

    def unload(self) -> None:
        self._supervisor.unload()

    @property
    def unload_error(self) -> BaseException | None:
        """Why the unload did not end cleanly (it is logged): 503 ``backend_timeout`` past
        ``limits.unload_s`` (the worker was killed), the backend's own error, or WorkerDied."""
        return self._supervisor.unload_error

    def warming(self) -> Backend:
        """The loaded instance with ``synthesize`` under ``limits.warmup_s`` instead of the
        request deadline, for a warm-up run by hand (``alltalk-host try``)."""
        return _Warming(self, self._supervisor.ready_link())

    def kill(self, reason: str) -> None:
        """End the worker now, for good (no restart): its calls fail with WorkerDied."""
        self._supervisor.kill(reason)

    # --- calls -------------------------------------------------------------------------------

    def synthesize(self, request: SpeechRequest) -> Audio:
        return self.synthesize_within(request, self.limits.request_deadline_s(request.text))

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        return self.stream_within(request, self.limits.request_deadline_s(request.text))

    def synthesize_within(self, request: SpeechRequest, timeout: float) -> Audio:
        """``synthesize`` with a deadline: past it the worker is killed (503 backend_timeout)."""
        return self._synthesize_on(self._supervisor.ready_link(), request, timeout)

    def stream_within(self, request: SpeechRequest, chunk_timeout: float) -> Iterator[Audio]:
        """``stream`` with a deadline for each chunk (from the call or the chunk before)."""
        call = Call(self._supervisor.ready_link(), "stream", request)
        self._supervisor.started(call)
        try:
            while True:
                kind, payload = call.next(chunk_timeout)
                if kind == p.END:
                    return
                try:
                    yield payload
                except BaseException:  # the consumer stopped pulling (closed, or an error)
                    call.stop(chunk_timeout)
                    raise
        finally:
            call.close()
            self._supervisor.ended(call, call.answered)

    def _synthesize_on(self, link: Link, request: SpeechRequest, timeout: float,
                       counted: bool = True) -> Audio:
        call = Call(link, "synthesize", request)
        if counted:
            self._supervisor.started(call)
        try:
            return call.next(timeout)[1]
        finally:
            call.close()
            if counted:
                self._supervisor.ended(call, call.answered)

    # --- what the supervisor asks of the proxy -------------------------------------------

    def _spec(self) -> bytes:
        return pickle.dumps(p.LoadSpec(
            self.backend_class, self.settings, self.context.name, self.context.models_dir,
            self.context.cache_dir, logging.getLogger().getEffectiveLevel(), dict(os.environ)))

    def _on_message(self, kind: str, payload: Any) -> None:
        if kind == p.FACTS:
            self._facts = payload
        elif kind == p.PROGRESS:
            self.context.progress(*payload)
        elif kind == p.LOG:
            logger = logging.getLogger(payload["name"])
            if logger.isEnabledFor(payload["levelno"]):
                logger.handle(logging.makeLogRecord(payload))

    def _warm(self, link: Link) -> None:
        assert self._check_after_restart is not None
        self._check_after_restart(_Warming(self, link))

    def _loaded_facts(self) -> p.Facts:
        facts = self._facts
        if facts is None:
            raise RuntimeError(f"model {self.context.name} is not loaded")
        return facts


class _Warming(Backend):
    """A worker as the warm-up sees it: calls go to its process with the warm-up deadline
    (a restarted one before it takes the host's calls; ``WorkerBackend.warming()``)."""

    name = "worker-warming"

    def __init__(self, proxy: WorkerBackend, link: Link) -> None:
        super().__init__(proxy.settings, proxy.context)
        self._proxy = proxy
        self._link = link
        self.capabilities = proxy.capabilities

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> Any:
        raise TypeError("not a backend class")

    def load(self) -> None:
        raise RuntimeError("a warming worker is loaded already")

    def unload(self) -> None:
        raise RuntimeError("a warming worker is unloaded by its supervisor")

    @property
    def sample_rate(self) -> int:
        return self._proxy.sample_rate

    def voices(self) -> list[str]:
        return self._proxy.voices()

    def synthesize(self, request: SpeechRequest) -> Audio:
        return self._proxy._synthesize_on(self._link, request, self._proxy.limits.warmup_s,
                                          counted=False)
