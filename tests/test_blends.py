"""Voice blends as the host reads them (alltalk_host.blends): weights normalised, each bad
blend refused with a message that says what is wrong, and hostile names cheap to refuse."""

from __future__ import annotations

import pytest

from alltalk_host.blends import is_blend, parse_blend, voice_problem

VOICES = ["jf_alpha", "jm_kumo", "jf_nezumi"]


@pytest.mark.parametrize(("name", "parts"), [
    ("jf_alpha:0.6+jm_kumo:0.4", (("jf_alpha", 0.6), ("jm_kumo", 0.4))),
    ("jf_alpha+jm_kumo", (("jf_alpha", 0.5), ("jm_kumo", 0.5))),
    ("jf_alpha:3 + jm_kumo:1", (("jf_alpha", 0.75), ("jm_kumo", 0.25))),
    ("jf_alpha:2+jm_kumo", (("jf_alpha", 2 / 3), ("jm_kumo", 1 / 3))),
    ("jf_alpha+jf_alpha+jm_kumo", (("jf_alpha", 2 / 3), ("jm_kumo", 1 / 3))),
    ("jf_alpha:1", (("jf_alpha", 1.0),)),
])
def test_weights_are_normalised(name, parts):
    got = parse_blend(name)
    assert [v for v, _ in got] == [v for v, _ in parts]
    assert [w for _, w in got] == pytest.approx([w for _, w in parts])


@pytest.mark.parametrize(("name", "says"), [
    ("jf_alpha:x+jm_kumo", "'x' of 'jf_alpha' is not a number"),
    ("jf_alpha:-1+jm_kumo", "above 0"),
    ("jf_alpha:0+jm_kumo", "above 0"),
    ("jf_alpha:nan+jm_kumo", "above 0"),
    ("jf_alpha:inf+jm_kumo", "above 0"),
    ("jf_alpha:1e308+jm_kumo:1e308", "too large"),
    ("jf_alpha+", "a voice name is missing"),
    (":0.5+jm_kumo", "a voice name is missing"),
    ("+".join(["jf_alpha"] * 9), "at most 8"),
    ("a" * 401 + "+b", "at most 400 characters"),
    ("jf_alpha:" + "9" * 400 + "+jm_kumo", "at most 400 characters"),
])
def test_bad_blends_say_what_is_wrong(name, says):
    with pytest.raises(ValueError, match=says):
        parse_blend(name)


def test_a_model_that_does_not_blend_takes_only_its_own_names():
    assert voice_problem("jf_alpha", VOICES, False) is None
    assert voice_problem("jf_alpha+jm_kumo", VOICES, False) == \
        "has no voice 'jf_alpha+jm_kumo'"
    assert voice_problem("anything", [], False) is None  # a single-voice model


def test_a_blending_model_checks_every_part():
    assert voice_problem("jf_alpha:0.3+jm_kumo:0.7", VOICES, True) is None
    assert voice_problem("jf_alpha+nobody", VOICES, True) == \
        "has no voice 'nobody' for the blend 'jf_alpha+nobody'"
    assert "is not a number" in voice_problem("jf_alpha:x+jm_kumo", VOICES, True)
    assert voice_problem("nobody", VOICES, True) == "has no voice 'nobody'"
    assert not is_blend("jf_alpha") and is_blend("a+b") and is_blend("a:1")


def test_a_hostile_name_is_refused_in_linear_time():
    # 60,000 pluses or colons: refused by length before any split
    for name in ("+" * 60_000, ":" * 60_000, "a:" * 30_000):
        assert "at most 400" in voice_problem(name, VOICES, True)
