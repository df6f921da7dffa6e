"""The page against a guarded server and a broken connection: the token prompt on 401 (kept in
the tab, sent as a header, never in a URL), a 409 while another change runs, a dropped event
stream (the banner, then a reconnect that catches up)."""

from __future__ import annotations

import asyncio

from ..helpers import wait_until
from .helpers import expect


def button(scope, name):
    return scope.get_by_role("button", name=name, exact=True)


async def test_a_token_is_asked_for_once_kept_in_the_tab_and_sent_only_as_a_header(
        start_server, config_repo, pages, shot):
    client = await start_server(control_token="s3cret-token")
    page = await pages.open(client, "#/status")
    dialog = page.get_by_role("dialog", name="Control token")
    await expect(dialog).to_be_visible()
    await shot(page, "token")
    # Cancelled: control views say why; speech (an open route) still works; nothing nags.
    await button(dialog, "Cancel").click()
    await expect(page.locator("#status-error")).to_contain_text("unauthorized")
    await expect(page.locator("#banner")).to_contain_text("Live updates are off")
    await page.get_by_role("link", name="Generate", exact=True).click()
    await page.get_by_role("textbox", name="Text", exact=True).fill("Open to anyone.")
    await button(page, "Generate").click()
    await expect(page.locator("#provenance")).to_contain_text(config_repo.initial[:7])
    await expect(dialog).to_be_hidden()

    # A wrong token is asked for again, with the server's reason; the right one is kept.
    await button(page.locator("#banner"), "Enter token").click()
    await dialog.get_by_role("textbox", name="Control token").fill("wrong")
    await button(dialog, "Use token").click()
    await expect(page.locator("#token-reason")).to_contain_text("the control token is wrong")
    await dialog.get_by_role("textbox", name="Control token").fill("s3cret-token")
    await button(dialog, "Use token").click()
    await expect(page.locator("#banner")).to_be_hidden()  # live updates flow
    await page.get_by_role("link", name="Status", exact=True).click()
    await expect(page.locator("#axis-serving")).to_contain_text(config_repo.initial[:7])
    assert await page.evaluate("sessionStorage.getItem('alltalk-host.token')") == "s3cret-token"

    control = [r for r in pages.requests if "/control/" in r.url]
    assert control and all("s3cret" not in r.url for r in pages.requests)
    sent = [await r.header_value("authorization") for r in control]
    assert set(sent) - {None} == {"Bearer wrong", "Bearer s3cret-token"}, sent
    assert sent[-1] == "Bearer s3cret-token"
    # Another tab is another session: it asks again (sessionStorage is per tab).
    other = await pages.open(client, "#/status")
    await expect(other.get_by_role("dialog", name="Control token")).to_be_visible()


async def test_an_apply_refused_with_409_follows_the_change_in_progress(
        start_server, config_repo, pages):
    config_repo.model("reference-low", load_seconds=3)
    config_repo.commit("reference-low loads slowly")
    client = await start_server()
    page = await pages.open(client, f"#/config/plan/{config_repo.initial}")
    apply = button(page, "Apply")
    await expect(apply).to_be_enabled()
    switch = asyncio.create_task(client.post("/control/models/switch",
                                             json={"model": "reference-low"}))
    await wait_until(client, lambda s: s["apply_in_progress"] is not None)
    await apply.click()
    await button(page.get_by_role("dialog"), "Confirm").click()
    outcome = page.locator("#plan-progress .outcome")
    await expect(outcome).to_contain_text("switch of")
    await expect(outcome).to_contain_text("in progress")
    # The stepper shows the switch that is running, to its end.
    progress = page.locator("#plan-progress")
    await expect(progress.locator("li[data-phase=loading]")).to_contain_text("reference-low")
    await expect(progress.locator("li[data-phase=done]")).to_be_visible()
    assert (await switch).status == 200


async def test_a_dropped_event_stream_shows_a_banner_then_reconnects_where_it_left_off(
        start_server, config_repo, pages):
    client = await start_server()
    attempts = []

    async def flaky(route):
        attempts.append(route.request)
        if len(attempts) == 1:  # one event, then the connection ends
            await route.fulfill(status=200, content_type="text/event-stream",
                                body='event: hello\ndata: {"last_id": 3}\n\n'
                                     'id: 3\nevent: model\ndata: {"name": "x"}\n\n')
        elif len(attempts) <= 3:  # the server cannot be reached for a while
            await route.abort("connectionrefused")
        else:
            await route.continue_()

    page = await pages.open(client, "#/status",
                            setup=lambda page: page.route("**/control/events*", flaky))
    banner = page.locator("#banner")
    await expect(banner).to_contain_text("Live updates reconnecting")
    await expect(banner).to_be_hidden()
    assert len(attempts) >= 4
    # Every reconnect asked for what came after the last event it saw.
    assert [await r.header_value("last-event-id") for r in attempts[1:4]] == ["3"] * 3
    assert attempts[0].url.endswith("?after=0")  # the first asks for the whole buffer
    # Live again: a change made now reaches the page.
    commit = config_repo.change("limit", "settings.toml", "default.max_text_length", 900)
    assert (await client.post("/control/config/apply", json={"commit": commit})).status == 200
    await expect(page.locator("#axis-serving")).to_contain_text(commit[:7])
