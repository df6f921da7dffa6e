"""Every page, reached as a person reaches it (links, the keyboard), with a screenshot of each:
status, config history, plan, effective config (filter kept in the URL), activity, connect a
client. No request leaves the page's origin (the ``pages`` fixture checks every test)."""

from __future__ import annotations

from .helpers import expect


async def test_every_page_by_keyboard_with_its_state_in_the_url(start_server, config_repo,
                                                                pages, shot):
    commit = config_repo.change("Longer texts", "settings.toml", "default.max_text_length", 3000)
    client = await start_server()
    assert (await client.post("/control/config/apply", json={"commit": commit})).status == 200
    page = await pages.open(client)
    await expect(page.get_by_role("heading", name="Generate", level=1)).to_be_visible()
    await shot(page, "generate")

    # The keyboard alone: Tab to a page link, Enter; the page's heading takes the focus.
    nav = page.get_by_role("navigation", name="Pages")
    await nav.get_by_role("link", name="Status", exact=True).focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Status", level=1)).to_be_focused()
    await expect(page).to_have_url(f"{pages.origin}/ui/#/status")
    await expect(page.locator("#axis-branch")).to_contain_text("in sync")
    card = page.get_by_role("article", name="Model reference", exact=True)
    await expect(card).to_contain_text("serving")
    await expect(card.locator("dd").nth(1)).to_have_text("1")  # its generation
    await card.get_by_role("button", name="Reload", exact=True).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Reload reference?")
    await dialog.get_by_role("button", name="Confirm", exact=True).click()
    await expect(page.locator("#model-action .outcome")).to_contain_text(
        f"Reloaded models at {commit[:7]}")
    await expect(card.locator("dd").nth(1)).to_have_text("2")
    plugins = page.get_by_role("table").filter(has_text="alltalk-host-reference")
    await expect(plugins).to_be_visible()
    await shot(page, "status")

    await nav.get_by_role("link", name="Config history", exact=True).click()
    row = page.get_by_role("row").filter(has_text="Longer texts")
    await expect(row).to_contain_text("● serving")
    await expect(row).to_contain_text("HEAD")
    await shot(page, "config")
    await row.get_by_role("button", name="Plan", exact=True).click()
    await expect(page).to_have_url(f"{pages.origin}/ui/#/config/plan/{commit}")
    await expect(page.locator("#plan-content")).to_contain_text("This is what serves now")
    await shot(page, "plan")

    await page.goto(f"{pages.origin}/ui/#/config/effective?q=max_text")
    table = page.get_by_role("table")
    await expect(table.locator("tbody tr")).to_have_count(1)
    await expect(table).to_contain_text("3000")
    await expect(table).to_contain_text("repo:settings.toml[default]")
    await page.get_by_role("searchbox", name="Filter").fill("queue")
    await expect(page).to_have_url(f"{pages.origin}/ui/#/config/effective?q=queue")
    await expect(table.locator("tbody tr")).to_have_count(1)
    await shot(page, "effective")

    await nav.get_by_role("link", name="Activity", exact=True).click()
    rows = page.get_by_role("table").locator("tbody tr")
    await expect(rows).to_have_count(3)  # the start-up apply, ours, the reload
    await expect(rows.first).to_contain_text("reload-model")
    await expect(rows.nth(1)).to_contain_text("apply")
    await expect(rows.first).to_contain_text(commit[:7])
    await shot(page, "activity")

    await nav.get_by_role("link", name="Connect a client", exact=True).click()
    await expect(page.get_by_text(f"{pages.origin}/v1", exact=True)).to_be_visible()
    await expect(page.get_by_text("Wyoming Protocol (recommended): host and port")).to_be_visible()
    await shot(page, "connect")

    # Back and forward work like any site's.
    await page.go_back()
    await expect(page.get_by_role("heading", name="Activity", level=1)).to_be_visible()


async def test_status_loads_and_unloads_a_model_on_demand(start_server, pages):
    client = await start_server()
    page = await pages.open(client, "#/status")
    card = page.get_by_role("article", name="Model reference-low", exact=True)
    await expect(card).to_contain_text("when a request names it")
    await card.get_by_role("button", name="Load", exact=True).click()
    await expect(page.locator("#model-action")).to_contain_text(
        "reference-low is loaded (generation 1).")
    await expect(card).to_contain_text("a request named it (on demand")
    await expect(page.get_by_role("article", name="Model reference", exact=True)).to_contain_text(
        "it is the default model")
    await card.get_by_role("button", name="Unload", exact=True).click()
    await expect(page.locator("#model-action")).to_contain_text(
        "reference-low unloads once its requests finish.")
    await expect(card.get_by_role("button", name="Load", exact=True)).to_be_visible()
