"""The XTTS backend: Coqui XTTS checkpoints on PyTorch, with voice cloning and streaming.

Loads through Coqui's own path (XttsConfig + Xtts.load_checkpoint), the one that loads the
official XTTS-v2 weights, so a downloaded XTTS-v2 folder works as it is. torch and TTS are
imported in load(), never at discovery.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from alltalk_host import (
    Audio,
    Backend,
    BadRequest,
    Capabilities,
    Code,
    MemoryNeed,
    ModelContext,
    SpeechRequest,
    VoiceSample,
    number_in,
    parse_settings,
)

from .checkpoint import check_checkpoint, check_vocab, checkpoint_key, first_lines
from .cuda import NO_DRIVER, DeviceMemory, cuda_problem
from .deepspeed_check import deepspeed_refusal
from .lowvram import DeviceGate, WeightShuttle, gate_for
from .precision import DTYPES, autocast_gpt
from .voices import VoiceLibrary

log = logging.getLogger(__name__)

# What `import TTS` (coqui-tts 0.28) insists on, looked up without importing any of it.
REQUIRED_MODULES = ("torch", "torchaudio", "TTS")
NO_DEEPSPEED = ("deepspeed = true but the deepspeed package is not installed "
                "(pip install deepspeed, on a CUDA machine)")
XTTS_LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn",
                  "hu", "ko", "ja", "hi")
# Generation parameters: default, low, high. Settings set per-model defaults; requests may
# override them through options.
PARAMETERS: dict[str, tuple[float, float, float]] = {
    "temperature": (0.75, 0.01, 2.0),
    "repetition_penalty": (5.0, 1.0, 50.0),
    "length_penalty": (1.0, -10.0, 10.0),
    "top_k": (50, 1, 1000),
    "top_p": (0.85, 0.01, 1.0),
}


@dataclass(frozen=True)
class XttsSettings:
    checkpoint: str = ""  # folder with config.json, model.pth, vocab.json[, speakers_xtts.pth]
    voices_dir: str | None = None  # reference wavs for cloning (relative: against models_dir)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    low_vram: bool = False  # keep the model in CPU memory between requests
    deepspeed: bool = False  # refused until a working version pair is known (deepspeed_check)
    dtype: str = "fp32"  # fp32 | bf16 (the GPT part under bfloat16 autocast)
    stream_chunk_size: int = 20  # GPT tokens per streamed chunk
    temperature: float = PARAMETERS["temperature"][0]
    repetition_penalty: float = PARAMETERS["repetition_penalty"][0]
    length_penalty: float = PARAMETERS["length_penalty"][0]
    top_k: int = int(PARAMETERS["top_k"][0])
    top_p: float = PARAMETERS["top_p"][0]


MiB = 1024 * 1024


def _gpu_likely() -> bool:
    """A GPU listed by the NVIDIA driver: the cheap sign that ``auto`` will pick CUDA (torch
    is not imported to ask; the load says why, if CUDA then cannot start)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _check_parameter(name: str, value: Any) -> float:
    _, lo, hi = PARAMETERS[name]
    checked = number_in(value, lo, hi)
    if checked is None or (name == "top_k" and not checked.is_integer()):
        raise ValueError(f"{name}: {value!r:.40} is outside {lo}..{hi}")
    return value


class XttsBackend(Backend):
    name = "xtts"
    path_settings = ("checkpoint", "voices_dir")  # inside models_dir when a commit sets them
    # torch and Coqui's model take seconds to import: a worker kept ready with them saves
    # that on every load and reload (docs/benchmarks.md, the workers' swap times).
    worker_preload = ("torch", "TTS.tts.models.xtts")
    # One XTTS instance mixes audio under concurrent use: one request at a time per instance;
    # the model's `instances` setting loads more copies.
    # clone_seconds: Coqui conditions on up to gpt_cond_len (30 s) of the reference; a few
    # seconds are the least that sound like the speaker.
    capabilities = Capabilities(streaming=True, languages=XTTS_LANGUAGES, voice_cloning=True,
                                clone_seconds=(3.0, 30.0), clone_rate=22050,
                                max_concurrency=1, devices=("cpu", "cuda"),
                                parameters=tuple(PARAMETERS), toggles=("low_vram", "deepspeed"))

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> XttsSettings:
        parsed = parse_settings(XttsSettings, settings)
        if not isinstance(parsed.checkpoint, str) or not parsed.checkpoint:
            raise ValueError("checkpoint: the folder with config.json, model.pth and vocab.json "
                             "is required")
        if parsed.voices_dir is not None and not isinstance(parsed.voices_dir, str):
            raise ValueError("voices_dir: expected a path")
        device = parsed.device
        if not isinstance(device, str) or not (
                device in ("auto", "cpu", "cuda") or (
                    device.startswith("cuda:") and device[5:].isdigit())):
            raise ValueError(f"device: {device!r} is not auto, cpu, cuda or cuda:N")
        for key in ("low_vram", "deepspeed"):
            if not isinstance(getattr(parsed, key), bool):
                raise ValueError(f"{key}: expected true or false")
        if parsed.deepspeed:
            refusal = deepspeed_refusal(device)
            if refusal:
                raise ValueError(refusal)
        if parsed.dtype not in DTYPES:
            raise ValueError(f"dtype: {parsed.dtype!r} is not one of {', '.join(DTYPES)}")
        if isinstance(parsed.stream_chunk_size, bool) or not isinstance(
                parsed.stream_chunk_size, int) or not 1 <= parsed.stream_chunk_size <= 400:
            raise ValueError("stream_chunk_size: expected a whole number from 1 to 400")
        for key in PARAMETERS:
            _check_parameter(key, getattr(parsed, key))
        return parsed

    @classmethod
    def check_available(cls, settings: XttsSettings, context: ModelContext) -> None:
        """The checkpoint folder has its files, and torch, torchaudio and Coqui TTS (and
        DeepSpeed when asked for) can be found. Nothing is imported or loaded; the voices
        folder is optional (the checkpoint's built-in speakers are voices too)."""
        problems = []
        try:
            check_checkpoint(context.resolve(settings.checkpoint))
        except (FileNotFoundError, ValueError) as exc:
            problems.append(str(exc))
        missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(f"{', '.join(missing)} not installed: pip install alltalk-host-xtts "
                            "(it pins torch, torchaudio, torchcodec and coqui-tts)")
        if settings.deepspeed and importlib.util.find_spec("deepspeed") is None:
            problems.append(NO_DEEPSPEED)
        if problems:
            raise RuntimeError("; ".join(problems))

    @classmethod
    def memory_needed(cls, settings: XttsSettings, context: ModelContext) -> MemoryNeed | None:
        """From the checkpoint's weight files (a stat each). On the CPU the process grows by
        about 1.5x the weights plus a fixed share (tokenizer, HiFi-GAN buffers, latents);
        measured: 3.0x on the tiny test checkpoint, where the fixed share dominates. On CUDA
        the weights go to the device and the host keeps a fraction; with ``low_vram`` they
        live in RAM and visit the device per request, so both are counted."""
        folder = context.resolve(settings.checkpoint)
        try:
            size = sum(p.stat().st_size for p in folder.glob("*.pth"))
        except OSError:
            return None
        if not size:
            return None  # check_available says what is missing
        cpu_ram = int(size * 1.5) + 200 * MiB
        device = settings.device
        if device == "auto":
            device = "cuda" if _gpu_likely() else "cpu"
        if device == "cpu":
            return MemoryNeed(ram_bytes=cpu_ram)
        on_device = int(size * 1.1) + 512 * MiB  # weights, plus activations and workspace
        ram = cpu_ram if settings.low_vram else int(size * 0.3) + 200 * MiB
        return MemoryNeed(ram_bytes=ram, device=device if ":" in device else "cuda:0",
                          device_bytes=on_device)

    def __init__(self, settings: XttsSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self._model: Any = None
        self._device = "cpu"
        self._sample_rate = 24000
        self._speakers: dict[str, tuple[Any, Any]] = {}
        self._library: VoiceLibrary | None = None
        self._config: Any = None
        self._cuda_fallback: str | None = None  # why device = "auto" runs on the CPU
        # Asked once: status() runs on the event loop, and package versions do not change.
        self._deepspeed_capable = deepspeed_refusal(settings.device) is None
        # Sizes in bytes, measured once at load (parameter sizes do not change once loaded).
        self._memory: dict[str, int] = {}
        # Low-VRAM on CUDA: the weights in pinned CPU memory and the device's shared gate.
        self._shuttle: WeightShuttle | None = None
        self._gate: DeviceGate | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        folder = self.context.resolve(self.settings.checkpoint)
        check_checkpoint(folder)
        if self.settings.deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise RuntimeError(NO_DEEPSPEED)
        import torch
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts

        device = self._choose_device(torch)
        on_cuda = device.startswith("cuda")
        if self.settings.deepspeed and not on_cuda:
            raise RuntimeError(f"deepspeed = true needs CUDA: {self._cuda_fallback}")
        if self.settings.dtype == "bf16" and on_cuda and not torch.cuda.is_bf16_supported(
                including_emulation=False):
            raise RuntimeError(f"dtype = 'bf16': {torch.cuda.get_device_name(device)} has no "
                               "native bfloat16 (compute capability 8.0 or newer); use 'fp32'")
        config = XttsConfig()
        try:
            config.load_json(str(folder / "config.json"))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{folder / 'config.json'} is not an XTTS config: {exc}") from None
        check_vocab(folder, config)
        before = DeviceMemory.now(torch, device) if on_cuda else None
        model = Xtts(config)
        try:
            model.load_checkpoint(config, checkpoint_dir=str(folder),
                                  use_deepspeed=self.settings.deepspeed, eval=True)
        except Exception as exc:
            # Coqui retries a failed load_state_dict inside a bare except, so the real cause
            # (e.g. a size mismatch) is the context of what it raises.
            cause = exc.__context__ if isinstance(exc, RuntimeError) and exc.__context__ else exc
            raise ValueError(f"{folder / 'model.pth'} does not load into this XTTS config: "
                             f"{type(cause).__name__}: {first_lines(cause)}") from exc
        self._model, self._device, self._config = model, device, config
        if on_cuda and self.settings.low_vram:
            self._shuttle = WeightShuttle(model, device, pin=True)
            self._gate = gate_for(device, torch.cuda.empty_cache)
        else:
            model.to(device)
        if self.settings.dtype == "bf16":
            autocast_gpt(model.gpt, "cuda" if on_cuda else "cpu", torch)
        self._memory = {"parameter_bytes": sum(p.numel() * p.element_size()
                                               for p in model.parameters())}
        if self._shuttle is not None:
            self._memory["device_visit_bytes"] = self._shuttle.bytes
        if before is not None:
            self._memory.update(DeviceMemory.now(torch, device).taken_since(before))
        self._sample_rate = int(config.audio.output_sample_rate)
        manager = model.speaker_manager
        speakers = manager.speakers if manager is not None else {}
        self._speakers = {name: (v["gpt_cond_latent"], v["speaker_embedding"])
                          for name, v in speakers.items()}
        voices_dir = (self.context.resolve(self.settings.voices_dir)
                      if self.settings.voices_dir else None)
        latents_dir = self.context.cache_dir / "latents" / checkpoint_key(folder)
        self._library = VoiceLibrary(voices_dir, latents_dir,
                                     compute=self._compute_latents,
                                     save=lambda value, path: torch.save(value, path),
                                     load=lambda path: torch.load(path, weights_only=True))
        languages = tuple(config.languages) if config.languages else XTTS_LANGUAGES
        self.capabilities = replace(self.capabilities, languages=languages)

    def unload(self) -> None:
        self._model = None
        self._shuttle = None
        self._gate = None
        self._memory = {}
        self._speakers = {}
        if self._library is not None:
            self._library.clear()
        self._library = None
        gc.collect()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _choose_device(self, torch: Any) -> str:
        """"cpu" or "cuda:N". "auto" falls back to the CPU saying why; an explicit CUDA device
        that cannot be used is an error with the same reason."""
        wanted = self.settings.device
        if wanted == "cpu":
            return "cpu"
        index = int(wanted[5:]) if wanted.startswith("cuda:") else 0
        problem = cuda_problem(torch, index)
        if problem is None:
            return f"cuda:{index}"
        if wanted == "auto":
            # A warning where an NVIDIA driver is there and CUDA still cannot be used; on a
            # machine without one the CPU is what "auto" means.
            log.log(logging.INFO if NO_DRIVER in problem else logging.WARNING,
                    "model %s: device = 'auto' runs on the CPU: %s", self.context.name, problem)
            self._cuda_fallback = problem
            return "cpu"
        raise RuntimeError(f"device = {wanted!r} cannot be used: {problem}; use 'auto' or "
                           "'cpu'")

    # --- what it serves --------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def voices(self) -> list[str]:
        files = self._library.names() if self._library else []
        return sorted(self._speakers) + files

    def memory_estimate(self) -> int:
        """On a GPU, the device memory the load was measured to take; else the parameters."""
        memory = self._memory
        return max(memory.get("device_allocated_bytes", 0), 0) or memory.get(
            "parameter_bytes", 0)

    def status(self) -> dict[str, Any]:
        library = self._library
        return {"device": self._device, "device_setting": self.settings.device,
                "cuda_fallback": self._cuda_fallback, "low_vram": self.settings.low_vram,
                "dtype": self.settings.dtype, "deepspeed": self.settings.deepspeed,
                "deepspeed_available": importlib.util.find_spec("deepspeed") is not None,
                # refused by validation with the pinned transformers (deepspeed_check.py)
                "deepspeed_capable": self._deepspeed_capable,
                "built_in_speakers": len(self._speakers),
                "voice_files": len(library.names()) if library else 0,
                "latents_cache": library.stats.__dict__ if library else {},
                **self._memory}

    def synthesize(self, request: SpeechRequest) -> Audio:
        model, voice, params = self._prepare(request)
        with self._on_device():
            latent, embedding = self._latents(voice)
            out = model.inference(request.text, _language(request.language), latent, embedding,
                                  speed=request.speed, enable_text_splitting=True, **params)
        return Audio(np.asarray(out["wav"], dtype=np.float32), self._sample_rate)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        model, voice, params = self._prepare(request)
        with self._on_device():
            latent, embedding = self._latents(voice)
            chunks = model.inference_stream(
                request.text, _language(request.language), latent, embedding,
                stream_chunk_size=self.settings.stream_chunk_size, speed=request.speed,
                enable_text_splitting=True, **params)
            try:
                for chunk in chunks:
                    audio = Audio(chunk.detach().cpu().numpy().astype(np.float32).reshape(-1),
                                  self._sample_rate)
                    del chunk
                    yield audio
                    if request.cancelled.is_set():
                        return
            finally:
                # A stream that stops early (cancelled, its reader gone) leaves Coqui's
                # generator holding its KV cache and latents on the device: free them before
                # the weights leave and the cache is emptied.
                chunks.close()
                del chunks, latent, embedding

    # --- helpers ---------------------------------------------------------------------------

    def _prepare(self, request: SpeechRequest) -> tuple[Any, str | VoiceSample,
                                                        dict[str, Any]]:
        """The model, voice and generation parameters of a request, checked before anything
        visits the GPU."""
        model = self._model
        if model is None:
            raise RuntimeError("model is not loaded")
        unknown = set(request.options) - set(PARAMETERS)
        if unknown:
            raise BadRequest(f"unknown options {sorted(unknown)} for an xtts model; known: "
                             f"{sorted(PARAMETERS)}", code=Code.BAD_OPTION)
        params = {}
        for key in PARAMETERS:
            try:
                params[key] = _check_parameter(
                    key, request.options.get(key, getattr(self.settings, key)))
            except ValueError as exc:
                raise BadRequest(str(exc), code=Code.BAD_OPTION) from None
        params["top_k"] = int(params["top_k"])
        if request.sample is not None:  # a voice of the library: the host checked its name
            return model, request.sample, params
        voices = self.voices()
        voice = request.voice or (next(iter(self._speakers), None) or next(iter(voices), None))
        if voice is None:
            raise BadRequest("this model has no voices: add reference wavs to its voices_dir",
                             code=Code.UNKNOWN_VOICE)
        if voice not in voices:
            raise BadRequest(f"unknown voice {voice!r}", code=Code.UNKNOWN_VOICE)
        return model, voice, params

    def _latents(self, voice: str | VoiceSample) -> tuple[Any, Any]:
        """A voice's conditioning latents; computed (on the device, inside the request's one
        visit in low-VRAM mode) the first time a voice file or library sample is used."""
        assert self._library is not None
        if isinstance(voice, VoiceSample):
            return self._library.latents_of(voice.path)
        if voice in self._speakers:
            return self._speakers[voice]
        return self._library.latents(voice)

    def _compute_latents(self, samples: np.ndarray, rate: int) -> tuple[Any, Any]:
        import torch

        model, config = self._model, self._config
        audio = torch.from_numpy(samples).unsqueeze(0)
        with torch.inference_mode():
            latent = model.get_gpt_cond_latents(audio, rate, length=config.gpt_cond_len,
                                                chunk_length=config.gpt_cond_chunk_len)
            embedding = model.get_speaker_embedding(audio, rate)
        return latent.cpu(), embedding.cpu()

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        """Low-VRAM mode on CUDA: the weights visit the GPU for one request, when the device's
        gate lets them (one low-VRAM copy on a device at a time). Otherwise nothing moves."""
        shuttle, gate = self._shuttle, self._gate
        if shuttle is None or gate is None:
            yield
            return
        with gate.visit(), shuttle.visit():
            yield


def _language(language: str) -> str:
    return language.lower()
