"""onnxruntime on CUDA: the CUDA libraries found before the first session, why a session that
asked for CUDA did not get it, and the device memory a load took.

- onnxruntime-gpu's CUDA provider library has no search path for the pip-installed CUDA 13
  libraries: they load only where torch was imported first. ``ort.preload_dlls()`` knows their
  layout (nvidia/cu13/lib); it runs once per process, before the first CUDA session.
- Where CUDA cannot start, onnxruntime does not raise: it prints why (its logger writes to
  stderr, its Python fallback and preload_dlls print to stdout) and runs on the CPU. The output
  of those calls is captured at the file-descriptor level, written through to where it was
  going, and kept as the reason, with what NVML says of the driver and the GPUs.
- onnxruntime reports no per-session arena sizes, so a load's device memory is NVML's count
  for this process before and after it (the device's whole use where NVML cannot see this
  process, as in some containers).

The preload and the capture are process-wide (the libraries and the file descriptors are), so
their state lives here, each behind its lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_DRIVER = 580  # CUDA 13.0's minimum Linux driver (onnxruntime-gpu 1.31 is a CUDA 13 build)
MIN_CAPABILITY = (7, 5)
_REASON_WORDS = ("cuda", "cudnn", "cublas", "libcu", "ep error", "failed", "driver", "gpu")

_preload_lock = threading.Lock()
_preload_output: str | None = None  # what preload_dlls() printed, once it has run
_capture_lock = threading.Lock()


@dataclass
class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """What the process writes to stdout and stderr meanwhile, C++ libraries included. It is
    written through to where it was going afterwards: delayed, never swallowed."""
    result = Captured()
    with _capture_lock, contextlib.ExitStack() as files:
        _flush()
        # Python's own prints too, wherever sys.stdout points (not always at fd 1).
        python_out, python_err = io.StringIO(), io.StringIO()
        real_out, real_err = sys.stdout, sys.stderr
        redirected: dict[int, tuple[int, Any]] = {}  # fd -> (its saved copy, the capture)
        try:
            for fd in (1, 2):
                file = files.enter_context(tempfile.TemporaryFile())
                redirected[fd] = (os.dup(fd), file)
                os.dup2(file.fileno(), fd)
        except OSError:  # no such descriptor (a daemon without a terminal): not captured
            pass
        try:
            with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_err):
                yield result
        finally:
            _flush()
            texts = [python_out.getvalue(), python_err.getvalue()]
            for stream, text in ((real_out, texts[0]), (real_err, texts[1])):
                if text:
                    with contextlib.suppress(Exception):
                        stream.write(text)
                        stream.flush()
            for fd, (copy, file) in redirected.items():
                os.dup2(copy, fd)
                os.close(copy)
                file.seek(0)
                data = file.read()
                if data:
                    os.write(fd, data)
                texts.append(data.decode("utf-8", "replace"))
            result.text = "".join(texts)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or replaced stream: nothing to flush
            stream.flush()


def preload_cuda_libraries(ort: Any) -> str:
    """``ort.preload_dlls()`` once per process; what it printed (the libraries it could not
    load), also on later calls."""
    global _preload_output
    with _preload_lock:
        if _preload_output is None:
            preload = getattr(ort, "preload_dlls", None)
            with captured_output() as out:
                if preload is not None:
                    try:
                        preload()
                    except Exception as exc:  # noqa: BLE001 - its message is part of the reason
                        print(f"onnxruntime.preload_dlls() failed: {exc}")
            _preload_output = out.text
        return _preload_output


def fallback_reason(ort: Any, output: str, device_id: int) -> str:
    """Why a session that asked for CUDA runs without it, from what onnxruntime printed, the
    CUDA provider library's own load error and NVML's view of the driver and GPUs."""
    reasons = [line.strip() for line in output.splitlines()
               if line.strip() and any(w in line.lower() for w in _REASON_WORDS)][-6:]
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if library.is_file():
        try:
            ctypes.CDLL(str(library))
        except OSError as exc:
            reasons.append(f"{library.name} does not load: {exc}")
    reasons.append(nvml_facts(device_id))
    return "; ".join(reasons)


def nvml_facts(device_id: int) -> str:
    """The driver and the GPU at ``device_id`` in words, with what CUDA 13 needs of them."""
    try:
        import pynvml
    except ImportError:
        return "NVML not asked: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no NVIDIA driver answers (NVML: {exc})"
    try:
        driver = str(pynvml.nvmlSystemGetDriverVersion())
        words = [f"driver {driver}"]
        if int(driver.split(".")[0] or 0) < MIN_DRIVER:
            words.append(f"older than the {MIN_DRIVER} that CUDA 13 needs")
        count = pynvml.nvmlDeviceGetCount()
        if device_id >= count:
            words.append(f"device_id {device_id} but NVML sees {count} GPUs")
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
            capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            words.append(f"GPU {device_id} {pynvml.nvmlDeviceGetName(handle)} (compute "
                         f"capability {capability[0]}.{capability[1]}"
                         + (", older than the 7.5 CUDA 13 needs)" if capability < MIN_CAPABILITY
                            else ")"))
        return ", ".join(words)
    except (pynvml.NVMLError, ValueError) as exc:
        return f"NVML: {exc}"
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class DeviceUse:
    """Device memory in bytes: this process's (None where NVML does not list it) and every
    process's together, summed over the GPUs."""

    process: int | None
    device: int

    @classmethod
    def now(cls) -> DeviceUse | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return None
        try:
            pid, process, device = os.getpid(), None, 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                device += int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        process = (process or 0) + int(proc.usedGpuMemory)
            return cls(process, device)
        except pynvml.NVMLError:
            return None
        finally:
            pynvml.nvmlShutdown()

    def taken_since(self, before: DeviceUse) -> dict[str, Any]:
        """What a load took, as status keys. A process not listed before it had a CUDA
        context held nothing."""
        if self.process is not None:
            return {"device_load_bytes": self.process - (before.process or 0),
                    "device_measured_by": "nvml process"}
        return {"device_load_bytes": self.device - before.device,
                "device_measured_by": "nvml device-wide"}
