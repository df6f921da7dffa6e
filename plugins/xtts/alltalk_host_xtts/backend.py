"""The XTTS backend: Coqui XTTS checkpoints on PyTorch, with voice cloning and streaming.

Loads through Coqui's own path (XttsConfig + Xtts.load_checkpoint), the one that loads the
official XTTS-v2 weights, so a downloaded XTTS-v2 folder works as it is. torch and TTS are
imported in load(), never at discovery.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import math
import threading
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
    ModelContext,
    SpeechRequest,
    parse_settings,
)

from .voices import VoiceLibrary

log = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.pth", "vocab.json")
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
    deepspeed: bool = False
    stream_chunk_size: int = 20  # GPT tokens per streamed chunk
    temperature: float = PARAMETERS["temperature"][0]
    repetition_penalty: float = PARAMETERS["repetition_penalty"][0]
    length_penalty: float = PARAMETERS["length_penalty"][0]
    top_k: int = int(PARAMETERS["top_k"][0])
    top_p: float = PARAMETERS["top_p"][0]


def _check_parameter(name: str, value: Any) -> float:
    _, lo, hi = PARAMETERS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not lo <= value <= hi or (name == "top_k" and not float(value).is_integer()):
        raise ValueError(f"{name}: {value!r} is outside {lo}..{hi}")
    return value


class XttsBackend(Backend):
    name = "xtts"
    # One XTTS instance mixes audio under concurrent use: one request at a time per instance;
    # the model's `instances` setting loads more copies.
    capabilities = Capabilities(streaming=True, languages=XTTS_LANGUAGES, voice_cloning=True,
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
            _check_checkpoint(context.resolve(settings.checkpoint))
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

    def __init__(self, settings: XttsSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self._model: Any = None
        self._device = "cpu"
        self._sample_rate = 24000
        self._speakers: dict[str, tuple[Any, Any]] = {}
        self._library: VoiceLibrary | None = None
        self._config: Any = None
        self._model_bytes = 0  # parameter sizes do not change once loaded: summed at load
        self._lock = threading.Lock()  # low-VRAM moves must not interleave

    # --- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        folder = self.context.resolve(self.settings.checkpoint)
        _check_checkpoint(folder)
        if self.settings.deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise RuntimeError(NO_DEEPSPEED)
        import torch
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts

        device = self._choose_device(torch)
        config = XttsConfig()
        try:
            config.load_json(str(folder / "config.json"))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{folder / 'config.json'} is not an XTTS config: {exc}") from None
        _check_vocab(folder, config)
        model = Xtts(config)
        try:
            model.load_checkpoint(config, checkpoint_dir=str(folder),
                                  use_deepspeed=self.settings.deepspeed, eval=True)
        except Exception as exc:
            # Coqui retries a failed load_state_dict inside a bare except, so the real cause
            # (e.g. a size mismatch) is the context of what it raises.
            cause = exc.__context__ if isinstance(exc, RuntimeError) and exc.__context__ else exc
            raise ValueError(f"{folder / 'model.pth'} does not load into this XTTS config: "
                             f"{type(cause).__name__}: {_first_lines(cause)}") from exc
        model.to("cpu" if self.settings.low_vram else device)
        self._model, self._device, self._config = model, device, config
        self._sample_rate = int(config.audio.output_sample_rate)
        manager = model.speaker_manager
        speakers = manager.speakers if manager is not None else {}
        self._speakers = {name: (v["gpt_cond_latent"], v["speaker_embedding"])
                          for name, v in speakers.items()}
        self._model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        voices_dir = (self.context.resolve(self.settings.voices_dir)
                      if self.settings.voices_dir else None)
        self._library = VoiceLibrary(voices_dir, self.context.cache_dir / "latents",
                                     compute=self._compute_latents,
                                     save=lambda value, path: torch.save(value, path),
                                     load=lambda path: torch.load(path, weights_only=True))
        languages = tuple(config.languages) if config.languages else XTTS_LANGUAGES
        self.capabilities = replace(self.capabilities, languages=languages)

    def unload(self) -> None:
        self._model = None
        self._model_bytes = 0
        self._speakers = {}
        if self._library is not None:
            self._library.clear()
        self._library = None
        gc.collect()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _choose_device(self, torch: Any) -> str:
        wanted = self.settings.device
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if wanted.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError(f"device = {wanted!r} but torch sees no CUDA GPU on this "
                                   "machine; use 'auto' or 'cpu'")
            index = int(wanted[5:] or 0) if ":" in wanted else 0
            if index >= torch.cuda.device_count():
                raise RuntimeError(f"device = {wanted!r} but there are only "
                                   f"{torch.cuda.device_count()} GPUs")
        return wanted

    # --- what it serves --------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def voices(self) -> list[str]:
        files = self._library.names() if self._library else []
        return sorted(self._speakers) + files

    def memory_estimate(self) -> int:
        return self._model_bytes

    def status(self) -> dict[str, Any]:
        library = self._library
        return {"device": self._device, "low_vram": self.settings.low_vram,
                "deepspeed": self.settings.deepspeed,
                "deepspeed_available": importlib.util.find_spec("deepspeed") is not None,
                "built_in_speakers": len(self._speakers),
                "voice_files": len(library.names()) if library else 0,
                "latents_cache": library.stats.__dict__ if library else {}}

    def synthesize(self, request: SpeechRequest) -> Audio:
        model, latent, embedding, params = self._prepare(request)
        with self._on_device(model):
            out = model.inference(request.text, _language(request.language), latent, embedding,
                                  speed=request.speed, enable_text_splitting=True, **params)
        return Audio(np.asarray(out["wav"], dtype=np.float32), self._sample_rate)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        model, latent, embedding, params = self._prepare(request)
        with self._on_device(model):
            chunks = model.inference_stream(
                request.text, _language(request.language), latent, embedding,
                stream_chunk_size=self.settings.stream_chunk_size, speed=request.speed,
                enable_text_splitting=True, **params)
            for chunk in chunks:
                yield Audio(chunk.detach().cpu().numpy().astype(np.float32).reshape(-1),
                            self._sample_rate)
                if request.cancelled.is_set():
                    return

    # --- helpers ---------------------------------------------------------------------------

    def _prepare(self, request: SpeechRequest) -> tuple[Any, Any, Any, dict[str, Any]]:
        model = self._model
        if model is None:
            raise RuntimeError("model is not loaded")
        unknown = set(request.options) - set(PARAMETERS)
        if unknown:
            raise BadRequest(f"unknown options {sorted(unknown)} for an xtts model; known: "
                             f"{sorted(PARAMETERS)}", code="bad_option")
        params = {}
        for key in PARAMETERS:
            try:
                params[key] = _check_parameter(
                    key, request.options.get(key, getattr(self.settings, key)))
            except ValueError as exc:
                raise BadRequest(str(exc), code="bad_option") from None
        params["top_k"] = int(params["top_k"])
        voice = request.voice or (next(iter(self._speakers), None) or
                                  next(iter(self.voices()), None))
        if voice is None:
            raise BadRequest("this model has no voices: add reference wavs to its voices_dir",
                             code="unknown_voice")
        if voice in self._speakers:
            latent, embedding = self._speakers[voice]
        else:
            assert self._library is not None
            latent, embedding = self._library.latents(voice)
        return model, latent, embedding, params

    def _compute_latents(self, samples: np.ndarray, rate: int) -> tuple[Any, Any]:
        import torch

        model, config = self._model, self._config
        audio = torch.from_numpy(samples).unsqueeze(0)
        with torch.inference_mode(), self._on_device(model):
            latent = model.get_gpt_cond_latents(audio, rate, length=config.gpt_cond_len,
                                                chunk_length=config.gpt_cond_chunk_len)
            embedding = model.get_speaker_embedding(audio, rate)
        return latent.cpu(), embedding.cpu()

    @contextlib.contextmanager
    def _on_device(self, model: Any) -> Iterator[None]:
        """Low-VRAM mode: the model visits the GPU for one generation only."""
        if not (self.settings.low_vram and self._device.startswith("cuda")):
            yield
            return
        import torch

        with self._lock:
            model.to(self._device)
            try:
                yield
            finally:
                model.to("cpu")
                torch.cuda.empty_cache()


def _language(language: str) -> str:
    return language.lower()


def _check_checkpoint(folder: Path) -> None:
    """The folder has the files Coqui loads, and its config.json is an XTTS config as far as a
    glance can tell (the weights and vocabulary are checked when they load)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} not found")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint folder {folder} lacks {', '.join(missing)}")
    if (folder / "model.pth").stat().st_size == 0:
        raise ValueError(f"{folder / 'model.pth'} is empty")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder / 'config.json'} is not JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model", "xtts") != "xtts":
        kind = config.get("model") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{folder / 'config.json'} is not an XTTS config (model: {kind!r})")


def _check_vocab(folder: Path, config: Any) -> None:
    """A vocab.json that does not fit config.json is named as such, not as a torch error."""
    try:
        data = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        ids = list(data["model"]["vocab"].values())
        ids += [t["id"] for t in data.get("added_tokens", [])]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder / 'vocab.json'} is not a tokenizer vocabulary: {exc}") from None
    tokens = max(ids) + 1 if ids else 0
    expected = getattr(config.model_args, "gpt_number_text_tokens", None)
    if expected and tokens != expected:
        raise ValueError(f"vocab.json has {tokens} tokens but config.json expects "
                         f"gpt_number_text_tokens = {expected}: they are not from one checkpoint")


def _first_lines(exc: BaseException, limit: int = 3) -> str:
    return " ".join(str(exc).strip().splitlines()[:limit])[:500]
