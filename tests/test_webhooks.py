"""POST /hooks/git: signed push events of GitHub, Gitea/Forgejo and GitLab apply the pushed
branch head at once (polling off), and nothing else gets through."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid

import git
import pytest

from .helpers import error_of, wait_until

SECRET = "s3cret-webhook"


def github_push(ref: str, after: str, secret: str = SECRET) -> tuple[bytes, dict]:
    """The shape GitHub sends for a push (trimmed to what a push carries)."""
    body = json.dumps({
        "ref": ref, "before": "0" * 40, "after": after, "created": False, "deleted": False,
        "forced": False, "repository": {"full_name": "ada/tts-config", "default_branch": "main"},
        "pusher": {"name": "ada", "email": "ada@example.net"},
        "commits": [{"id": after, "message": "Lower the limit", "added": [], "removed": [],
                     "modified": ["settings.toml"]}],
        "head_commit": {"id": after, "message": "Lower the limit"}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                  "X-Hub-Signature-256": signature, "Content-Type": "application/json",
                  "User-Agent": "GitHub-Hookshot/abc123"}


def gitea_push(ref: str, after: str, forgejo: bool = False) -> tuple[bytes, dict]:
    """Gitea's push payload; Forgejo sends the same with X-Forgejo-* headers beside."""
    body = json.dumps({
        "ref": ref, "before": "0" * 40, "after": after, "compare_url": "",
        "commits": [{"id": after, "message": "Lower the limit\n"}], "total_commits": 1,
        "repository": {"full_name": "ada/tts-config"}, "pusher": {"login": "ada"}}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    delivery = str(uuid.uuid4())
    headers = {"X-Gitea-Event": "push", "X-Gitea-Delivery": delivery,
               "X-Gitea-Signature": signature, "Content-Type": "application/json"}
    if forgejo:
        headers.update({"X-Forgejo-Event": "push", "X-Forgejo-Delivery": delivery,
                        "X-Forgejo-Signature": signature})
    return body, headers


def gitlab_push(ref: str, after: str, token: str = SECRET) -> tuple[bytes, dict]:
    body = json.dumps({
        "object_kind": "push", "event_name": "push", "before": "0" * 40, "after": after,
        "ref": ref, "checkout_sha": after, "user_username": "ada",
        "project": {"path_with_namespace": "ada/tts-config"}, "total_commits_count": 1,
        "commits": [{"id": after, "message": "Lower the limit"}]}).encode()
    return body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token,
                  "X-Gitlab-Event-UUID": str(uuid.uuid4()), "Content-Type": "application/json"}


@pytest.fixture
def forge(config_repo, tmp_path):
    """A bare 'forge' repo the host fetches from (polling off), and a clone to push from."""
    origin = git.Repo.init(tmp_path / "origin.git", bare=True, initial_branch="main")
    config_repo.repo.create_remote("origin", origin.working_dir)
    config_repo.set("settings.toml", "default.watch.remote", "origin")
    config_repo.commit("fetch from origin; polling stays off")
    config_repo.repo.git.push("origin", "main")
    other = git.Repo.clone_from(origin.working_dir, tmp_path / "other", branch="main")
    limits = iter(range(1200, 1300))

    def push() -> str:
        other.git.fetch("origin")
        other.git.reset("--hard", "origin/main")
        path = tmp_path / "other" / "settings.toml"
        text = path.read_text()
        current = next(line for line in text.splitlines() if line.startswith("max_text_length"))
        path.write_text(text.replace(current, f"max_text_length = {next(limits)}"))
        other.git.commit("-am", "Lower the limit")
        other.git.push("origin", "main")
        return other.head.commit.hexsha

    yield push
    other.close()
    origin.close()


@pytest.mark.parametrize("make", [github_push, gitea_push,
                                  lambda ref, after: gitea_push(ref, after, forgejo=True),
                                  gitlab_push], ids=["github", "gitea", "forgejo", "gitlab"])
async def test_a_signed_push_applies_the_branch_head_at_once(start_server, config_repo,
                                                             forge, make):
    client = await start_server(webhook_secret=SECRET)
    pushed = forge()
    body, headers = make("refs/heads/main", pushed)
    resp = await client.post("/hooks/git", data=body, headers=headers)
    reply = await resp.json()
    assert resp.status == 202 and reply["result"] == "accepted", reply
    assert reply["after"] == pushed and reply["branch"] == "main"
    await wait_until(client, lambda s: s["serving_commit"] == pushed)
    assert config_repo.head == pushed  # fetched and fast-forwarded
    status = await (await client.get("/control/status")).json()
    assert status["watch"]["enabled"] is False  # polling was never on


async def test_bad_signatures_are_refused_before_anything_happens(start_server, forge):
    client = await start_server(webhook_secret=SECRET)
    pushed = forge()
    for body, headers in (github_push("refs/heads/main", pushed, secret="wrong"),
                          gitlab_push("refs/heads/main", pushed, token="wrong")):
        resp = await client.post("/hooks/git", data=body, headers=headers)
        assert resp.status == 401, await resp.text()
    body, headers = github_push("refs/heads/main", pushed)
    tampered = body.replace(b"Lower", b"Raise")
    resp = await client.post("/hooks/git", data=tampered, headers=headers)
    assert resp.status == 401 and "does not match" in (await error_of(resp))["message"]
    resp = await client.post("/hooks/git", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 401 and "no webhook signature" in (await error_of(resp))["message"]
    resp = await client.post("/hooks/git", data=body, headers={
        **headers, "X-Hub-Signature-256": "sha256=\udcff".encode("utf-8", "surrogateescape")
        .decode("latin-1")})
    assert resp.status == 401
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] != pushed and status["watch"]["last_checked"] is None


async def test_other_branches_replays_and_other_events_do_nothing(start_server, forge):
    client = await start_server(webhook_secret=SECRET)
    pushed = forge()
    body, headers = github_push("refs/heads/experiment", pushed)
    resp = await client.post("/hooks/git", data=body, headers=headers)
    assert resp.status == 202 and (await resp.json())["result"] == "ignored"
    body, headers = github_push("refs/heads/main", pushed)
    resp = await client.post("/hooks/git", data=body, headers={**headers,
                                                                "X-GitHub-Event": "ping"})
    assert (await resp.json())["result"] == "ignored"
    # The same delivery a second time (a replay) is ignored, even when it is a real push.
    body, headers = github_push("refs/heads/main", pushed)
    headers["X-GitHub-Delivery"] = "d-1"
    assert (await (await client.post("/hooks/git", data=body, headers=headers)).json())[
        "result"] == "accepted"
    again = await client.post("/hooks/git", data=body, headers=headers)
    assert (await again.json()) == {"result": "ignored", "delivery": "d-1",
                                    "reason": "this delivery was seen before"}


async def test_pushes_during_an_apply_coalesce_into_one_apply_of_the_newest_head(
        start_server, config_repo, forge):
    config_repo.model("reference", load_seconds=0.5)
    config_repo.commit("a model that takes a moment to load")
    config_repo.repo.git.push("origin", "main")
    client = await start_server(webhook_secret=SECRET)
    slow = config_repo.change("reload the model", "models.toml",
                              "default.models.reference.settings.pitch_hz", 150)
    applying = asyncio.create_task(client.post("/control/config/apply", json={"commit": slow}))
    await wait_until(client, lambda s: s["apply_in_progress"] is not None)
    config_repo.repo.git.push("--force", "origin", "main")
    heads = [forge() for _ in range(3)]
    for head in heads:
        body, headers = github_push("refs/heads/main", head)
        assert (await client.post("/hooks/git", data=body, headers=headers)).status == 202
    assert (await applying).status == 200
    await wait_until(client, lambda s: s["serving_commit"] == heads[-1])
    status = await (await client.get("/control/status")).json()
    webhook_applies = [h for h in status["history"] if h["action"] == "watch"]
    assert [h["commit"] for h in webhook_applies] == [heads[-1]]


async def test_without_a_secret_there_is_no_webhook(start_server, forge):
    client = await start_server()
    body, headers = github_push("refs/heads/main", forge())
    resp = await client.post("/hooks/git", data=body, headers=headers)
    assert resp.status == 404 and "ALLTALK_WEBHOOK_SECRET" in (await error_of(resp))["message"]
