"""The voice library of a commit: reference recordings under ``voices/``, described in
``voices.toml``, for the models that clone voices.

    [voices.narrator]
    file = "voices/narrator.wav"      # default: voices/NAME.wav
    model = "xtts"                     # optional: only this model speaks it
    language = "en"
    transcript = "It was a bright cold day in April."
    source = "Recorded by Ann for this project, 2026-12-01; she agreed to its use."

A commit is untrusted input, so each sample is checked as a file (inside ``voices/``, an audio
suffix, at most ``MAX_SAMPLE_BYTES``) and copied, once, into a store named by its content
(``<cache>/voices/<sha256><suffix>``): what serves is exactly what the commit holds, even after
the private copy of the commit is gone, and a rolled-back sample is the same file as before.
Whether it sounds like speech is the backend's to judge when it clones it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
import wave
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ..backend import VoiceSample

VOICES_FILE = "voices.toml"
VOICES_DIR = "voices"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
MAX_VOICES = 500
MAX_SAMPLE_BYTES = 25 * 2**20  # ~4 min of 48 kHz 16-bit mono wav; a cloning sample is 3-30 s
MAX_TOML_BYTES = 2**20
MAX_TEXT = 2000  # transcript and source
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYS = {"file", "model", "language", "transcript", "source"}
_LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8}){0,3}$")


def read_voices(tree: Path, store: Path) -> tuple[dict[str, VoiceSample], list[str]]:
    """The library of the commit at ``tree`` (its samples copied into ``store``), and what is
    wrong with it, one line per fault (empty: all is well)."""
    path = tree / VOICES_FILE
    if not path.is_file():
        return {}, []
    if path.stat().st_size > MAX_TOML_BYTES:
        return {}, [f"{VOICES_FILE}: larger than {MAX_TOML_BYTES // 1024} KiB"]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, [f"{VOICES_FILE}: {exc}"]
    unknown = set(data) - {"voices"}
    table = data.get("voices", {})
    if unknown or not isinstance(table, dict):
        return {}, [f"{VOICES_FILE}: expected only [voices.NAME] tables"]
    if len(table) > MAX_VOICES:
        return {}, [f"{VOICES_FILE}: {len(table)} voices; at most {MAX_VOICES}"]
    voices: dict[str, VoiceSample] = {}
    problems: list[str] = []
    for name, fields in table.items():
        try:
            voices[name] = _sample(tree, store, name, fields)
        except ValueError as exc:
            problems.append(f"voices.{name[:70]}: {exc}")
    return voices, problems


def _sample(tree: Path, store: Path, name: str, fields: Any) -> VoiceSample:
    if not NAME_RE.match(name):
        raise ValueError("not a voice name (letters, digits, _ . -; at most 64, starting with "
                         "a letter or digit)")
    if not isinstance(fields, dict):
        raise ValueError("expected a table")
    unknown = set(fields) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)[:5]}; known: {sorted(_KEYS)}")
    text = {key: _text(fields, key) for key in _KEYS}
    language = text["language"]
    if language is not None and not _LANGUAGE_RE.match(language):
        raise ValueError(f"language: {language[:20]!r} is not a language tag (en, ja-JP)")
    file = text["file"] or f"{VOICES_DIR}/{name}.wav"
    source = _inside_voices(tree, file)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return VoiceSample(name=name, path=_store(store, digest, source.suffix.lower(), data),
                       sha256=digest, model=text["model"], language=language,
                       transcript=text["transcript"], source=text["source"] or "",
                       file=file, size=len(data), **_wav_header(source))


def _text(fields: Mapping[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{key}: expected text of at most {MAX_TEXT} characters")
    return value


def _inside_voices(tree: Path, file: str) -> Path:
    """``file`` as a regular audio file under the commit's ``voices/``, or ValueError."""
    posix = PurePosixPath(file)
    if (posix.is_absolute() or ".." in posix.parts or len(posix.parts) < 2
            or posix.parts[0] != VOICES_DIR or "\\" in file or any(ord(c) < 32 for c in file)):
        raise ValueError(f"file: {file[:100]!r} is not a path inside {VOICES_DIR}/")
    if posix.suffix.lower() not in AUDIO_SUFFIXES:
        raise ValueError(f"file: {posix.name[:80]!r} is not one of {', '.join(AUDIO_SUFFIXES)}")
    path = tree.joinpath(*posix.parts)
    if not path.is_file():
        raise ValueError(f"file: {file[:100]} is not in the commit")
    size = path.stat().st_size
    if size > MAX_SAMPLE_BYTES:
        raise ValueError(f"file: {file[:100]} is {size / 2**20:.1f} MiB; at most "
                         f"{MAX_SAMPLE_BYTES // 2**20} MiB")
    return path


def _wav_header(path: Path) -> dict[str, Any]:
    """A wav's length and rate from its header (Python's own reader, nothing decoded); none
    for another format or a header it cannot read."""
    if path.suffix.lower() != ".wav":
        return {}
    try:
        with wave.open(str(path), "rb") as wav:
            rate = wav.getframerate()
            if not rate:
                return {}
            return {"seconds": round(wav.getnframes() / rate, 2), "rate": rate}
    except (OSError, EOFError, wave.Error):
        return {}


def voice_changes(old: Mapping[str, VoiceSample], new: Mapping[str, VoiceSample]
                  ) -> list[dict[str, Any]]:
    """The library's changes from ``old`` to ``new``: each voice added, removed or changed
    (another sample, or other fields), by name."""
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        kind = "added" if before is None else "removed" if after is None else (
            "changed" if before.sha256 != after.sha256 else "fields")
        shown = after or before
        assert shown is not None
        changes.append({"name": name, "change": kind, "file": shown.file,
                        "sha256": shown.sha256[:12], "seconds": shown.seconds,
                        "old_sha256": before.sha256[:12] if before else None})
    return changes


def _store(store: Path, digest: str, suffix: str, data: bytes) -> Path:
    """The sample's copy named by its content, written once (atomically)."""
    target = store / f"{digest}{suffix}"
    if target.is_file() and target.stat().st_size == len(data):
        return target
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{digest}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def with_voice(toml_text: str | None, name: str, fields: Mapping[str, str | None]) -> str:
    """``voices.toml`` with the table of voice ``name`` set to ``fields`` (None values left
    out), the rest of the file (comments, order) as it was."""
    import tomlkit

    doc = tomlkit.parse(toml_text) if toml_text else tomlkit.document()
    if "voices" not in doc:
        doc["voices"] = tomlkit.table(is_super_table=True)
    table = tomlkit.table()
    for key, value in fields.items():
        if value is not None:
            table[key] = value
    doc["voices"][name] = table  # type: ignore[index]
    return tomlkit.dumps(doc)


def without_voice(toml_text: str, name: str) -> str:
    """``voices.toml`` without the table of voice ``name``."""
    import tomlkit

    doc = tomlkit.parse(toml_text)
    doc["voices"].pop(name, None)  # type: ignore[union-attr]
    return tomlkit.dumps(doc)


def speaks(sample: VoiceSample, model: str, clones: bool) -> bool:
    """Whether model ``model`` speaks library ``sample``: its backend clones, and the sample
    is for it or for any model. The one rule for listing, requests and the warm-up."""
    return clones and sample.model in (None, model)


def library_for(voices: Mapping[str, VoiceSample], model: str, clones: bool) -> list[str]:
    """The names of the library's voices model ``model`` speaks."""
    return [name for name, sample in voices.items() if speaks(sample, model, clones)]
