"""An XTTS checkpoint folder: the files Coqui loads, looked at before anything loads, and a
key naming its weights (the latents cache is kept per checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

REQUIRED_FILES = ("config.json", "model.pth", "vocab.json")


def checkpoint_key(folder: Path, sample: int = 2**20) -> str:
    """Names the weights of a checkpoint folder without reading all of them (model.pth is
    1.7 GiB): config.json's bytes, model.pth's size and modification time, and three sampled
    MiB of it (start, middle, end). A retrained file differs in its time, a copy of another
    checkpoint in its samples; at worst a copy of the same one computes its latents again."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    weights = folder / "model.pth"
    stat = weights.stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with weights.open("rb") as f:
        for offset in (0, max(0, stat.st_size // 2 - sample // 2), max(0, stat.st_size - sample)):
            f.seek(offset)
            digest.update(f.read(sample))
    return digest.hexdigest()[:16]


def check_checkpoint(folder: Path) -> None:
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


def check_vocab(folder: Path, config: Any) -> None:
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


def first_lines(exc: BaseException, limit: int = 3) -> str:
    return " ".join(str(exc).strip().splitlines()[:limit])[:500]
