"""Language tags as clients send them, matched to the ones a model declares.

Clients write a language many ways: ``ja``, ``ja-JP``, ``ja_JP`` (Piper and Wyoming), ``JA``,
``en-GB`` for a model that says ``en``, or ``en`` for one that says only ``en-US``. One rule
for every route, so a client is not refused on one and served on another.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_TAG = 64  # longer is no language tag: not looked at further


def match_language(wanted: str, spoken: Sequence[str]) -> str | None:
    """The tag of ``spoken`` that ``wanted`` means, or None: the same tag; the same ignoring
    case and ``_``/``-``; the same base language (``ja-JP`` -> ``ja``); or, for a model that
    declares only regional tags, its first one with that base (``en`` -> ``en-US``)."""
    if wanted in spoken:
        return wanted
    if len(wanted) > MAX_TAG:
        return None
    norm = _norm(wanted)
    base = norm.split("-")[0]
    by_norm = {_norm(tag): tag for tag in spoken}
    for candidate in (norm, base):
        if candidate in by_norm:
            return by_norm[candidate]
    return next((tag for tag in spoken if _norm(tag).split("-")[0] == base), None)


def _norm(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()
