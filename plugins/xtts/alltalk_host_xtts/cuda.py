"""Whether torch can run a model on a CUDA device here, and why not when it cannot.

torch says only "no GPU" (``torch.cuda.is_available()`` is False) or nothing at all (an old GPU
is "available" and then fails at its first kernel). The pinned torch 2.14.1 is a CUDA 13.0
build: it needs an NVIDIA driver >= 580 and a GPU of compute capability >= 7.5 (Turing or
newer). So the reason given is torch's own (the error of its CUDA initialisation) plus what NVML
says of the driver and the GPU, which NVML knows even where CUDA cannot start.

Also here: the device memory a load took, as torch and the driver count it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MIN_DRIVER = 580  # CUDA 13.0's minimum Linux driver
MIN_CAPABILITY = (7, 5)


NO_DRIVER = "no NVIDIA driver answers"


def driver_facts() -> str:
    """The driver and GPUs as NVML reports them, in words, for an error message."""
    try:
        import pynvml
    except ImportError:
        return "NVML not asked: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"{NO_DRIVER} (NVML: {exc})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        words = [f"driver {driver}"]
        if _major(driver) < MIN_DRIVER:
            words[0] += f", older than the {MIN_DRIVER} that CUDA 13 needs"
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            words.append(f"GPU {i} {pynvml.nvmlDeviceGetName(handle)} "
                         f"(compute capability {major}.{minor})")
        return ", ".join(words)
    except pynvml.NVMLError as exc:
        return f"NVML: {exc}"
    finally:
        pynvml.nvmlShutdown()


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def cuda_problem(torch: Any, index: int) -> str | None:
    """Why torch cannot run on ``cuda:index``, or None when it can."""
    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        try:
            torch.cuda.init()  # raises with torch's own reason, where is_available() has none
            reason = "torch sees no CUDA GPU"
        except Exception as exc:  # noqa: BLE001 - its message is the reason
            reason = f"torch cannot start CUDA: {_first_line(exc)}"
        return f"{reason} ({driver_facts()})"
    count = torch.cuda.device_count()
    if index >= count:
        return f"cuda:{index} does not exist: torch sees {count} GPU{'s' if count != 1 else ''}"
    capability = tuple(torch.cuda.get_device_capability(index))
    oldest = min(_arch_capabilities(torch) or [MIN_CAPABILITY])
    if capability < oldest:
        return (f"{torch.cuda.get_device_name(index)} (compute capability "
                f"{capability[0]}.{capability[1]}) is older than this torch's CUDA "
                f"{torch.version.cuda} build supports ({oldest[0]}.{oldest[1]} or newer: Turing, "
                "Ampere, Ada, Hopper, Blackwell)")
    return None


def _arch_capabilities(torch: Any) -> list[tuple[int, int]]:
    """The compute capabilities this torch build has kernels for ("sm_75" -> (7, 5))."""
    found = []
    for arch in torch.cuda.get_arch_list():
        digits = arch.rsplit("_", 1)[-1].rstrip("af")
        if digits.isdigit() and len(digits) >= 2:
            found.append((int(digits[:-1]), int(digits[-1])))
    return found


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@dataclass(frozen=True)
class DeviceMemory:
    """One device's memory as torch's allocator and the driver count it, in bytes."""

    allocated: int = 0  # tensors alive (torch.cuda.memory_allocated)
    reserved: int = 0  # held by torch's caching allocator (memory_reserved)
    free: int = 0  # free on the device, all processes counted (mem_get_info)

    @classmethod
    def now(cls, torch: Any, device: str) -> DeviceMemory:
        torch.cuda.synchronize(device)
        free, _total = torch.cuda.mem_get_info(device)
        return cls(int(torch.cuda.memory_allocated(device)),
                   int(torch.cuda.memory_reserved(device)), int(free))

    def taken_since(self, before: DeviceMemory) -> dict[str, int]:
        """What happened between ``before`` and this, as status keys."""
        return {"device_allocated_bytes": self.allocated - before.allocated,
                "device_reserved_bytes": self.reserved - before.reserved,
                "device_used_bytes": before.free - self.free}
