"""The shared sentence splitter used by streaming backends and front-ends."""

from __future__ import annotations

import time

import pytest

from alltalk_host.text import filter_text, filtered_segments, first_clause, split_sentences


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Japanese: full-width ends, no spaces between sentences.
        ("今日は晴れです。明日は雨でしょう！本当ですか？はい。",
         ["今日は晴れです。", "明日は雨でしょう！", "本当ですか？", "はい。"]),
        # A quote that ends with a stop and goes on is inside its sentence ...
        ("「はい。」と言った。次の文です。", ["「はい。」と言った。", "次の文です。"]),
        # ... quotes one after another are sentences of their own, closers kept with them.
        ("「行こう！」「うん。」", ["「行こう！」", "「うん。」"]),
        ("（笑）。『本当？』", ["（笑）。", "『本当？』"]),
        # Chinese, with a quotation inside the sentence and a half-width ideographic stop.
        ("他说：“我们走吧。”然后离开了。好的｡再见！",
         ["他说：“我们走吧。”然后离开了。", "好的｡", "再见！"]),
        # Mixed with English: each splits by its own rule.
        ("Hello there. 你好。World!", ["Hello there.", "你好。", "World!"]),
        ("Dr. Smith said 你好。", ["Dr. Smith said 你好。"]),
    ],
)
def test_chinese_and_japanese_split_at_their_own_sentence_ends(text, expected):
    assert split_sentences(text) == expected


def test_a_long_cjk_sentence_is_cut_at_its_full_width_clause_marks():
    sentence = "これは長い文で、" * 60 + "終わり。"
    pieces = split_sentences(sentence, max_chars=100)
    assert all(len(p) <= 100 for p in pieces) and "".join(pieces) == sentence
    assert all(p.endswith("、") for p in pieces[:-1])


def test_long_sentences_are_cut_at_clause_marks_then_spaces():
    clauses = "word " * 30 + ", " + "more " * 30
    pieces = split_sentences(clauses, max_chars=200)
    assert pieces[0].endswith(",") and all(len(p) <= 200 for p in pieces)
    spaces = split_sentences("x" * 50 + " " + "y" * 300, max_chars=100)
    assert all(len(p) <= 100 for p in spaces) and "".join(spaces) == "x" * 50 + "y" * 300


@pytest.mark.parametrize(
    ("sentence", "head"),
    [
        # at the first clause mark once four words are said, four or more left
        ("When the first sentence runs long, the listener should not wait for all of it.",
         "When the first sentence runs long,"),
        ("Well, in the first place, I never said that I would come tonight.",
         "Well, in the first place,"),
        ("The committee met on Tuesday; after a long debate it agreed.",
         "The committee met on Tuesday;"),
        ("We looked at the numbers: sales were up in every single region.",
         "We looked at the numbers:"),
        ("It was late in the evening \u2014 nobody had eaten anything all day.",
         "It was late in the evening \u2014"),
        ("It was late in the evening - nobody had eaten anything all day.",
         "It was late in the evening -"),
        # no clause mark by twelve words: at the next word boundary
        ("A text to speech server turns written words into sound and it has to be quick.",
         "A text to speech server turns written words into sound and it"),
        # a number's comma is no clause mark
        ("We counted 1,000 birds on the lake and then, at last, we went home for tea.",
         "We counted 1,000 birds on the lake and then,"),
        # not inside quotes or brackets; after them, yes
        ('He said "wait, stop, come back here" and then, sadly, he left us all alone.',
         'He said "wait, stop, come back here" and then,'),
        ("The plan (first, second, third) was simple, and it worked very well indeed.",
         "The plan (first, second, third) was simple,"),
        # never right after an abbreviation or an initial, even at the word limit
        ("One two three four five six seven eight nine ten eleven Dr. Smith came home at last.",
         "One two three four five six seven eight nine ten eleven Dr. Smith"),
    ],
)
def test_a_long_first_sentence_is_cut_after_its_first_clause(sentence, head):
    cut = first_clause(sentence, 4, 12)
    assert cut is not None and cut[0] == head
    assert f"{cut[0]} {cut[1]}" == sentence  # nothing lost, punctuation kept on the head


@pytest.mark.parametrize(
    "sentence",
    [
        "The quick brown fox jumps over the lazy dog.",  # short, no clause mark
        "Yes, of course, I can help you.",  # the marks come before four words
        "I can help you with that, sure.",  # too little would be left after the mark
        "It costs 1,000,000 dollars or 2,500 euros today.",  # numbers only
        '"Well, yes, I suppose so, but only if you insist on it, my dear friend."',  # quoted
        "",
    ],
)
def test_a_sentence_that_should_stay_whole_is_not_cut(sentence):
    assert first_clause(sentence, 4, 12) is None


def test_max_words_zero_turns_the_cut_off():
    assert first_clause("When the first sentence runs long, the listener waits.", 4, 0) is None


# --- hostile text: linear time, whatever it holds ----------------------------------------------
# One Wyoming chunk of 60,000 dots once held the event loop for 47 s (every start inside a run
# of marks rescanned the rest of it). Measured here on 2 shared cores: about 20 ms for 1 MB
# of marks without white space, under 0.1 s for 100 kB of marks with white space (a Python
# step per sentence end); the old splitter took 4.7 s for 20,000 dots. The bound (5 s) is
# generous so a busy machine does not fail the test; a quadratic splitter misses it by hours.
MB = 1_000_000
NO_SPACE = {
    "dots": "." * MB,
    "marks": ("!?.\u2026" * MB)[:MB],
    "quotes after each dot": ("." + '"' * 999) * (MB // 1000),
    "brackets after a run of dots": "." * (MB // 2) + ")]\u201d" * (MB // 6),
    "one word": "x" * MB,
    "cjk stops": "\u3002" * MB,
    "cjk marks": ("\u3002\uff01\uff1f\uff61" * MB)[:MB],
    "cjk closers after each stop": ("\u3002" + "\u300d" * 999) * (MB // 1000),
    "cjk quote going on after each stop": "\u3002\u300d\u3068" * (MB // 3),
    "cjk clause marks": "\u3001" * MB,
}
SPACED = {
    "dot space": ". " * 50_000,
    "lower case after each stop": "a. " * 33_000,
    "abbreviations": "Dr. " * 25_000,
    "initials": "J. " * 33_000,
    "tab dot": "\t. " * 33_000,
    "a long word before each stop": ("x" * 5000 + ". ") * 20,
    "clause marks": ", " * 50_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [*NO_SPACE.values(), *SPACED.values()],
                         ids=[*NO_SPACE, *SPACED])
def test_hostile_text_splits_in_linear_time(text):
    started = time.perf_counter()
    pieces = split_sentences(text)
    assert time.perf_counter() - started < 5.0
    assert all(len(p) <= 400 for p in pieces)


def test_a_stop_after_nothing_but_white_space_is_no_crash():
    # "\t." once raised IndexError, a traceback in the log for one Wyoming chunk.
    assert split_sentences("\t. Hello.") == [".", "Hello."]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", ["\u201c" * MB, "*" * MB, '"a"' * (MB // 3), "<" * MB],
                         ids=["unclosed quotes", "asterisks", "quoted pieces", "tag opens"])
def test_narrator_mode_and_filtering_take_linear_time(text):
    started = time.perf_counter()
    filtered_segments(text, "html", "narrator")
    filter_text(text, "html")
    # 1.6 s alone here, 3.02 s once in a full run on a busy day: the bound is for a quadratic
    # filter, which takes hours on 1 MB, not for how busy the machine is.
    assert time.perf_counter() - started < 15.0


@pytest.mark.parametrize(("sentence", "head"), [
    ("One two three four five six seven eight nine ten eleven twelve thirteen fourteen.", None),
    ("One two three four five, six seven eight nine.", "One two three four five,"),
    ("One two three four five six seven eight nine ten eleven twelve, thirteen fourteen "
     "fifteen sixteen.", "One two three four five six seven eight nine ten eleven twelve,"),
    ("One two three four five six seven eight nine ten eleven twelve thirteen, fourteen "
     "fifteen sixteen seventeen.", None),
])
def test_without_word_cuts_only_a_clause_mark_in_time_cuts(sentence, head):
    cut = first_clause(sentence, 4, 12, at_word=False)
    assert (cut[0] if cut else None) == head
