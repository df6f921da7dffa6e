"""Text utilities shared by backends and front-ends: the one sentence splitter, AllTalk's text
filtering, narrator segments, and the test for text with nothing to speak.

Streaming backends speak sentence by sentence so the first audio does not wait for the whole
text; narrator mode and the streaming routes split the same way, so they use this too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

# Words that end with a full stop without ending a sentence.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "fig", "figs", "no",
    "nos", "vol", "p", "pp", "ch", "sec", "approx", "dept", "est", "inc", "ltd", "co", "corp",
    "gen", "col", "lt", "sgt", "capt", "rev", "hon", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun",
    "e.g", "i.e", "a.m", "p.m", "cf", "al",
})
# A sentence end: terminal punctuation (and closing quotes/brackets), then white space.
# Linear on any input: the look-behind starts a match only at the first mark of a run, and the
# possessive runs never give back what they took. (Without them a run of 60,000 dots took
# 47 s: every start inside the run rescanned the rest of it.) Giving back could not have found
# a match anyway: after a shorter run the next character is another mark, not white space.
# Chinese and Japanese end a sentence with a full-width mark (。！？, and the half-width ｡)
# and put no space after it: the second alternative needs none, and keeps the closing quotes
# and brackets that follow (」』）】〉》) with the sentence. Its marks are possessive too.
_CJK_MARKS = "\u3002\uff01\uff1f\uff61"
_CJK_CLOSERS = "\u300d\u300f\uff09\u3011\u3015\u3009\u300b\u201d\u2019\"')\\]"
_CJK_OPENERS = "\u300c\u300e\uff08\u3010\u3014\u3008\u300a\u201c\u2018\"'(["
_END = re.compile(r"""(?<![.!?\u2026])[.!?\u2026]++["'\u201d\u2019)\]]*+(?=\s)"""
                  f"|(?<![{_CJK_MARKS}])[{_CJK_MARKS}]++[{_CJK_CLOSERS}]*+")
_NEXT = re.compile(r"\s*(\S)")
_SPACES_FROM = re.compile(r"\s*")
_BLANK_LINE = re.compile(r"\n\s*\n")
# A clause mark: a Latin one before a space, or a full-width one (、，；：), which has none.
_CLAUSE = re.compile(r"[,;:\u2013\u2014]\s|[\u3001\uff0c\uff1b\uff1a]")
# How far back from a full stop an abbreviation is looked for: longer than any of them with
# its opening quotes, and a bound, so a long word before a stop is not read again per stop.
_WORD_WINDOW = 32

DEFAULT_MAX_CHARS = 400


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Sentences of ``text``, stripped, none empty and none longer than ``max_chars``.

    Splits after ``.``, ``!``, ``?`` and ``…`` followed by white space, except before a
    lower-case word ("Wait... what?"), after common abbreviations ("Dr.", "e.g.") and after
    single initials ("J. Smith"); after the Chinese and Japanese ``。！？`` (no space needed),
    with the closing quotes and brackets that follow, except where the quote goes on inside a
    sentence (「はい。」と言った。); and at blank lines. An over-long sentence is cut at its
    last clause mark (``,;:`` or a dash, or ``、，；：``), else at a space, before
    ``max_chars``. Time linear in the length of ``text``, whatever it holds.
    """
    sentences: list[str] = []
    for paragraph in _BLANK_LINE.split(text):
        start = 0
        for match in _END.finditer(paragraph):
            if match.group()[0] in _CJK_MARKS:
                if _quote_goes_on(paragraph, match):
                    continue
            else:
                following = _NEXT.match(paragraph, match.end())
                if (following and following.group(1).islower()) or _ends_with_abbreviation(
                        paragraph, start, match):
                    continue
            sentence = paragraph[start:match.end()].strip()
            if len(sentence) <= max_chars:  # the usual case, without building a list
                sentences.append(sentence)
            else:
                sentences.extend(_limit(sentence, max_chars))
            start = match.end()
        sentences.extend(_limit(paragraph[start:].strip(), max_chars))
    return [s for s in sentences if s]


def _quote_goes_on(paragraph: str, match: re.Match[str]) -> bool:
    """Whether a CJK end that closes a quote or bracket is inside a sentence: the text goes on
    at once with something other than another quote (「はい。」と言った。 is one sentence,
    「行こう！」「うん。」 two)."""
    marks = match.group()
    if marks[-1] in _CJK_MARKS or match.end() >= len(paragraph):
        return False
    following = paragraph[match.end()]
    return not following.isspace() and following not in _CJK_OPENERS


def _ends_with_abbreviation(paragraph: str, start: int, match: re.Match[str]) -> bool:
    """Whether the sentence ``paragraph[start:match.end()]`` ends with an abbreviation or an
    initial's full stop: the word before the stops, looked for within ``_WORD_WINDOW``."""
    marks = match.group()
    if not marks.endswith("."):
        return False
    stops = len(marks) - len(marks.rstrip("."))
    end = match.end() - stops
    low = max(start, end - _WORD_WINDOW)
    window = paragraph[low:end]
    words = window.rsplit(None, 1)
    if not words:
        return False
    if len(words) == 1 and low > start and not window[0].isspace() \
            and not paragraph[low - 1].isspace():
        return False  # a word longer than the window: no abbreviation
    word = words[-1].lower().lstrip("(\"'\u201c\u2018")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _limit(sentence: str, max_chars: int) -> list[str]:
    """``sentence`` (stripped) in pieces of at most ``max_chars``; each piece is copied once,
    so a long sentence costs its length, not its length times its pieces."""
    pieces = []
    position = 0
    while len(sentence) - position > max_chars:
        window = sentence[position:position + max_chars]
        cut = max((m.end() for m in _CLAUSE.finditer(window)), default=0)
        if cut < max_chars // 3:  # no useful clause mark: fall back to the last space
            cut = window.rfind(" ") + 1 or max_chars
        pieces.append(window[:cut].strip())
        position = _SPACES_FROM.match(sentence, position + cut).end()
    pieces.append(sentence[position:])
    return [p for p in pieces if p]


# Quote and bracket marks: a clause is never cut inside them, so neither half speaks half a
# quotation. A straight double quote opens or closes by count; single quotes are left out,
# since "\u2019" is also the apostrophe of "don\u2019t".
_OPENERS, _CLOSERS = "\u201c([", "\u201d)]"
_DASHES = frozenset({"-", "--", "\u2013", "\u2014"})
_TRAILING_CLOSERS = "\"'\u201d\u2019)]"


def first_clause(sentence: str, min_words: int, max_words: int, *,
                 at_word: bool = True) -> tuple[str, str] | None:
    """``sentence`` cut in two after its first clause, or None where it should stay whole.

    Streaming speaks the head alone first, so the first audio waits for one clause, not one
    sentence. The cut comes after a ``,;:`` or a spaced dash that ends a word, once at least
    ``min_words`` words are said and at least ``min_words`` remain; with no clause mark by
    ``max_words`` words, at the first word boundary after that. Never inside quotes or
    brackets, never after a word that ends with a full stop (an abbreviation or an initial:
    "Dr. | Smith" would be said as two sentences), and never inside a number ("1,000" has no
    space after its comma). The head keeps its punctuation, so the voice pauses there as it
    would mid-sentence instead of falling as at a sentence end. ``max_words = 0``: never.
    ``at_word=False``: only at a clause mark within ``max_words`` words, never at a bare word
    boundary (a backend that joins its own word cuts, as the onnx plugin does).
    """
    if max_words <= 0:
        return None
    words = [(m.group(), m.end()) for m in re.finditer(r"\S+", sentence)]
    depth = 0  # how deep inside quotes and brackets the cut point is
    straight_open = False
    for i, (word, end) in enumerate(words[:len(words) - min_words]):
        for ch in word:
            if ch == '"':
                straight_open = not straight_open
            elif ch in _OPENERS:
                depth += 1
            elif ch in _CLOSERS and depth:
                depth -= 1
        said = i + 1
        if not at_word and said > max_words:
            return None  # no clause mark in time
        if depth or straight_open or said < min_words:
            continue
        bare = word.rstrip(_TRAILING_CLOSERS)
        clause_end = bare[-1:] in (",", ";", ":") or word in _DASHES
        if clause_end and word not in _DASHES and words[i + 1][0] in _DASHES:
            continue  # "well, - no": cut after the dash, not before it
        if bare.endswith(".") and not clause_end:
            continue
        if clause_end or (at_word and said >= max_words):
            return sentence[:end].strip(), sentence[end:].strip()
    return None


def has_speakable(text: str) -> bool:
    """Whether ``text`` has anything a voice could say: a letter or a digit in some script.

    ".", "...", "-", emoji and control characters alone have none; a model asked to speak them
    either fails or says nothing, so the host decides before a model is involved.
    """
    return any(ch.isalnum() for ch in text)


# --- filtering (AllTalk's text_filtering) ---------------------------------------------------

# A tag holds no "<": each "<" is looked at once, so "<<<<..." costs its length.
_TAG = re.compile(r"<[^<>]{0,500}+>")
_MARKUP = re.compile(r"[*_~`#|\\^]+")
_URL = re.compile(r"https?://\S+")
_SPACES = re.compile(r"[ \t\u00a0]+")
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f\u200d]")


def filter_text(text: str, mode: str = "standard") -> str:
    """``none``: as given. ``standard``: drop markdown marks, links, emoji and control
    characters; tidy white space. ``html``: strip tags and unescape entities, then standard."""
    if mode == "none":
        return text
    if mode == "html":
        text = strip_html(text)
    elif mode != "standard":
        raise ValueError(f"text_filtering must be none, standard or html, not {mode!r}")
    text = _URL.sub(" ", text)
    text = _EMOJI.sub("", text)
    text = _MARKUP.sub(" ", text)
    text = "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
    text = _SPACES.sub(" ", text)
    return "\n".join(line.strip() for line in text.splitlines()).strip()


def strip_html(text: str) -> str:
    """Tags out, entities unescaped: what ``html`` filtering does before ``standard``."""
    import html

    return html.unescape(_TAG.sub(" ", text))


# --- narrator mode ------------------------------------------------------------------------

# What each quoted or marked piece opens and closes with.
_CLOSER = {'"': '"', "\u201c": "\u201d", "*": "*"}


@functools.lru_cache(maxsize=8)
def _openers(kinds: str) -> re.Pattern[str]:
    return re.compile(f"[{re.escape(kinds)}]")


def _pieces(text: str) -> Iterator[tuple[int, int]]:
    """Start and end of each piece in double quotes or between asterisks, left to right.

    Once a kind of opener has no closer after it, no later one of its kind has one either:
    it is not looked for again. (A pattern such as ``\u201c[^\u201d]*\u201d`` searched for
    every opener anew, so a text of 100,000 unclosed quotes took minutes.)
    """
    kinds, position = "".join(_CLOSER), 0
    while kinds:
        opener = _openers(kinds).search(text, position)
        if opener is None:
            return
        close = text.find(_CLOSER[opener.group()], opener.end())
        if close < 0:
            kinds = kinds.replace(opener.group(), "")
            position = opener.start() + 1
            continue
        yield opener.start(), close + 1
        position = close + 1


def narrator_segments(text: str, not_inside: str = "narrator") -> list[tuple[str, str]]:
    """Split a role-play text into (role, text) pieces, roles "character" and "narrator".

    Text in double quotes is the character speaking; text between asterisks is narration; text
    in neither goes to ``not_inside`` ("character", "narrator" or "silent": left out).
    Neighbouring pieces of one role are merged; empty pieces dropped.
    """
    if not_inside not in ("character", "narrator", "silent"):
        raise ValueError(f"text_not_inside must be character, narrator or silent, not "
                         f"{not_inside!r}")
    pieces: list[tuple[str, str]] = []
    position = 0
    for start, end in _pieces(text):
        pieces.append((not_inside, text[position:start]))
        role = "narrator" if text[start] == "*" else "character"
        pieces.append((role, text[start + 1:end - 1]))
        position = end
    pieces.append((not_inside, text[position:]))
    # Joined once at the end: adding to a string per piece costs the square of the pieces.
    merged: list[tuple[str, list[str]]] = []
    for role, piece in pieces:
        piece = piece.strip(" \t\n*\"\u201c\u201d")
        if role == "silent" or not has_speakable(piece):
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1].append(piece)
        else:
            merged.append((role, [piece]))
    return [(role, " ".join(parts)) for role, parts in merged]


def filtered_segments(text: str, filtering: str,
                      not_inside: str = "narrator") -> list[tuple[str, str]]:
    """Narrator segments of ``text``, each filtered, none left with nothing to speak.

    The segments are found first: ``standard`` filtering removes the asterisks that mark
    narration. HTML is stripped before, since a tag's quoted attributes are no speech.
    """
    if filtering == "html":
        text, filtering = strip_html(text), "standard"
    pieces = [(role, filter_text(piece, filtering))
              for role, piece in narrator_segments(text, not_inside)]
    return [(role, piece) for role, piece in pieces if has_speakable(piece)]
