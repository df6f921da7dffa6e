"""A Piper voice's ``model.onnx.json``, read and checked before any ONNX session is made."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alltalk_host import number_in

from .phonemize import BOS, EOS, PAD

SAMPLE_RATE_RANGE = (8000, 48000)


class VoiceError(ValueError):
    """A voice's files are missing, unreadable or contradict each other."""


@dataclass(frozen=True)
class VoiceConfig:
    path: Path
    sample_rate: int
    espeak_voice: str
    language: str  # the language family requests name, e.g. "en"
    phoneme_id_map: dict[str, list[int]]
    speakers: dict[str, int]  # name -> sid; empty for a single-speaker voice
    noise_scale: float
    length_scale: float
    noise_w: float
    vowel_clusters: list[list[str]] | None
    name: str

    @property
    def multi_speaker(self) -> bool:
        return len(self.speakers) > 1


def model_inputs(ids: list[int], scales: np.ndarray | list[float], sid: int | None = None
                 ) -> dict[str, np.ndarray]:
    """A Piper model's inputs for one sentence of phoneme ids: ``scales`` is (noise_scale,
    length_scale, noise_w); ``sid`` is given for a voice with several speakers only (the
    model has no such input otherwise)."""
    feeds = {"input": np.array([ids], dtype=np.int64),
             "input_lengths": np.array([len(ids)], dtype=np.int64),
             "scales": np.asarray(scales, dtype=np.float32)}
    if sid is not None:
        feeds["sid"] = np.array([sid], dtype=np.int64)
    return feeds


def read_voice_config(path: Path) -> VoiceConfig:
    if not path.is_file():
        raise VoiceError(f"voice config {path} not found (a Piper voice needs model.onnx and "
                         "model.onnx.json side by side)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VoiceError(f"voice config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VoiceError(f"voice config {path} is not a JSON object")

    def need(*keys: str) -> Any:
        node: Any = data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise VoiceError(f"voice config {path} has no {'.'.join(keys)}")
            node = node[key]
        return node

    phoneme_type = data.get("phoneme_type", "espeak")
    if phoneme_type != "espeak":
        raise VoiceError(f"voice config {path}: phoneme_type {phoneme_type!r} is not supported "
                         "(only espeak voices)")
    id_map = need("phoneme_id_map")
    if not isinstance(id_map, dict) or not id_map or not all(
            isinstance(v, list) and v and all(isinstance(i, int) and i >= 0 for i in v)
            for v in id_map.values()):
        raise VoiceError(f"voice config {path}: phoneme_id_map must map phonemes to lists of "
                         "non-negative ids")
    for symbol in (PAD, BOS, EOS):
        if symbol not in id_map:
            raise VoiceError(f"voice config {path}: phoneme_id_map lacks {symbol!r}")
    highest = max(i for ids in id_map.values() for i in ids)
    num_symbols = data.get("num_symbols", highest + 1)
    if not isinstance(num_symbols, int) or highest >= num_symbols:
        raise VoiceError(f"voice config {path}: phoneme id {highest} does not fit num_symbols "
                         f"{num_symbols}")

    rate = need("audio", "sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or not (
            SAMPLE_RATE_RANGE[0] <= rate <= SAMPLE_RATE_RANGE[1]):
        raise VoiceError(f"voice config {path}: audio.sample_rate {rate!r} is not a sample rate "
                         f"from {SAMPLE_RATE_RANGE[0]} to {SAMPLE_RATE_RANGE[1]} Hz")

    num_speakers = data.get("num_speakers", 1)
    speaker_map = data.get("speaker_id_map") or {}
    if not isinstance(num_speakers, int) or num_speakers < 1 or not isinstance(speaker_map, dict):
        raise VoiceError(f"voice config {path}: num_speakers/speaker_id_map are malformed")
    if num_speakers > 1:
        if not speaker_map:
            speaker_map = {str(i): i for i in range(num_speakers)}
        bad = {n: i for n, i in speaker_map.items()
               if not isinstance(i, int) or not 0 <= i < num_speakers}
        if bad:
            raise VoiceError(f"voice config {path}: speaker ids {bad} do not fit num_speakers "
                             f"{num_speakers}")
    else:
        speaker_map = {}

    inference = data.get("inference") or {}
    espeak_voice = need("espeak", "voice")
    language = (data.get("language") or {}).get("family") or espeak_voice.split("-")[0]
    return VoiceConfig(
        path=path,
        sample_rate=rate,
        espeak_voice=espeak_voice,
        language=language,
        phoneme_id_map=id_map,
        speakers=speaker_map,
        noise_scale=_scale(inference, "noise_scale", 0.667, path),
        length_scale=_scale(inference, "length_scale", 1.0, path),
        noise_w=_scale(inference, "noise_w", 0.8, path),
        vowel_clusters=data.get("vowel_clusters"),
        name=str(data.get("dataset") or path.name.split(".")[0]),
    )


def _scale(inference: dict[str, Any], key: str, default: float, path: Path) -> float:
    value = inference.get(key, default)
    checked = number_in(value, 0.0, float("inf"))
    if checked is None:
        raise VoiceError(f"voice config {path}: inference.{key} {value!r:.40} is not a "
                         "number >= 0")
    return checked
