"""A host that started with nothing serving (its first commit is bad) still watches its branch:
the watcher polls and a signed webhook pokes, so a pushed fix applies."""

from __future__ import annotations

import git
import pytest

from .helpers import wait_until
from .test_webhooks import SECRET, github_push


def break_the_head(config_repo, **watch) -> str:
    """A head that cannot serve (its default model does not exist), with valid [watch]."""
    for key, value in watch.items():
        config_repo.set("settings.toml", f"default.watch.{key}", value)
    config_repo.set("settings.toml", "default.default_model", "ghost")
    return config_repo.commit("a default model nobody defined")


async def nothing_serves(client) -> dict:
    return await wait_until(client, lambda s: s["serving_commit"] is None
                            and s.get("last_failure") is not None)


async def test_polling_applies_a_fix_for_a_bad_first_commit(start_server, config_repo):
    bad = break_the_head(config_repo, enabled=True, interval_s=0.05)
    client = await start_server(wait=False)
    status = await nothing_serves(client)
    assert status["last_failure"]["commit"] == bad
    fix = config_repo.change("define it again", "settings.toml", "default.default_model",
                             "reference")
    await wait_until(client, lambda s: s["serving_commit"] == fix)
    assert (await client.post("/tts", json={"text": "Back."})).status == 200


async def test_a_webhook_applies_a_pushed_fix_for_a_bad_first_commit(start_server, config_repo,
                                                                     tmp_path):
    origin = git.Repo.init(tmp_path / "origin.git", bare=True, initial_branch="main")
    config_repo.repo.create_remote("origin", origin.working_dir)
    break_the_head(config_repo, remote="origin")  # polling stays off
    config_repo.repo.git.push("origin", "main")
    client = await start_server(wait=False, webhook_secret=SECRET)
    await nothing_serves(client)

    other = git.Repo.clone_from(origin.working_dir, tmp_path / "other", branch="main")
    settings = tmp_path / "other" / "settings.toml"
    settings.write_text(settings.read_text().replace('default_model = "ghost"',
                                                     'default_model = "reference"'))
    other.git.commit("-am", "define it again")
    other.git.push("origin", "main")
    fix = other.head.commit.hexsha
    body, headers = github_push("refs/heads/main", fix)
    resp = await client.post("/hooks/git", data=body, headers=headers)
    assert resp.status == 202
    await wait_until(client, lambda s: s["serving_commit"] == fix)
    assert config_repo.head == fix  # fetched from origin, as the bad head's [watch] said
    other.close()
    origin.close()


@pytest.mark.parametrize("watch", [{"interval_s": -1}, {"remote": "--upload-pack=touch x"}])
async def test_a_head_whose_watch_settings_are_bad_falls_back_to_the_defaults(
        start_server, config_repo, watch):
    """The defaults: the local branch only, polling off; a signed webhook still looks."""
    break_the_head(config_repo, enabled=True, **watch)
    client = await start_server(wait=False, webhook_secret=SECRET)
    await nothing_serves(client)
    for key in watch:
        config_repo.set("settings.toml", f"default.watch.{key}", None)
    fix = config_repo.change("define it again", "settings.toml", "default.default_model",
                             "reference")
    body, headers = github_push("refs/heads/main", fix)
    assert (await client.post("/hooks/git", data=body, headers=headers)).status == 202
    await wait_until(client, lambda s: s["serving_commit"] == fix)
