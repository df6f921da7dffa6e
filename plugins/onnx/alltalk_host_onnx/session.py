"""One voice's onnxruntime session: its execution providers chosen from the settings, CUDA
checked after creation (or the reason it is missing kept), and its runs, with the arena policy
and the move to the CPU when a run fails inside the CUDA provider.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from .cuda import Captured, DeviceUse, captured_output, fallback_reason, preload_cuda_libraries

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)  # the ones that take a device_id and run on CUDA
NO_ONNXRUNTIME = ("onnxruntime is not installed: install alltalk-host-onnx[cpu] (or [gpu] for "
                  "onnxruntime-gpu; never both)")


class SessionError(Exception):
    """onnxruntime could not load the model file at all."""


class SessionSettings(Protocol):
    """What a session reads of the backend's settings (``backend.OnnxSettings``)."""

    @property
    def providers(self) -> str | tuple[str, ...]: ...
    @property
    def device_id(self) -> int: ...
    @property
    def intra_op_threads(self) -> int: ...
    @property
    def arena_rest_s(self) -> float: ...
    @property
    def wants_cuda(self) -> bool: ...


def choose_providers(settings: SessionSettings, available: list[str]) -> list[Any]:
    """The providers list for onnxruntime, with their options, from the ``providers``
    setting and what this onnxruntime offers."""
    setting = settings.providers
    cuda = (CUDA, {"device_id": settings.device_id,
                   "cudnn_conv_algo_search": "HEURISTIC",
                   # the arena grows by what a run needs, not to the next power of two
                   "arena_extend_strategy": "kSameAsRequested"})
    tensorrt = (TENSORRT, {"device_id": settings.device_id})
    if setting == "auto":
        return [cuda, CPU] if CUDA in available else [CPU]
    if setting == "cpu":
        return [CPU]
    wanted = [CUDA, CPU] if setting == "cuda" else list(setting)
    missing = [p for p in wanted if p not in available]
    if missing:
        raise RuntimeError(f"execution providers {missing} are not available in this "
                           f"onnxruntime (available: {available}); for CUDA install "
                           "alltalk-host-onnx[gpu] instead of [cpu]")
    return [cuda if p == CUDA else tensorrt if p == TENSORRT else p for p in wanted]


def lane_threads(settings: SessionSettings, lanes: int) -> int | None:
    """The intra-op threads of the session the lanes share; None: onnxruntime's own choice."""
    if settings.intra_op_threads:
        return settings.intra_op_threads
    if lanes > 1:  # the lanes share the cores, they do not oversubscribe them
        return max(1, (os.cpu_count() or 1) // lanes)
    # onnxruntime's own choice: a pinned thread per physical core, measured ~3 % faster here
    # than asking for the same count explicitly.
    return None


def on_one_cpu_thread(settings: SessionSettings, lanes: int) -> bool:
    """Whether the lanes' session will run on the CPU alone, one thread per run: where the
    decoder's 2-D form is the faster (conv2d.py)."""
    try:
        import onnxruntime as ort
        if choose_providers(settings, ort.get_available_providers()) != [CPU]:
            return False
    except (ImportError, RuntimeError):
        return False  # the session's own creation says why
    threads = lane_threads(settings, lanes)
    return threads == 1 or (threads is None and os.cpu_count() == 1)


@contextlib.contextmanager
def _as_file(model: Path | bytes) -> Iterator[Path]:
    """The model as a file: a model in memory is written to a temporary one for the session's
    creation. onnxruntime keeps the bytes a session was made from for as long as it lives (its
    own comment says so), a copy of the weights; from a file it keeps nothing."""
    if isinstance(model, Path):
        yield model
        return
    with tempfile.TemporaryDirectory(prefix="alltalk-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(model)
        yield path


class Session:
    """An onnxruntime InferenceSession and what is known about where it runs."""

    def __init__(self, model: Path | bytes, settings: SessionSettings, name: str,
                 lanes: int = 1, solo: bool = False) -> None:
        """``model``: the model file, or a model in memory (conv2d.py's rewrite). ``solo``:
        the session a sentence running alone uses: onnxruntime's own threads (all cores),
        whatever ``intra_op_threads`` says for the lanes."""
        try:
            import onnxruntime as ort
            from onnxruntime.capi.onnxruntime_pybind11_state import EPFail
        except ImportError:
            raise RuntimeError(NO_ONNXRUNTIME) from None
        self.settings, self.name, self.lanes, self.solo = settings, name, lanes, solo
        # A solo session exists only beside a CPU one (the backend's rule): CPU, and no
        # second try of CUDA.
        providers = [CPU] if solo else choose_providers(settings,
                                                        ort.get_available_providers())
        self.requested = [p if isinstance(p, str) else p[0] for p in providers]
        wants_gpu = any(p in GPU_PROVIDERS for p in self.requested)
        printed, before = "", None
        if wants_gpu:
            printed = preload_cuda_libraries(ort)
            before = DeviceUse.now()
        with captured_output() if wants_gpu else contextlib.nullcontext(Captured()) as out:
            try:
                with _as_file(model) as path:
                    self.ort_session = ort.InferenceSession(
                        str(path), sess_options=self._options(ort), providers=providers)
            except Exception as exc:
                raise SessionError(str(exc)) from exc
        # Runs that fail on CUDA move to the CPU here, saying why (run), not inside onnxruntime.
        self.ort_session.disable_fallback()
        got = self.ort_session.get_providers()
        self.on_gpu = any(p in got for p in GPU_PROVIDERS)
        self.cuda_fallback: str | None = None  # why not on CUDA, when CUDA was asked for
        if wants_gpu and not self.on_gpu:
            # onnxruntime-gpu runs on the CPU when CUDA cannot start, printing why: say so.
            reason = fallback_reason(ort, printed + out.text, settings.device_id)
            if settings.wants_cuda:
                raise RuntimeError(f"CUDA was asked for but onnxruntime runs on {got}: {reason}")
            log.warning("model %s: CUDA is available to onnxruntime but the session runs on "
                        "%s: %s", name, got, reason)
            self.cuda_fallback = reason
        self.memory: dict[str, Any] = {}  # the load's device memory, on CUDA
        if before is not None and self.on_gpu:
            after = DeviceUse.now()
            if after is not None:
                self.memory = after.taken_since(before)
        self.ep_fail = EPFail
        self.run_options = self._run_options(ort)
        self._fallback_lock = threading.Lock()
        # A tiny input the backend sets after load: the run that shrinks a rested arena.
        self.rest_feeds: dict[str, Any] | None = None
        self._arena = threading.Lock()
        self._busy = 0  # runs in progress
        self._grown = False  # a long run since the arena was last shrunk
        self._timer: threading.Timer | None = None
        self._closed = False

    def _options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        threads = None if self.solo else lane_threads(self.settings, self.lanes)
        if threads is not None:
            options.intra_op_num_threads = threads
        return options

    def _run_options(self, ort: Any) -> tuple[Any, Any]:
        """Run options that keep the arena, and ones that shrink it after the run: a long
        sentence grows the arena by hundreds of MiB (tools/bench_onnx_arena.py), which it
        would otherwise keep for good, one arena per instance; it is shrunk once the voice
        rests (``run``)."""
        shrink = ort.RunOptions()
        devices = "cpu:0" + (f";gpu:{self.settings.device_id}" if self.on_gpu else "")
        shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", devices)
        return ort.RunOptions(), shrink

    @property
    def providers(self) -> list[str]:
        """Asked of onnxruntime each time: a run that failed on CUDA moves the session."""
        return list(self.ort_session.get_providers())

    def input_names(self) -> set[str]:
        return {i.name for i in self.ort_session.get_inputs()}

    def run(self, feeds: dict[str, Any], long: bool = False) -> Any:
        """The model's outputs for ``feeds``. After a ``long`` run (the backend's
        ``arena_shrink_above``), once no run has been in progress for ``arena_rest_s``, a run
        of ``rest_feeds`` hands the memory the arena grew back (with 0, the long run does)."""
        keep, shrink = self.run_options
        if long and not self.settings.arena_rest_s:
            return self._run(feeds, shrink)
        with self._arena:
            self._busy += 1
        try:
            return self._run(feeds, keep)
        finally:
            with self._arena:
                self._busy -= 1
                self._grown = self._grown or long
                if self._grown and not self._busy and not self._closed:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = threading.Timer(self.settings.arena_rest_s, self._rested)
                    self._timer.daemon = True
                    self._timer.start()

    def close(self) -> None:
        """No more shrinking runs (the backend unloads)."""
        with self._arena:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()

    def _rested(self) -> None:
        with self._arena:
            if self._closed or self._busy or not self._grown or self.rest_feeds is None:
                return  # closed, or busy again: the run that ends re-arms it
            self._grown = False
            self._busy += 1
        try:
            self._run(self.rest_feeds, self.run_options[1])
        except Exception:  # the memory stays grown until the next long run has rested
            log.debug("model %s: the arena-shrinking run failed", self.name, exc_info=True)
        finally:
            with self._arena:
                self._busy -= 1

    def _run(self, feeds: dict[str, Any], options: Any) -> Any:
        try:
            return self.ort_session.run(None, feeds, options)
        except self.ep_fail as exc:
            if not self.on_gpu:
                raise
            self._fall_back_to_cpu(exc)
            return self.ort_session.run(None, feeds, options)

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        """A run failed inside the CUDA provider: with providers = "auto" the session moves to
        the CPU, once, saying why; asked for CUDA explicitly, the request fails instead."""
        reason = f"a run failed on CUDA: {exc}"
        if self.settings.wants_cuda:
            raise RuntimeError(f"{reason} (providers asks for CUDA, so no CPU fallback)") \
                from exc
        with self._fallback_lock:
            if not any(p in self.providers for p in GPU_PROVIDERS):
                return  # another request moved it already
            log.warning("model %s: %s; running on the CPU from now on", self.name, reason)
            self.ort_session.set_providers([CPU])
            self.cuda_fallback = reason
