"""The Voices page in a browser (issue 25): upload a recording by the file picker and by drag
and drop, see it in the library with the commit that holds it, generate with it on the
Generate page, and remove it."""

from __future__ import annotations

import base64

from ..test_voice_library import encoded, tone
from .helpers import expect, until


async def test_upload_a_voice_then_generate_with_it_and_remove_it(start_server, config_repo,
                                                                  pages, shot, tmp_path):
    client = await start_server()
    page = await pages.open(client, "#/voices")
    panel = page.locator("#panel-voices")  # the Generate page has a Language too
    await expect(page.locator("#voices-table")).to_contain_text("No voices in the library")
    sample = tmp_path / "Ann take 1.wav"
    sample.write_bytes(encoded(tone(200), "wav"))
    await panel.get_by_label("Recording").set_input_files(str(sample))
    # the name comes from the file's, made safe
    await expect(panel.get_by_label("Name")).to_have_value("Ann_take_1")
    await panel.get_by_label("Name").fill("ann")
    await panel.get_by_label("Language").fill("en")
    await panel.get_by_label("Source and consent").fill("a tone the tests made")
    await panel.get_by_role("button", name="Add voice").click()
    await expect(page.locator("#voice-result")).to_contain_text("Added as commit")
    assert config_repo.repo.head.commit.message.startswith("Add the voice ann")
    await expect(page.locator("#voice-result")).to_contain_text(config_repo.head[:7])
    row = page.locator("tr[data-voice=ann]")
    await expect(row).to_contain_text("4 s")
    await expect(row).to_contain_text("reference")
    await shot(page, "voices")

    await row.get_by_role("button", name="Preview ann").click()
    await until(page, "document.querySelector('#voice-preview').duration > 0")

    await page.get_by_role("link", name="Generate").click()
    await page.get_by_role("textbox", name="Text", exact=True).fill("Hello from Ann.")
    await page.get_by_role("combobox", name="Voice", exact=True).select_option("ann")
    await page.get_by_role("button", name="Generate", exact=True).click()
    await until(page, "document.querySelector('#audio').duration > 0")

    await page.get_by_role("link", name="Voices").click()
    await page.get_by_role("button", name="Remove ann").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#voices-table")).to_contain_text("No voices in the library")
    assert config_repo.repo.head.commit.message.startswith("Remove the voice ann")


async def test_a_dropped_recording_is_uploaded_and_a_bad_one_says_why(start_server, config_repo,
                                                                      pages):
    client = await start_server()
    page = await pages.open(client, "#/voices")
    panel = page.locator("#panel-voices")
    data = base64.b64encode(encoded(tone(150), "flac")).decode()
    await page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "bea.flac", {type: "audio/flac"}));
        document.querySelector("#voice-drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", data)
    await expect(page.locator("#voice-drop")).to_have_text("Dropped: bea.flac")
    await expect(panel.get_by_label("Name")).to_have_value("bea")
    await panel.get_by_role("button", name="Add voice").click()
    await expect(page.locator("tr[data-voice=bea]")).to_contain_text("reference")

    head = config_repo.head
    await page.evaluate("""() => {
        const transfer = new DataTransfer();
        const wav = new Uint8Array(44 + 88200);
        const text = "RIFF____WAVEfmt ";
        for (let i = 0; i < 16; i++) wav[i] = text.charCodeAt(i);
        const view = new DataView(wav.buffer);
        view.setUint32(4, 36 + 88200, true); view.setUint32(16, 16, true);
        view.setUint16(20, 1, true); view.setUint16(22, 1, true);
        view.setUint32(24, 22050, true); view.setUint32(28, 44100, true);
        view.setUint16(32, 2, true); view.setUint16(34, 16, true);
        "data".split("").forEach((c, i) => { wav[36 + i] = c.charCodeAt(0); });
        view.setUint32(40, 88200, true);
        transfer.items.add(new File([wav], "quiet.wav", {type: "audio/wav"}));
        document.querySelector("#voice-drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""")
    await panel.get_by_role("button", name="Add voice").click()
    await expect(page.locator("#voice-result")).to_contain_text("silent")
    assert config_repo.head == head
