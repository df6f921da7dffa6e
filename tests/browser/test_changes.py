"""Changing what serves from the page: make default -> plan -> apply with its phases live while
another tab keeps generating; a commit that fails shows why and the old one still serves; roll
back (as a commit, then as a pin that pauses automatic apply); reload a dirty working tree."""

from __future__ import annotations

import asyncio
import re

import git

from ..helpers import wait_until
from .helpers import expect

PHASES = ["started", "planning", "loading", "warming up", "checking", "switching", "done"]
# Records the newest phase of every stepper each time one changes: what a person saw, in order.
RECORD_PHASES = """
window.seenPhases = [];
new MutationObserver(() => {
  for (const list of document.querySelectorAll('#plan-progress ol.stepper')) {
    const last = [...list.querySelectorAll('li[data-phase]')].map(li => li.dataset.phase)
      .filter(p => !['draining', 'unloaded'].includes(p)).pop();
    const seen = window.seenPhases;
    if (last && seen[seen.length - 1] !== last) seen.push(last);
  }
}).observe(document, {subtree: true, childList: true});
"""


def button(scope, name):
    return scope.get_by_role("button", name=name, exact=True)


async def confirm(page, title_part: str) -> None:
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(title_part)
    await button(dialog, "Confirm").click()


async def generate_until(page, done: asyncio.Event) -> int:
    """Click Generate again and again until ``done``; each must succeed."""
    n = 0
    while not done.is_set() or n < 2:
        n += 1
        await button(page, "Generate").click()
        await expect(page.locator("#generate-status")).to_have_text(re.compile("Done|Error"))
        await expect(page.locator("#generate-error")).to_be_empty()
        await expect(page.locator("#clips li")).to_have_count(min(n, 20))
    return n


async def test_make_default_plans_applies_and_shows_each_phase_while_another_tab_speaks(
        start_server, config_repo, pages, shot):
    config_repo.model("reference-low", load_seconds=1.5)  # long enough to watch it load
    config_repo.commit("reference-low takes a moment to load")
    client = await start_server()
    page = await pages.open(client, "#/status")
    await page.add_init_script(RECORD_PHASES)
    await page.reload()
    speaker = await pages.open(client, "#/generate", context=page.context)
    await speaker.get_by_role("textbox", name="Text", exact=True).fill("Still here?")

    card = page.get_by_role("article", name="Model reference-low")
    await button(card, "Make default").click()
    await expect(page).to_have_url(f"{pages.origin}/ui/#/models/switch/reference-low")
    diff = page.locator("table.diff")
    await expect(diff).to_contain_text("default_model")
    await expect(diff).to_contain_text("repo:settings.toml[default]")
    await expect(page.locator("table.actions tr.load")).to_contain_text("reference-low")
    # What memory admission decided, before anything loads: the backend's estimate.
    await expect(page.locator("table.actions tr.load")).to_contain_text(
        "8.0 MiB RAM (estimate), loads beside")
    await expect(page.locator("table.actions tr.unload")).to_contain_text("reference")
    apply = button(page, "Apply")
    await expect(apply).to_be_enabled()  # only now that the plan is shown
    await shot(page, "plan")

    done = asyncio.Event()
    speaking = asyncio.create_task(generate_until(speaker, done))
    await apply.click()
    await confirm(page, "Make reference-low the default model?")
    progress = page.locator("#plan-progress")
    await expect(progress.locator("li[data-phase=loading]")).to_contain_text("reference-low")
    await expect(progress.locator(".outcome")).to_contain_text("reference-low loaded")
    await expect(progress.locator("li[data-phase=done]")).to_be_visible()
    done.set()
    spoken = await speaking
    assert spoken >= 2
    phases = await progress.locator("li[data-phase]").evaluate_all(
        "items => items.map(li => li.dataset.phase)")
    assert phases[:len(PHASES)] == PHASES, phases
    seen = await page.evaluate("window.seenPhases")
    assert seen == [p for p in PHASES if p in seen] and "loading" in seen, seen  # live, in order
    await expect(progress.locator("li[data-phase=unloaded]")).to_contain_text("reference")
    await shot(page, "applied")

    status = await (await client.get("/control/status")).json()
    generation = next(m["generation"] for m in status["models"]
                      if m["name"] == "reference-low" and m["state"] == "serving")
    await page.get_by_role("link", name="Status", exact=True).click()
    card = page.get_by_role("article", name="Model reference-low")
    await expect(card).to_contain_text("serving")
    await expect(card.locator("dd").nth(1)).to_have_text(str(generation))
    # The other tab's requests all succeeded during the apply (generate_until checked each),
    # and the next one, naming no model, is spoken by the new default.
    await button(speaker, "Generate").click()
    await expect(speaker.locator("#clips li").first).to_contain_text("reference-low")
    await expect(speaker.locator("#generate-error")).to_be_empty()


async def test_a_commit_that_fails_shows_why_and_the_old_commit_still_serves(
        start_server, config_repo, pages, shot):
    client = await start_server()
    bad = config_repo.change("a model file that is not there", "models.toml",
                             "default.models.reference.settings.model_file", "missing.toml")
    page = await pages.open(client, "#/config")
    row = page.get_by_role("row").filter(has_text="a model file that is not there")
    await button(row, "Apply…").click()
    await expect(page.locator("table.actions tr.reload")).to_contain_text("reference")
    await button(page, "Apply").click()
    await confirm(page, f"Apply {bad[:7]}?")
    outcome = page.locator("#plan-progress .outcome")
    await expect(outcome).to_contain_text("missing.toml")
    await expect(outcome).to_contain_text(f"Still serving {config_repo.initial[:7]}")
    await expect(page.locator("#plan-progress li[data-phase=failed]")).to_contain_text(
        "missing.toml")
    await expect(page.locator("#plan-progress li.still-serving")).to_have_text(
        f"still serving {config_repo.initial[:7]}")

    await page.get_by_role("link", name="Config history", exact=True).click()
    row = page.get_by_role("row").filter(has_text="a model file that is not there")
    await expect(row).to_contain_text("✗ failed")
    await expect(row.locator(".reason")).to_contain_text("missing.toml")
    await expect(button(row, "Roll back…")).to_have_count(0)  # only known-good commits
    await shot(page, "history")

    await page.get_by_role("link", name="Generate", exact=True).click()
    await page.get_by_role("textbox", name="Text", exact=True).fill("Still the old one?")
    await button(page, "Generate").click()
    await expect(page.locator("#provenance")).to_contain_text(
        f"config {config_repo.initial[:7]}")


async def test_roll_back_as_a_commit_then_as_a_pin_that_pauses_automatic_apply(
        start_server, config_repo, pages, shot):
    client = await start_server()
    limited = config_repo.change("shorter texts", "settings.toml",
                                 "default.max_text_length", 500)
    assert (await client.post("/control/config/apply", json={"commit": limited})).status == 200
    page = await pages.open(client, "#/config")

    # As a new commit on the branch (the default).
    row = page.get_by_role("row").filter(has_text="tests: serve the reference backend")
    await button(row, "Roll back…").click()
    await expect(page.locator("table.diff")).to_contain_text("max_text_length")
    await button(page, "Roll back").click()
    await confirm(page, f"Roll back to {config_repo.initial[:7]}?")
    await expect(page.locator("#plan-progress .outcome")).to_contain_text(
        f"Rolled back to {config_repo.initial[:7]} (as commit")
    await page.get_by_role("link", name="Config history", exact=True).click()
    head = page.get_by_role("row").nth(1)
    await expect(head).to_contain_text(f"Roll back to {config_repo.initial[:7]}")
    await expect(head).to_contain_text("● serving")

    # As a pin: the branch stays, automatic apply pauses, and the page says so.
    assert (await client.post("/control/config/apply", json={"commit": limited})).status == 200
    await page.reload()
    row = page.get_by_role("row").filter(has_text="tests: serve the reference backend")
    await button(row, "Roll back…").click()
    await page.get_by_role("radio", name="A pin").check()
    assert page.url.endswith("?pin=1")
    await button(page, "Roll back").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Rolling back pauses automatic apply")
    await button(dialog, "Confirm").click()
    await expect(page.locator("#plan-progress .outcome")).to_contain_text(
        f"Rolled back to {config_repo.initial[:7]}")
    await page.get_by_role("link", name="Status", exact=True).click()
    await expect(page.locator("#axis-branch")).to_contain_text("paused after rollback")
    await expect(page.locator("#watch-state")).to_contain_text("paused after rollback")
    await expect(page.locator("#axis-serving")).to_contain_text(config_repo.initial[:7])
    await shot(page, "paused")


async def test_reload_lists_uncommitted_files_and_commits_them_on_request(
        start_server, config_repo, pages):
    client = await start_server()
    config_repo.set("settings.toml", "default.max_text_length", 1500)  # not committed
    page = await pages.open(client, "#/config")
    await button(page, "Reload branch head").click()
    box = page.locator("#reload-box")
    await expect(box.locator(".error")).to_contain_text("working_tree_dirty")
    await expect(box.locator(".error li")).to_have_text(["settings.toml"])
    await page.get_by_role("textbox", name="Commit message").fill("Longer texts, from the page")
    await button(page, "Commit and apply").click()
    await expect(box.locator(".outcome .ok")).to_contain_text("Applied")
    head = git.Repo(config_repo.path).head.commit
    assert head.message.startswith("Longer texts, from the page")
    row = page.get_by_role("row").nth(1)
    await expect(row).to_contain_text("Longer texts, from the page")
    await expect(row).to_contain_text("● serving")


async def test_a_page_opened_during_an_apply_shows_it_from_its_start(start_server, config_repo,
                                                                     pages):
    config_repo.model("reference-low", load_seconds=2)
    config_repo.commit("reference-low loads slowly")
    client = await start_server()
    switch = asyncio.create_task(client.post("/control/models/switch",
                                             json={"model": "reference-low"}))
    await wait_until(client, lambda s: any(m["state"] == "loading" for m in s["models"]))
    page = await pages.open(client, "#/status")
    stepper = page.locator("#status-op")
    # Phases from before the page opened, caught up from the event buffer.
    await expect(stepper.locator("li[data-phase=planning]")).to_be_visible()
    await expect(stepper.locator("li[data-phase=loading]")).to_contain_text("reference-low")
    await expect(stepper.locator("li[data-phase=done]")).to_be_visible()
    assert (await switch).status == 200
    await expect(page.get_by_role("article", name="Model reference-low")).to_contain_text(
        "serving")


async def test_a_running_canary_is_shown_with_its_arms_and_a_person_can_abort_it(
        start_server, config_repo, pages, shot):
    client = await start_server()
    canary = config_repo.change("a higher voice, tried on half the requests", "models.toml",
                                "default.models.reference.settings.pitch_hz", 180)
    resp = await client.post("/control/config/apply", json={
        "commit": canary, "canary": {"percent": 50, "duration_s": 600}})
    assert resp.status == 200, await resp.text()
    page = await pages.open(client, "#/status")
    section = page.locator("#canary")
    await expect(section).to_be_visible()
    await expect(section).to_contain_text(f"{canary[:7]} serves 50 % of requests beside "
                                          f"{config_repo.initial[:7]}")
    await expect(section.locator("tr.canary")).to_contain_text(canary[:7])
    await expect(section.locator("tr.stable")).to_contain_text(config_repo.initial[:7])
    await expect(page.locator("article .badge.canary")).to_have_text("canary arm")
    await shot(page, "canary")
    await button(section, "Abort").click()
    await confirm(page, f"Abort the canary of {canary[:7]}?")
    await expect(section).to_be_hidden()
    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == config_repo.initial and not status["canary"]["running"]
