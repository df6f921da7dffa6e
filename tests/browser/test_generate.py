"""The Generate page in a browser: speech you can hear (the <audio> element has a duration and
plays), where it came from, streaming, narrator mode, options a model lacks, what a reload keeps,
the keyboard."""

from __future__ import annotations

from ..helpers import ConfigRepoHelper
from .helpers import expect, until

TEXT = "Hello there. This is the web page speaking."


async def audio_seconds(page) -> float:
    await until(page, "document.querySelector('#audio').duration > 0")
    return await page.evaluate("document.querySelector('#audio').duration")


async def test_generate_plays_audio_and_says_where_it_came_from(start_server, config_repo,
                                                                 pages, shot):
    client = await start_server()
    page = await pages.open(client)  # "/" redirects to the page; Generate is the default
    commit7 = config_repo.initial[:7]
    await page.get_by_role("textbox", name="Text", exact=True).fill(TEXT)
    await expect(page.locator("#text-count")).to_have_text(f"{len(TEXT)} / 2000 characters")
    await page.get_by_role("combobox", name="Voice", exact=True).select_option("male_01")
    await page.get_by_role("button", name="Generate", exact=True).click()

    provenance = page.locator("#provenance")
    await expect(provenance).to_contain_text("model reference generation 1")
    await expect(provenance).to_contain_text(f"config {commit7}")
    assert await audio_seconds(page) > 1.0
    # It plays (the test browser allows audio without a gesture, as a click would).
    await until(page, "document.querySelector('#audio').currentTime > 0")
    await expect(page.locator("#metrics")).to_contain_text("time to first audio")
    download = page.get_by_role("link", name="Download reference-male_01")
    await expect(download).to_have_attribute("download", f"reference-male_01-{commit7}.wav")
    await expect(page.locator("#clips li")).to_have_count(1)
    await shot(page, "generate")

    # The keyboard alone: Ctrl+Enter in the text generates again.
    await page.get_by_role("textbox", name="Text", exact=True).press("Control+Enter")
    await expect(page.locator("#clips li")).to_have_count(2)

    # A reload keeps the form: the text in localStorage, the voice in the URL too.
    assert "voice=male_01" in page.url
    await page.reload()
    await expect(page.get_by_role("textbox", name="Text", exact=True)).to_have_value(TEXT)
    await expect(page.get_by_role("combobox", name="Voice", exact=True)).to_have_value("male_01")

    # Over the effective limit, the count says so and Generate waits.
    await page.get_by_role("textbox", name="Text", exact=True).fill("x" * 2001)
    await expect(page.locator("#text-count")).to_contain_text("over the limit")
    await expect(page.get_by_role("button", name="Generate", exact=True)).to_be_disabled()


async def test_streaming_plays_as_it_arrives_then_becomes_a_seekable_file(start_server,
                                                                          pages, shot):
    client = await start_server()
    page = await pages.open(client)
    await page.get_by_role("textbox", name="Text", exact=True).fill(
        "One sentence here. Another one there. And a third to finish.")
    await page.get_by_role("checkbox", name="Stream", exact=True).check()
    # The streaming route takes no language: the select says so by being disabled.
    await expect(page.get_by_role("combobox", name="Language", exact=True)).to_be_disabled()
    async with page.expect_request("**/v1/audio/speech") as sent:
        await page.get_by_role("button", name="Generate", exact=True).click()
    assert (await sent.value).post_data_json["response_format"] == "pcm"
    await expect(page.locator("#metrics")).to_contain_text("streamed")
    assert await audio_seconds(page) > 1.0  # the chunks, joined into a WAV file
    await expect(page.locator("#provenance")).to_contain_text("model reference")
    await shot(page, "streamed")


async def test_options_a_model_lacks_are_disabled_and_narrator_mode_speaks(
        start_server, config_repo, pages):
    config_repo.model("reference-low", keep_loaded=True)
    config_repo.model("unusable", backend="no-such-backend")
    config_repo.commit("reference-low stays loaded; a model that cannot load here")
    client = await start_server()
    page = await pages.open(client, "#/generate")
    await page.get_by_text("Backend options").click()
    temperature = page.get_by_role("spinbutton", name="temperature", exact=True)
    await expect(temperature).to_be_disabled()
    await expect(page.locator("#why-temperature")).to_have_text(
        "reference does not take temperature")
    # A model that cannot load here cannot be chosen for a request.
    await expect(page.locator("#model option[value=unusable]")).to_be_disabled()

    text = page.get_by_role("textbox", name="Text", exact=True)
    await text.fill('He said "hello there" and left.')
    await page.get_by_role("checkbox", name="Narrator", exact=True).check()
    await page.get_by_role("combobox", name="Narrator voice", exact=True).select_option("male_01")
    async with page.expect_request("**/api/tts-generate") as sent:
        await page.get_by_role("button", name="Generate", exact=True).click()
    assert "narrator_enabled" in (await sent.value).post_data
    assert await audio_seconds(page) > 1.0
    await expect(page.locator("#provenance")).to_contain_text("model reference")

    # Another loaded model, per request: narrator mode (the default model's) is not offered,
    # the voice preview speaks with it, and "Make default" opens the switch's plan.
    await page.get_by_role("combobox", name="Model", exact=True).select_option("reference-low")
    await expect(page.get_by_role("checkbox", name="Narrator", exact=True)).to_be_disabled()
    async with page.expect_request("**/tts") as sent:
        await page.get_by_role("button", name="Preview voice", exact=True).click()
    assert (await sent.value).post_data_json["model"] == "reference-low"
    await expect(page.locator("#generate-status")).to_have_text("Preview of the default voice.")
    await expect(page.locator("#curl pre").first).to_contain_text('"model":"reference-low"')
    await page.get_by_role("button", name="Make default", exact=True).click()
    await expect(page).to_have_url(f"{pages.origin}/ui/#/models/switch/reference-low")
    await expect(page.get_by_role("button", name="Apply", exact=True)).to_be_enabled()


async def test_a_model_not_loaded_is_chosen_loaded_and_heard(start_server, config_repo, pages):
    config_repo.model("reference-low", load_seconds=1.5)
    config_repo.commit("reference-low takes a moment to load")
    client = await start_server()
    page = await pages.open(client)
    model = page.get_by_role("combobox", name="Model", exact=True)
    await expect(model.locator("option[value=reference-low]")).to_have_text(
        "reference-low (loads when used)")
    await model.select_option("reference-low")
    await expect(page.locator("#model-note")).to_contain_text("not loaded: Generate loads it")
    await page.get_by_role("textbox", name="Text", exact=True).fill("Hello there.")
    await page.get_by_role("button", name="Generate", exact=True).click()
    await expect(page.locator("#generate-status")).to_contain_text("Loading reference-low first")
    await expect(page.locator("#provenance")).to_contain_text("model reference-low generation 1")
    assert await audio_seconds(page) > 0.3
    # Loaded now: the page shows it serving, with its own voices to choose from.
    await expect(model.locator("option[value=reference-low]")).to_have_text(
        "reference-low (serving)")
    await expect(page.get_by_role("combobox", name="Voice", exact=True).locator(
        "option[value=narrator]")).to_have_count(1)


async def test_stop_ends_a_generation_in_progress(start_server, config_repo, pages):
    config_repo.model("reference", rtf=1.0)  # a second of work per second of speech
    config_repo.commit("slow speech")
    client = await start_server()
    page = await pages.open(client)
    await page.get_by_role("textbox", name="Text", exact=True).fill(
        "One. " + "This sentence takes a while to say. " * 8)
    await page.get_by_role("checkbox", name="Stream", exact=True).check()
    await page.get_by_role("button", name="Generate", exact=True).click()
    await expect(page.locator("#generate-status")).to_contain_text("Playing while it is")
    await page.get_by_role("button", name="Stop", exact=True).click()
    await expect(page.locator("#generate-status")).to_have_text("Stopped.")
    await expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()
    await expect(page.locator("#clips li")).to_have_count(0)


async def test_the_joe_voice_speaks(start_server, pages, tmp_path):
    """The template as it ships: the default Piper voice, joe, on onnxruntime."""
    repo = ConfigRepoHelper(tmp_path / "joe-config", reference=False)
    client = await start_server(config_repo=repo.path)
    page = await pages.open(client)
    await page.get_by_role("textbox", name="Text", exact=True).fill("Hello there.")
    await page.get_by_role("button", name="Generate", exact=True).click()
    await expect(page.locator("#provenance")).to_contain_text("model joe generation 1")
    assert await audio_seconds(page) > 0.3
    repo.repo.close()
