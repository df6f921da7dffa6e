"""In-process espeak-ng phonemiser for Piper-format ONNX voices.

Goal: produce the same phonemes / phoneme ids as ``piper-tts`` 1.8.0
(``PiperVoice.phonemize`` + ``PiperVoice.phonemes_to_ids``) without importing
piper-tts.  espeak-ng is reached through ctypes; by default the shared
library and data shipped by the ``espeakng-loader`` wheel are used.

How piper-tts 1.8.0 works (observed from its installed code and behaviour):

* ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir, 0)`` once per
  process, ``espeak_SetVoiceByName(config["espeak"]["voice"])`` before every
  text, then ``espeak_TextToPhonemesWithTerminator(&ptr, espeakCHARS_AUTO,
  espeakPHONEMES_IPA, &terminator)`` in a loop until ``ptr`` becomes NULL:
  one call = one espeak *clause*.
* The terminator code (masked with 0x000FFFFF) is mapped to one of
  ``. ? ! , : ;`` (anything else -> ""), and bit 0x00080000 marks the end of a
  sentence.
* Per clause: remove language-switch flags ``(xx)``, append the terminator
  string, append a space after ``, : ;``, NFD-normalise, split into code points.
  Clauses are grouped into sentences; a trailing empty sentence is dropped.
* ``[[ ... ]]`` blocks in the text are raw phonemes (code points, stripped).
* ids: ``^`` ``_`` then for each phoneme its ids followed by ``_``, then
  ``$``.  Phonemes missing from the map are skipped (piper logs a warning).

Differences between the espeak-ng build inside piper-tts 1.8.0 (upstream
master of 2025-03, reported version 1.52.0.1) and espeak-ng 1.52.0 (what
``espeakng-loader`` 0.2.4 ships) and how they are bridged here:

1. 1.52.0 lacks ``espeak_TextToPhonemesWithTerminator``.  The clause text is
   identical, only the terminator is unknown, so it is recovered from the
   bytes espeak consumed for the clause (see ``_infer_terminator``).  If the
   loaded library has the function it is used directly.
2. piper's build has the upstream regression espeak-ng#2367 (fixed by #2457):
   in IPA output every ``prevPh()`` condition is false, so the linking phoneme
   ``;`` is printed as ``ʲ`` after i-vowels (``happy about`` -> ``hˈæpiʲ``).
   With ``piper_compat=True`` (default) and an engine that does *not* show
   the regression, the phoneme string is re-derived from a second espeak pass
   in mnemonic mode and ``ʲ`` is inserted where the mnemonic is ``;``.
3. Dictionary data differs in a few multi-word entries (known: en "has been").
   That cannot be bridged through the API; see the report.

Thread safety: espeak-ng keeps all of its state in C globals (voice,
translator, text decoder, the look-ahead character between clauses) and
ctypes releases the GIL during calls, so every use of one loaded library is
serialised with a per-library lock.  espeak also carries its look-ahead
character over from one text to the next (piper-tts: after "hello .." the
next text starts with "dot"); a throw-away text is run first so that every
text is phonemised as in a fresh process.  Other code in the same process that uses
the *same* shared library (e.g. ``phonemizer`` via espeakng-loader) shares the
state; the voice is therefore set again on every call, as piper does.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "EspeakPhonemizer",
    "phonemes_to_ids",
]

PAD = "_"
BOS = "^"
EOS = "$"

# espeak-ng constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # never call exit() on a data error
_CHARS_AUTO = 0
_PHONEMES_IPA = 0x02
_EE_OK = 0

# clause terminator bits (only used when the library reports them)
_CLAUSE_TYPE_SENTENCE = 0x00080000
_TERMINATOR_CODES = {
    0x00080028: ".",  # period
    0x00082028: "?",  # question
    0x0008302D: "!",  # exclamation
    0x00041014: ",",  # comma
    0x0004001E: ":",  # colon
    0x0004101E: ";",  # semicolon
}

# Separator placed between phonemes for the compatibility pass: a private-use
# code point that never occurs in espeak output.
_SEP_CHAR = "\ue000"
_SEP_MODE = ord(_SEP_CHAR) << 8

# Characters after which espeak-ng (en voices) ends a clause, grouped by what
# piper-tts reports for them: (terminator string, ends sentence).  Determined
# empirically against piper-tts 1.8.0 by probing every BMP code point.
_TERMINATOR_CLASSES: dict[tuple[str, bool], str] = {
    (".", True): (
        ".\u06d4\u0701\u0704\u1362\u166e\u1803\u1809"
        + "".join(chr(c) for c in range(0x2488, 0x249C))
        + "\u2cf9\u2cfe\u2e33\u2e3c\ua4ff\ua60e\ua6f3\ufe12\ufe52\uff61"
    ),
    ("?", True): (
        "?\u037e\u061f\u0709\u1367\u1945\u2047\u2753\u2754\u2cfa\u2cfb"
        "\ua60f\ua6f7\ufe16\ufe56"
    ),
    ("!", True): "!\u0703\u07f9\u1944\u203c\u2755\u2757\u2762\u2763\ufe15\ufe57",
    (",", False): (
        ",\u055d\u060c\u0702\u07f8\u0f14\u1363\u1802\u1808\u2e32\u2e34"
        "\u2e41\ua4fe\ua60d\ua6f5\ufe10\ufe11\ufe50\ufe51\uff64"
    ),
    (":", False): ":\u0706\u0707\u1365\u1366\u1804\u2982\ua6f4\ufe13\ufe55",
    (";", False): (
        ";\u0387\u061b\u0708\u1364\u2013\u2014\u204f\u2e35\u2e3a\u2e3b"
        "\ua6f6\ufe14\ufe31\ufe32\ufe54"
    ),
    ("", False): (
        "\u00a1\u00bf\u0eaf\u1801\u2026\u22ee\u22ef\u22f0\u22f1\u3001"
        "\ufe19\uff0c\uff1a\uff1b"
    ),
    ("", True): (
        "\u0589\u0700\u0964\u0965\u0df4\u0f0d\u0f0e\u10fb\u1368\u2029"
        "\u3002\uff01\uff0e\uff1f"
    ),
}
_TERMINATOR_OF: dict[str, tuple[str, bool]] = {
    ch: cls for cls, chars in _TERMINATOR_CLASSES.items() for ch in chars
}
_ELLIPSIS = ("", False)
_PARAGRAPH = ("", True)
_EOF = ("", True)
_NO_TERMINATOR = ("", False)

# White space as espeak-ng sees it (no-break spaces are *not* white space).
_SPACES = frozenset(
    "\t\n\v\f\r \x85\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2008\u2009\u200a\u2028\u2029\u205f\u3000"
)
# Besides white space, punctuation only ends a clause when followed by one of
# these (brackets and quotes) or '?'.
_END_FOLLOWERS = frozenset(
    "\"'()<>[]`{}\xab\xbb\u2015\u2016\u2017\u2018\u2019\u201a\u201b\u201c"
    "\u201d\u201e\u201f\u300a\u300b?"
)
# Terminators that end a clause even when a letter follows directly.
_NO_SPACE_NEEDED = frozenset(
    "\xa1\xbf\u0eaf\u1801\u2026\u22ee\u22ef\u22f0\u22f1\u3001\ufe19\uff0c"
    "\uff1a\uff1b\u0589\u0964\u0df4\u0f0d\u3002\uff01\uff0e\uff1f"
)

_LANG_SWITCH = re.compile(r"\([^)]+\)")
_RAW_PHONEME_BLOCK = re.compile(r"(\[\[.*?\]\])")


def _classify_run(run: str) -> tuple[str, bool]:
    """Terminator of a run of clause punctuation that ended a clause.

    espeak swallows the punctuation that follows the first character of the
    run, so the first character decides ("?!" -> "?", ",." -> ","), except
    that three or more dots at the start form an ellipsis.
    """
    if run.startswith("..."):
        return _ELLIPSIS
    return _TERMINATOR_OF[run[0]]


def _infer_terminator(clause_text: str, reached_end: bool) -> tuple[str, bool]:
    """Clause terminator from the text espeak-ng consumed for one clause.

    ``clause_text`` is the look-ahead character carried over from the
    previous clause followed by the bytes consumed by this call.  espeak
    reads one character past the terminating punctuation; when that character
    is white space it keeps reading up to the first non-space character.  So,
    unless the input ran out, the last character is look-ahead for the next
    clause.  Rules (mirroring espeak-ng's clause reader):

    * two or more newlines after the punctuation make it a paragraph end;
    * with no newline after it, punctuation only counts when the clause has
      a letter or digit before it;
    * otherwise the clause ended at end of input (sentence end) or because
      it grew too long (no terminator).
    """
    if reached_end:
        tail, lookahead = clause_text, ""
    else:
        tail, lookahead = clause_text[:-1], clause_text[-1:]
    end = len(tail)
    while end > 0 and tail[end - 1] in _SPACES:
        end -= 1
    newlines = tail.count("\n", end)
    start = end
    while start > 0 and tail[start - 1] in _TERMINATOR_OF:
        start -= 1

    if start < end:  # a run of clause punctuation ends the text
        if newlines >= 2:
            return _PARAGRAPH
        has_word = any(ch.isalnum() for ch in tail[:start])
        if newlines == 1 or has_word:
            followed_ok = (
                reached_end
                or end < len(tail)  # white space after the run
                or lookahead in _END_FOLLOWERS
                or tail[start] in _NO_SPACE_NEEDED
            )
            if followed_ok:
                return _classify_run(tail[start:end])

    if newlines >= 2:
        return _PARAGRAPH
    if "\u2029" in tail[end:]:
        return _PARAGRAPH  # paragraph separator right after the last word
    if reached_end:
        return _EOF
    return _NO_TERMINATOR  # clause split because it grew too long


class _Engine:
    """One loaded libespeak-ng (process-global C state) plus its lock."""

    def __init__(self, library_path: str, data_path: str) -> None:
        self.library_path = library_path
        self.data_path = data_path
        self.lock = threading.RLock()
        self.lib = ctypes.CDLL(library_path)
        lib = self.lib

        lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p

        self.with_terminator = None
        if hasattr(lib, "espeak_TextToPhonemesWithTerminator"):
            fn = lib.espeak_TextToPhonemesWithTerminator
            fn.argtypes = [
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_int,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_int),
            ]
            fn.restype = ctypes.c_char_p
            self.with_terminator = fn

        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise RuntimeError(
                f"espeak-ng initialisation failed (data path {data_path!r})"
            )
        self._glide_regression: bool | None = None

    # -- low level -------------------------------------------------------
    def set_voice(self, voice: str) -> None:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng voice not found: {voice!r}")

    def raw_clauses(
        self, text: str, mode: int
    ) -> list[tuple[str, tuple[str, bool] | None, str, bool]]:
        """Run the clause loop once.

        Returns (phonemes, terminator-or-None, consumed text, reached_end).
        """
        self._flush(mode)
        data = text.encode("utf-8", errors="replace").replace(b"\x00", b" ")
        buf = ctypes.create_string_buffer(data)
        base = ctypes.addressof(buf)
        ptr = ctypes.c_void_p(base)
        out = []
        term = ctypes.c_int(0)
        while ptr.value is not None:
            start = ptr.value - base
            if self.with_terminator is not None:
                term.value = 0
                raw = self.with_terminator(
                    ctypes.byref(ptr), _CHARS_AUTO, mode, ctypes.byref(term)
                )
                code = term.value & 0x000FFFFF
                terminator: tuple[str, bool] | None = (
                    _TERMINATOR_CODES.get(code, ""),
                    (code & _CLAUSE_TYPE_SENTENCE) == _CLAUSE_TYPE_SENTENCE,
                )
            else:
                raw = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_AUTO, mode)
                terminator = None
            if raw is None:
                break  # decoder failure: espeak returns NULL without progress
            end = None if ptr.value is None else ptr.value - base
            span = data[start:end].decode("utf-8", errors="replace")
            out.append(
                (
                    raw.decode("utf-8", errors="replace"),
                    terminator,
                    span,
                    ptr.value is None,
                )
            )
        return out

    def _flush(self, mode: int) -> None:
        """Drop look-ahead state left over from a previous text.

        espeak-ng keeps the character it read ahead in a global between
        calls, even across texts: after "hello .." the *next* text starts with
        "dot".  Phonemising a throw-away word consumes it, so every text is
        processed as in a fresh process.
        """
        buf = ctypes.create_string_buffer(b"x")
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        while ptr.value is not None:
            if self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_AUTO, mode) is None:
                break

    def has_glide_regression(self) -> bool:
        """True if this build prints the linking phoneme ';' as 'ʲ' after i."""
        if self._glide_regression is None:
            self.set_voice("en-us")
            phonemes = "".join(p for p, *_ in self.raw_clauses("happy about", _PHONEMES_IPA))
            self._glide_regression = "ʲ" in phonemes
        return self._glide_regression


_ENGINES: dict[str, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _default_paths() -> tuple[str, str]:
    import espeakng_loader  # small, pure-Python; only path helpers are used

    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def default_engine_problem() -> str | None:
    """Why the default espeak-ng (espeakng-loader's library and data) cannot be used here,
    decided from files alone: nothing is loaded. None when it looks usable.

    Whether the data knows a given voice is left to the warm-up: espeak resolves a voice by
    file name, voice name or any language alias inside the voice files, and guessing that
    from the outside would call usable voices unusable.
    """
    if importlib.util.find_spec("espeakng_loader") is None:
        return ("espeakng-loader (espeak-ng's library and data) is not installed: "
                "pip install alltalk-host-onnx")
    try:
        library, data = _default_paths()
    except (OSError, RuntimeError) as exc:  # get_data_path raises when the folder is gone
        return f"espeak-ng data: {exc}"
    if not os.path.isfile(library):
        return f"espeak-ng library {library} not found"
    if not os.path.isfile(os.path.join(data, "phontab")):
        return f"espeak-ng data folder {data} has no phontab"
    return None


def _get_engine(library_path: str | None, data_path: str | None) -> _Engine:
    if library_path is None or data_path is None:
        default_lib, default_data = _default_paths()
        library_path = library_path or default_lib
        data_path = data_path or default_data
    key = os.path.realpath(library_path)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _Engine(key, os.fspath(data_path))
            _ENGINES[key] = engine
        elif os.path.realpath(engine.data_path) != os.path.realpath(data_path):
            raise ValueError(
                f"{key} is already initialised with data {engine.data_path!r}; "
                "espeak-ng supports one data path per process"
            )
        return engine


def _merge_vowel_clusters(
    phonemes: Sequence[str], clusters: set[tuple[str, ...]]
) -> list[str]:
    longest = max(len(c) for c in clusters)
    merged: list[str] = []
    i = 0
    while i < len(phonemes):
        for n in range(min(longest, len(phonemes) - i), 1, -1):
            if tuple(phonemes[i : i + n]) in clusters:
                merged.append("".join(phonemes[i : i + n]))
                i += n
                break
        else:
            merged.append(phonemes[i])
            i += 1
    return merged


class EspeakPhonemizer:
    """Text -> phonemes per sentence, matching piper-tts 1.8.0.

    :param data_path: espeak-ng-data directory (default: espeakng-loader's).
    :param library_path: libespeak-ng shared library (default: espeakng-loader's).
    :param piper_compat: reproduce piper-tts 1.8.0's ``ʲ`` output (see module
        doc).  ``False`` gives plain espeak-ng 1.52.0 IPA, which is what
        voices trained with piper-phonemize saw.
    """

    def __init__(
        self,
        data_path: str | None = None,
        library_path: str | None = None,
        piper_compat: bool = True,
    ) -> None:
        self._engine = _get_engine(library_path, data_path)
        with self._engine.lock:
            self._emulate_glide = piper_compat and not self._engine.has_glide_regression()

    @property
    def exact_terminators(self) -> bool:
        return self._engine.with_terminator is not None

    # -- clause level (mirrors espeakbridge.get_phonemes) ------------------
    def clauses(self, voice: str, text: str) -> list[tuple[str, str, bool]]:
        """(phonemes, terminator, end_of_sentence) per espeak clause."""
        engine = self._engine
        with engine.lock:
            engine.set_voice(voice)
            if not self._emulate_glide:
                raw = engine.raw_clauses(text, _PHONEMES_IPA)
                phonemes = [r[0] for r in raw]
            else:
                raw = engine.raw_clauses(text, _PHONEMES_IPA | _SEP_MODE)
                phonemes = [r[0] for r in raw]
                if any(_has_empty_token(p) for p in phonemes):
                    mnemonic = engine.raw_clauses(text, _SEP_MODE)
                    if len(mnemonic) == len(raw):
                        phonemes = [
                            _insert_glides(p, m[0])
                            for p, m in zip(phonemes, mnemonic, strict=True)
                        ]
                phonemes = [p.replace(_SEP_CHAR, "") for p in phonemes]

        result = []
        carried = ""  # look-ahead character read by the previous clause
        for ph, (_, terminator, span, reached_end) in zip(phonemes, raw, strict=True):
            if terminator is None:
                terminator = _infer_terminator(carried + span, reached_end)
            carried = span[-1:] if not reached_end else ""
            result.append((ph, terminator[0], terminator[1]))
        return result

    # -- sentence level (mirrors PiperVoice.phonemize for espeak voices) ---
    def phonemize(
        self,
        voice: str,
        text: str,
        vowel_clusters: Iterable[Sequence[str]] | None = None,
    ) -> list[list[str]]:
        """Phonemes grouped by sentence, like ``PiperVoice.phonemize``."""
        clusters = {tuple(c) for c in vowel_clusters} if vowel_clusters else None
        sentences: list[list[str]] = []
        parts = _RAW_PHONEME_BLOCK.split(text)
        after_raw_block = False
        for i, part in enumerate(parts):
            if part.startswith("[["):
                after_raw_block = True
                if not sentences:
                    sentences.append([])
                if i > 0 and parts[i - 1].endswith(" "):
                    sentences[-1].append(" ")
                sentences[-1].extend(part[2:-2].strip())
                if i < len(parts) - 1 and parts[i + 1].startswith(" "):
                    sentences[-1].append(" ")
                continue

            part_sentences = self._phonemize_plain(voice, part, clusters)
            if after_raw_block and part_sentences:
                sentences[-1].extend(part_sentences[0])
                part_sentences = part_sentences[1:]
            sentences.extend(part_sentences)
            after_raw_block = False

        if sentences and not sentences[-1]:
            sentences.pop()
        return sentences

    def _phonemize_plain(
        self, voice: str, text: str, clusters: set[tuple[str, ...]] | None
    ) -> list[list[str]]:
        sentences: list[list[str]] = []
        current: list[str] = []
        for phonemes, terminator, sentence_end in self.clauses(voice, text):
            phonemes = _LANG_SWITCH.sub("", phonemes) + terminator
            if terminator in (",", ":", ";"):
                phonemes += " "
            current.extend(unicodedata.normalize("NFD", phonemes))
            if sentence_end:
                sentences.append(_merge_vowel_clusters(current, clusters) if clusters else current)
                current = []
        if current:
            sentences.append(_merge_vowel_clusters(current, clusters) if clusters else current)
        return sentences


def _has_empty_token(phonemes: str) -> bool:
    return any(
        token == ""
        for word in phonemes.split(" ")
        if word
        for token in word.split(_SEP_CHAR)
    )


def _insert_glides(ipa: str, mnemonic: str) -> str:
    """Put 'ʲ' where espeak's mnemonic output has the linking phoneme ';'.

    Both strings are separated with _SEP_CHAR between phonemes and spaces
    between words; if their shapes differ the IPA is returned unchanged.
    """
    ipa_words = ipa.split(" ")
    mn_words = mnemonic.split(" ")
    if len(ipa_words) != len(mn_words):
        return ipa
    out_words = []
    for iw, mw in zip(ipa_words, mn_words, strict=True):
        it = iw.split(_SEP_CHAR)
        mt = mw.split(_SEP_CHAR)
        if len(it) != len(mt):
            return ipa
        out_words.append(
            _SEP_CHAR.join(
                "ʲ" if (m == ";" and i == "") else i for i, m in zip(it, mt, strict=True)
            )
        )
    return " ".join(out_words)


def phonemes_to_ids(
    phonemes: Sequence[str], id_map: Mapping[str, Sequence[int]]
) -> tuple[list[int], list[str]]:
    """Piper phoneme ids: BOS, PAD, (ids + PAD) per phoneme, EOS.

    Returns the ids and the phonemes that were missing from ``id_map`` and
    skipped (piper-tts skips them too and logs a warning).
    """
    pad = list(id_map[PAD])
    ids: list[int] = list(id_map[BOS]) + pad
    missing: list[str] = []
    for phoneme in phonemes:
        mapped = id_map.get(phoneme)
        if mapped is None:
            missing.append(phoneme)
            continue
        ids.extend(mapped)
        ids.extend(pad)
    ids.extend(id_map[EOS])
    return ids, missing
