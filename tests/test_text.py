"""The shared sentence splitter used by streaming backends and front-ends."""

from __future__ import annotations

import pytest

from alltalk_host.text import split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you? I am fine!", ["Hello there.", "How are you?", "I am fine!"]),
        ("Dr. Smith met Mr. Jones at 3.30 p.m. today. Then he left.",
         ["Dr. Smith met Mr. Jones at 3.30 p.m. today.", "Then he left."]),
        ('He said "Stop!" Then he ran.', ['He said "Stop!"', "Then he ran."]),
        ("J. R. R. Tolkien wrote books. Yes.", ["J. R. R. Tolkien wrote books.", "Yes."]),
        ("Wait... what? Yes.", ["Wait... what?", "Yes."]),
        ("One\n\nTwo", ["One", "Two"]),
        ("No punctuation here", ["No punctuation here"]),
        ("", []),
        ("   \n ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_long_sentences_are_cut_at_clause_marks_then_spaces():
    clauses = "word " * 30 + ", " + "more " * 30
    pieces = split_sentences(clauses, max_chars=200)
    assert pieces[0].endswith(",") and all(len(p) <= 200 for p in pieces)
    spaces = split_sentences("x" * 50 + " " + "y" * 300, max_chars=100)
    assert all(len(p) <= 100 for p in spaces) and "".join(spaces) == "x" * 50 + "y" * 300
