"""A setting change starts from what serves: when the branch says something else (a rollback that
pinned an older commit, a commit made by hand and not applied) it is refused with
``branch_diverged``, and doing what the message says makes the next change go through, carrying
nothing that does not serve. The branch moves to a change only by compare-and-swap, so a commit
made meanwhile is never overwritten."""

from __future__ import annotations

import asyncio

from .helpers import error_of, post, wait_until

LONG_TEXT = "This sentence is longer than thirty characters."


async def serving(client) -> str:
    return (await (await client.get("/control/status")).json())["serving_commit"]


async def text_limit_is_short(client) -> bool:
    resp = await post(client, "/tts", text=LONG_TEXT)
    if resp.status == 200:
        return False
    assert (await error_of(resp))["code"] == "text_too_long"
    return True


def porcelain(config_repo) -> str:
    return config_repo.repo.git.status("--porcelain", "--untracked-files=all")


async def test_after_a_pinning_rollback_a_switch_is_refused_until_the_branch_is_brought_back(
        start_server, config_repo):
    client = await start_server()
    a = config_repo.initial
    b = config_repo.change("short texts only", "settings.toml", "default.max_text_length", 30)
    assert (await post(client, "/control/config/apply", commit=b)).status == 200
    assert await text_limit_is_short(client)

    resp = await post(client, "/control/config/rollback", revert=False)
    assert (await resp.json())["commit"] == a and await serving(client) == a
    assert config_repo.head == b

    resp = await post(client, "/control/models/switch", model="reference-low")
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "branch_diverged", error
    assert a[:10] in error["message"] and b[:10] in error["message"]
    assert f"rollback {a[:10]}" in error["message"]  # how to resolve it
    assert config_repo.head == b and await serving(client) == a
    assert porcelain(config_repo) == ""

    # Do what the message says: roll back to what serves, as a commit on the branch.
    resp = await post(client, "/control/config/rollback", commit=a)
    body = await resp.json()
    assert resp.status == 200 and body["rolled_back_to"] == a, body
    revert = config_repo.repo.head.commit
    assert body["commit"] == revert.hexsha not in (a, b)
    assert revert.parents[0].hexsha == b
    assert revert.tree == config_repo.repo.commit(a).tree
    assert porcelain(config_repo) == ""
    assert await serving(client) == revert.hexsha and not await text_limit_is_short(client)

    # The switch is written on the revert commit and brings back nothing of b.
    resp = await post(client, "/control/models/switch", model="reference-low")
    body = await resp.json()
    assert resp.status == 200, body
    switched = config_repo.repo.head.commit
    assert body["commit"] == switched.hexsha and switched.parents[0] == revert
    assert config_repo.repo.git.diff("--numstat", revert, switched) == "1\t1\tsettings.toml"
    diff = config_repo.repo.git.diff("-U0", revert, switched)
    assert '+default_model = "reference-low"' in diff and "max_text_length" not in diff
    assert not await text_limit_is_short(client)
    assert porcelain(config_repo) == ""


async def test_a_commit_made_by_hand_and_not_applied_refuses_a_switch(start_server,
                                                                      config_repo):
    client = await start_server()
    a = config_repo.initial
    mine = config_repo.change("short texts only", "settings.toml", "default.max_text_length",
                              30)

    resp = await post(client, "/control/models/switch", model="reference-low")
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "branch_diverged", error
    assert a[:10] in error["message"] and mine[:10] in error["message"]
    assert f"apply {mine[:10]}" in error["message"]  # how to resolve it
    assert error["details"] == {"branch_head": mine, "applied": a}
    assert config_repo.head == mine and await serving(client) == a
    assert not await text_limit_is_short(client)  # the unapplied change was not applied

    # Do what the message says: apply the head, then switch on top of it.
    assert (await post(client, "/control/config/apply", commit=mine)).status == 200
    resp = await post(client, "/control/models/switch", model="reference-low")
    assert resp.status == 200, await resp.text()
    assert config_repo.repo.head.commit.parents[0].hexsha == mine
    assert porcelain(config_repo) == ""


async def test_a_commit_made_by_hand_during_a_switch_is_not_overwritten(start_server,
                                                                        config_repo):
    config_repo.model("reference-low", load_seconds=1.0)
    base = config_repo.commit("reference-low loads slowly")
    client = await start_server()
    task = asyncio.create_task(post(client, "/control/models/switch", model="reference-low"))
    await wait_until(client, lambda s: any(m["state"] == "loading" for m in s["models"]))
    mine = config_repo.change("made while the host was loading", "settings.toml",
                              "default.max_text_length", 500)

    resp = await task
    body = await resp.json()
    assert resp.status == 200 and body["result"] == "applied", body
    # Applied and serving, but the branch moved meanwhile: it stays where the user put it.
    assert body["branch"]["moved"] is False and mine[:10] in body["branch"]["reason"]
    assert config_repo.head == mine and config_repo.repo.commit(mine).parents[0].hexsha == base
    assert await serving(client) == body["commit"]
    assert porcelain(config_repo) == ""
    # And the next edit says the two went apart instead of carrying either silently.
    resp = await post(client, "/control/models/switch", model="reference")
    assert resp.status == 409 and (await error_of(resp))["code"] == "branch_diverged"
