"""The XTTS backend's GPU paths, on a CPU: CUDA probes simulated by replacing torch's and
NVML's answers, the low-VRAM machinery run with the CPU standing in for the GPU, and the
settings that are refused. tools/gpu_smoke.py checks the same paths on a real GPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pynvml
import pytest
import torch

from alltalk_host import ModelContext, SpeechRequest
from alltalk_host_xtts import backend as xtts_backend
from alltalk_host_xtts import cuda, lowvram
from alltalk_host_xtts.backend import XttsBackend
from alltalk_host_xtts.cuda import DeviceMemory, cuda_problem
from alltalk_host_xtts.lowvram import DeviceGate, WeightShuttle
from tools.reference_audio import write_reference_wav

from .gpu_fakes import P40, RTX_3090, fake_nvml
from .helpers import error_of
from .test_xtts import TINY_SECONDS, use_xtts

DRIVER_TOO_OLD = ("The NVIDIA driver on your system is too old (found version 12020). Please "
                  "update your GPU driver")


@pytest.fixture
def voices(tmp_path: Path) -> Path:
    folder = tmp_path / "voices"
    write_reference_wav(folder / "ref.wav")
    return folder


def fake_torch_cuda(monkeypatch: pytest.MonkeyPatch, gpus: list[tuple[str, tuple[int, int]]],
                    init_error: str | None = None) -> None:
    """torch.cuda answers as on a machine with ``gpus``; none usable when ``init_error``.

    Only in this process: a host under test must serve inline (the ``config_repo`` default;
    never mark these ``process_workers``), or a worker loads with the real, GPU-less torch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(gpus) and init_error is None)

    def init() -> None:
        raise RuntimeError(init_error or "No CUDA GPUs are available")

    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: gpus[i][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: gpus[i][1])


def test_a_driver_below_580_is_named_with_torchs_reason(monkeypatch):
    fake_torch_cuda(monkeypatch, [RTX_3090], init_error=DRIVER_TOO_OLD)
    fake_nvml(monkeypatch, "550.54.15", [RTX_3090])
    problem = cuda_problem(torch, 0)
    assert problem is not None
    assert "torch cannot start CUDA: The NVIDIA driver on your system is too old" in problem
    assert "driver 550.54.15, older than the 580 that CUDA 13 needs" in problem
    assert "GPU 0 NVIDIA GeForce RTX 3090 (compute capability 8.6)" in problem


def test_no_driver_at_all_is_said_so(monkeypatch):
    fake_torch_cuda(monkeypatch, [], init_error="Found no NVIDIA driver on your system.")

    def no_library() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    problem = cuda_problem(torch, 0)
    assert problem is not None and "Found no NVIDIA driver" in problem
    assert "no NVIDIA driver answers (NVML:" in problem


def test_a_gpu_older_than_turing_is_named(monkeypatch):
    """A P40 is 'available' to torch, then fails at its first kernel: say why before."""
    fake_torch_cuda(monkeypatch, [P40])
    problem = cuda_problem(torch, 0)
    assert problem == ("Tesla P40 (compute capability 6.1) is older than this torch's CUDA "
                       f"{torch.version.cuda} build supports (7.5 or newer: Turing, Ampere, Ada, "
                       "Hopper, Blackwell)")


def test_a_device_index_beyond_the_gpus_is_named(monkeypatch):
    fake_torch_cuda(monkeypatch, [RTX_3090])
    assert cuda_problem(torch, 1) == "cuda:1 does not exist: torch sees 1 GPU"
    assert cuda_problem(torch, 0) is None


async def test_auto_falls_back_to_the_cpu_saying_why_and_cuda_refuses(
        start_server, config_repo, xtts_dir, voices, monkeypatch):
    fake_torch_cuda(monkeypatch, [RTX_3090], init_error=DRIVER_TOO_OLD)
    fake_nvml(monkeypatch, "550.54.15", [RTX_3090])
    use_xtts(config_repo, xtts_dir / "tiny-xtts-0", voices, device="auto")
    client = await start_server()
    status = await (await client.get("/control/status")).json()
    xtts = next(m for m in status["models"] if m["name"] == "xtts")["backend_status"]
    assert xtts["device"] == "cpu" and xtts["device_setting"] == "auto"
    assert "too old" in xtts["cuda_fallback"] and "driver 550.54.15" in xtts["cuda_fallback"]
    # CPU: the parameters are the memory; no device figures are made up.
    assert xtts["parameter_bytes"] > 50_000_000 and "device_allocated_bytes" not in xtts

    commit = config_repo.change("on the GPU", "models.toml",
                                "default.models.xtts.settings.device", "cuda")
    resp = await client.post("/control/config/apply", json={"commit": commit})
    error = await error_of(resp)
    assert resp.status == 422, error
    assert "device = 'cuda' cannot be used: torch cannot start CUDA: The NVIDIA driver on your " \
           "system is too old" in error["message"]
    assert "driver 550.54.15, older than the 580" in error["message"]


@pytest.mark.parametrize(("device", "phrase"), [
    ("cpu", "DeepSpeed inference runs only on CUDA and device = 'cpu'"),
    ("cuda:1", "DeepSpeed puts the model on cuda:0 whatever device says (device = 'cuda:1')"),
    ("auto", "no DeepSpeed version is known to work with transformers 5.23.0"),
])
def test_deepspeed_is_refused_with_the_reason(device, phrase):
    with pytest.raises(ValueError) as info:
        XttsBackend.validate_settings({"checkpoint": "x", "device": device, "deepspeed": True})
    assert str(info.value).startswith("deepspeed = true is refused: ")
    assert phrase in str(info.value) and str(info.value).endswith("set deepspeed = false")


@pytest.mark.parametrize("dtype", ["fp16", "float32", 16])
def test_an_unknown_dtype_is_refused(dtype):
    with pytest.raises(ValueError, match="dtype"):
        XttsBackend.validate_settings({"checkpoint": "x", "dtype": dtype})


def _backend(checkpoint: Path, cache: Path, voices: Path | None = None,
             **settings) -> XttsBackend:
    parsed = XttsBackend.validate_settings(
        {"checkpoint": str(checkpoint), **({"voices_dir": str(voices)} if voices else {}),
         **settings})
    return XttsBackend(parsed, ModelContext("xtts", cache, cache))


def test_bf16_validates_loads_and_speaks_on_the_cpu(xtts_dir, tmp_path):
    backend = _backend(xtts_dir / "tiny-xtts-0", tmp_path, dtype="bf16")
    backend.load()
    try:
        assert backend.status()["dtype"] == "bf16"
        assert hasattr(backend._model.gpt.forward, "__wrapped__")  # the GPT part only
        audio = backend.synthesize(SpeechRequest("Half precision.", voice="Tiny Alice"))
        assert audio.samples.dtype == np.float32 and np.isfinite(audio.samples).all()
        assert abs(audio.duration - TINY_SECONDS) < 0.01
        chunks = list(backend.stream(SpeechRequest("Half precision.", voice="Tiny Alice")))
        assert len(chunks) >= 2 and all(np.isfinite(c.samples).all() for c in chunks)
    finally:
        backend.unload()


def test_latents_are_cached_per_checkpoint(xtts_dir, tmp_path, voices):
    """A fine-tuned checkpoint under the same model name does not reuse the old latents."""
    def cache_after_one_request(checkpoint: str) -> dict:
        backend = _backend(xtts_dir / checkpoint, tmp_path / "state", voices)
        backend.load()
        try:
            backend.synthesize(SpeechRequest("Hi.", voice="ref.wav"))
            return dict(backend.status()["latents_cache"])
        finally:
            backend.unload()

    assert cache_after_one_request("tiny-xtts-0") == {"computed": 1, "memory_hits": 0,
                                                      "disk_hits": 0}
    assert cache_after_one_request("tiny-xtts-1")["computed"] == 1  # other weights
    assert cache_after_one_request("tiny-xtts-0")["disk_hits"] == 1  # its own, from disk


# --- low-VRAM, with the CPU standing in for the GPU ----------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.inside = 0
        self.most_inside = 0
        self.lock = threading.Lock()


@pytest.fixture
def simulated_gpu(monkeypatch):
    """torch says there is an RTX 3090 at cuda:0; the weights 'visit' it as copies in CPU
    memory (not pinned: pinning needs a driver); memory figures and the cache release are
    recorded instead of asked of a device."""
    fake_torch_cuda(monkeypatch, [RTX_3090])
    recorder = Recorder()
    monkeypatch.setattr(lowvram, "_GATES", {})
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: recorder.events.append("release"))
    monkeypatch.setattr(DeviceMemory, "now", classmethod(
        lambda cls, torch, device: DeviceMemory(0, 0, 24 * 2**30)))

    class CpuShuttle(WeightShuttle):
        def __init__(self, model, device, pin):
            assert device == "cuda:0" and pin
            super().__init__(model, "cpu", pin=False)

        def visit(self):
            inner = super().visit()

            class Visit:
                def __enter__(self_):
                    with recorder.lock:
                        recorder.inside += 1
                        recorder.most_inside = max(recorder.most_inside, recorder.inside)
                    recorder.events.append("weights in")
                    return inner.__enter__()

                def __exit__(self_, *exc):
                    result = inner.__exit__(*exc)
                    recorder.events.append("weights back")
                    with recorder.lock:
                        recorder.inside -= 1
                    return result
            return Visit()

    monkeypatch.setattr(xtts_backend, "WeightShuttle", CpuShuttle)
    return recorder


def test_low_vram_moves_the_weights_once_per_request_and_never_back(
        simulated_gpu, xtts_dir, tmp_path, voices):
    backend = _backend(xtts_dir / "tiny-xtts-0", tmp_path, voices, device="cuda",
                       low_vram=True)
    backend.load()
    try:
        status = backend.status()
        assert status["device"] == "cuda:0" and status["device_visit_bytes"] >= \
            status["parameter_bytes"] > 0
        # A new voice needs its latents computed: still one visit for the whole request.
        audio = backend.synthesize(SpeechRequest("Hello.", voice="ref.wav"))
        assert np.isfinite(audio.samples).all() and audio.duration > 1
        assert simulated_gpu.events == ["weights in", "weights back", "release"]
        # Nothing was copied back: the parameters are their host tensors again.
        shuttle = backend._shuttle
        assert all(p.data_ptr() == host.data_ptr() for p, host in zip(
            shuttle._params, shuttle._host, strict=True))
    finally:
        backend.unload()


def test_two_low_vram_copies_take_turns_on_one_device(simulated_gpu, xtts_dir, tmp_path):
    """instances = 2, or a reload warming up beside the serving copy: one copy on the GPU."""
    first = _backend(xtts_dir / "tiny-xtts-0", tmp_path / "a", device="cuda", low_vram=True)
    second = _backend(xtts_dir / "tiny-xtts-1", tmp_path / "b", device="cuda", low_vram=True)
    first.load()
    second.load()
    try:
        assert first._gate is second._gate
        threads = [threading.Thread(target=b.synthesize, args=(SpeechRequest("Hi.",
                   voice="Tiny Bob"),)) for b in (first, second, first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert simulated_gpu.most_inside == 1
        assert simulated_gpu.events.count("weights in") == 4
        # The cache is emptied when the last waiting visitor leaves, not after each request.
        assert 1 <= simulated_gpu.events.count("release") <= 4
        assert simulated_gpu.events[-1] == "release"
    finally:
        first.unload()
        second.unload()


def test_a_cancelled_low_vram_stream_frees_its_tensors_before_the_weights_leave(
        simulated_gpu, xtts_dir, tmp_path):
    backend = _backend(xtts_dir / "tiny-xtts-0", tmp_path, device="cuda", low_vram=True,
                       stream_chunk_size=4)
    backend.load()
    real = backend._model.inference_stream

    def recorded_stream(*args, **kwargs):
        try:
            yield from real(*args, **kwargs)
        finally:
            simulated_gpu.events.append("stream closed")

    backend._model.inference_stream = recorded_stream
    try:
        request = SpeechRequest("A long enough sentence to stream.", voice="Tiny Alice")
        stream = backend.stream(request)
        next(stream)
        request.cancelled.set()
        assert list(stream) == []  # it stops at the next chunk boundary
        assert simulated_gpu.events == ["weights in", "stream closed", "weights back",
                                        "release"]
    finally:
        backend.unload()


def test_the_device_gate_releases_once_for_a_burst():
    released = []
    gate = DeviceGate(lambda: released.append(1))
    first_in, second_waiting = threading.Event(), threading.Event()
    go = threading.Event()

    def first() -> None:
        with gate.visit():
            first_in.set()
            go.wait(10)

    def second() -> None:
        second_waiting.set()
        with gate.visit():
            pass

    a = threading.Thread(target=first)
    a.start()
    first_in.wait(10)
    b = threading.Thread(target=second)
    b.start()
    second_waiting.wait(10)
    while gate._wanting < 2:  # b is counted before it blocks on the turn
        threading.Event().wait(0.01)
    go.set()
    a.join(10)
    b.join(10)
    assert (gate.visits, gate.releases, len(released)) == (2, 1, 1)


def test_cuda_memory_figures_are_differences_in_bytes():
    before = DeviceMemory(allocated=100, reserved=1000, free=10_000)
    after = DeviceMemory(allocated=600, reserved=2000, free=8_500)
    assert after.taken_since(before) == {"device_allocated_bytes": 500,
                                         "device_reserved_bytes": 1000,
                                         "device_used_bytes": 1500}


def test_nvml_facts_name_the_driver_and_gpus(monkeypatch):
    fake_nvml(monkeypatch, "580.65.06", [RTX_3090, P40])
    assert cuda.driver_facts() == ("driver 580.65.06, GPU 0 NVIDIA GeForce RTX 3090 (compute "
                                   "capability 8.6), GPU 1 Tesla P40 (compute capability 6.1)")
