"""What a model's warm-up speaks: its own ``warmup_text``, else a phrase in its language, else
the config's; a bad ``warmup_text`` fails the commit and changes nothing; a slow warm-up is
logged with the text it spoke."""

from __future__ import annotations

import logging
import sys
from typing import ClassVar

import pytest

from alltalk_host import Audio, SpeechRequest, hookimpl
from alltalk_host.change import loading
from alltalk_host_reference import ReferenceBackend

from .helpers import error_of


class HearingBackend(ReferenceBackend):
    """The reference backend, noting every text it is asked to speak, and in which language."""

    name = "hearing"
    heard: ClassVar[list[tuple[str, str]]] = []

    def synthesize(self, request: SpeechRequest) -> Audio:
        self.heard.append((request.text, request.language))
        return super().synthesize(request)


@hookimpl
def alltalk_host_register_backends(register):
    register(HearingBackend)


@pytest.fixture
def hearing(start_server, config_repo):
    HearingBackend.heard.clear()

    async def start(**models: dict) -> object:
        for name, keys in models.items():
            config_repo.model(name, backend="hearing", keep_loaded=True, **keys)
        config_repo.commit("models that say what they hear")
        return await start_server(extra_plugins=[("hearing", sys.modules[__name__])])
    return start


async def test_each_model_warms_up_with_its_own_text_or_a_phrase_in_its_language(hearing):
    await hearing(own={"warmup_text": "Warming up, my own words."},
                  german={"default_language": "de"},
                  english={"default_language": "en"})
    heard = dict(HearingBackend.heard[:3])
    assert heard == {"Warming up, my own words.": "en",
                     loading.WARMUP_PHRASES["de"]: "de",
                     "The quick brown fox jumps over the lazy dog.": "en"}


@pytest.mark.parametrize("language", ["ja", "ja-JP", "ja_JP", "zh", "ZH-cn"])
def test_a_language_s_phrase_is_found_from_any_of_its_tags(language, config_repo):
    model = loading.ModelDef(name="m", backend="reference", settings={}, parsed=None)
    config = type("Config", (), {"warmup_text": "The English phrase."})()
    text = loading.warmup_text(model, config, language)
    assert text == loading.WARMUP_PHRASES[language[:2].lower()]
    assert loading.warmup_text(model, config, "sv") == "The English phrase."  # none: config's


@pytest.mark.parametrize(("value", "says"), [
    ("", "1 to 1000 characters"),
    ("   ", "of white space"),
    ("x" * 1001, "1001 characters"),
    (42, "expected str"),
])
async def test_a_bad_warmup_text_fails_the_commit_and_changes_nothing(start_server, config_repo,
                                                                      value, says):
    client = await start_server()
    before = config_repo.head
    config_repo.model("reference", warmup_text=value)
    commit = config_repo.commit("a bad warm-up text")
    resp = await client.post("/control/config/apply", json={"commit": commit})
    error = await error_of(resp)
    assert resp.status == 422 and error["code"] == "validation_failed"
    assert "warmup_text" in error["message"] and says in error["message"]
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == before


async def test_a_slow_warm_up_is_logged_with_the_text_it_spoke(hearing, monkeypatch, caplog):
    monkeypatch.setattr(loading, "SLOW_WARMUP_S", 0.0)
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        await hearing(japanese={"warmup_text": "Spelled out, letter by letter."})
    lines = [r.getMessage() for r in caplog.records if "warm-up took" in r.getMessage()]
    assert any("japanese" in line and "Spelled out, letter by letter." in line
               for line in lines), lines
