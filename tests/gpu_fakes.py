"""NVML's answers as a machine with an NVIDIA driver and GPUs would give them, for the tests
that simulate a GPU on a CPU (test_xtts_gpu.py, test_onnx_gpu.py)."""

from __future__ import annotations

import pynvml
import pytest

RTX_3090 = ("NVIDIA GeForce RTX 3090", (8, 6))
P40 = ("Tesla P40", (6, 1))


def fake_nvml(monkeypatch: pytest.MonkeyPatch, driver: str,
              gpus: list[tuple[str, tuple[int, int]]]) -> None:
    """NVML answers as a machine with ``driver`` and ``gpus`` (name, capability) would."""
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", lambda: driver)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(gpus))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda i: gpus[i][0])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCudaComputeCapability", lambda i: gpus[i][1])
