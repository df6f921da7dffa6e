"""Language tags as clients send them reach the model that speaks them, on every route, and
one nobody speaks is a clear 400."""

from __future__ import annotations

import pytest

from alltalk_host.languages import match_language

from .helpers import error_of


@pytest.mark.parametrize(("wanted", "spoken", "expected"), [
    ("ja", ["ja"], "ja"),
    ("ja-JP", ["ja"], "ja"),
    ("ja_JP", ["ja"], "ja"),
    ("JA", ["ja"], "ja"),
    ("en", ["en-US"], "en-US"),  # a model that declares only regional tags
    ("en_US", ["en-US", "en-GB"], "en-US"),
    ("en-GB", ["en-US", "en-GB"], "en-GB"),
    ("zh-Hans-CN", ["zh"], "zh"),
    ("de", ["en", "ja"], None),
    ("", ["en"], None),
    ("j" * 400, ["ja"], None),  # no tag: not looked at further
])
def test_a_tag_matches_the_language_it_means(wanted, spoken, expected):
    assert match_language(wanted, spoken) == expected


@pytest.mark.parametrize("language", ["de", "de-DE", "de_DE", "DE"])
async def test_every_form_of_a_tag_is_spoken_on_tts_and_the_alltalk_route(start_server,
                                                                         language):
    client = await start_server()  # the reference model speaks en, de, es, fr, it
    resp = await client.post("/tts", json={"text": "Hallo.", "language": language})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/api/tts-generate", data={
        "text_input": "Hallo.", "character_voice_gen": "female_01",
        "language": language, "output_file_name": "lang", "output_file_timestamp": "false"})
    assert resp.status == 200
    assert "X-AllTalk-Language" not in resp.headers  # spoken as asked, no fallback


@pytest.mark.parametrize("language", ["ja-JP", "x" * 400])
async def test_a_language_nobody_speaks_is_a_400_naming_the_ones_spoken(start_server, language):
    client = await start_server()
    resp = await client.post("/tts", json={"text": "Hello.", "language": language})
    error = await error_of(resp)
    assert resp.status == 400 and error["code"] == "unsupported_language"
    assert "de" in error["details"]["languages"] and len(error["message"]) < 200
