"""``POST /hooks/git``: a forge says the config repo was pushed; apply the branch head now.

GitHub, Gitea/Forgejo and GitLab send a push event signed with a shared secret
(``ALLTALK_WEBHOOK_SECRET``, or ``webhook_secret`` in the host-local file; never in the repo).
Setting the secret turns the route on. The signature is checked in constant time over the raw
body before anything is parsed; then a push to the host's branch makes the branch watcher look
at once (fetch, the same checks, apply), whether or not polling is on. Pushes that arrive during
an apply coalesce into one apply of the newest head. A delivery id seen before is ignored, so a
replayed delivery does nothing.

This route changes state but is not a control route: forges cannot send the control token, so
the signature is its guard, and without a secret it does not exist (404).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from ..apis.bodies import parse_json
from ..errors import BadRequest, Code, HostError, NotFound, Unauthorized
from .bodies import read_body
from .keys import DELIVERIES, HOST

routes = web.RouteTableDef()


@dataclass(frozen=True)
class Push:
    forge: str
    event: str
    delivery: str | None


def verify(request: web.Request, body: bytes, secret: str) -> Push:
    """Which forge signed this, or Unauthorized. Constant-time, before parsing anything."""
    key = secret.encode()
    headers = request.headers
    if "X-Hub-Signature-256" in headers:  # GitHub (and forges that copy it)
        given = headers["X-Hub-Signature-256"].encode("utf-8", "surrogateescape")
        expected = b"sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        forge, event, delivery = "github", "X-GitHub-Event", "X-GitHub-Delivery"
    elif "X-Gitea-Signature" in headers or "X-Forgejo-Signature" in headers:
        raw = headers.get("X-Forgejo-Signature") or headers["X-Gitea-Signature"]
        given = raw.encode("utf-8", "surrogateescape")
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        forge = "forgejo" if "X-Forgejo-Signature" in headers else "gitea"
        event = "X-Forgejo-Event" if "X-Forgejo-Event" in headers else "X-Gitea-Event"
        delivery = "X-Forgejo-Delivery" if "X-Forgejo-Delivery" in headers else \
            "X-Gitea-Delivery"
    elif "X-Gitlab-Token" in headers:  # GitLab sends the secret itself, not a signature
        given = headers["X-Gitlab-Token"].encode("utf-8", "surrogateescape")
        expected = key
        forge, event, delivery = "gitlab", "X-Gitlab-Event", "X-Gitlab-Event-UUID"
    else:
        raise Unauthorized("no webhook signature: send X-Hub-Signature-256 (GitHub), "
                           "X-Gitea-Signature (Gitea, Forgejo) or X-Gitlab-Token (GitLab)")
    if not hmac.compare_digest(given, expected):
        raise Unauthorized(f"the {forge} webhook signature does not match the secret")
    return Push(forge, headers.get(event, ""), headers.get(delivery))


@routes.post("/hooks/git")
async def git_push(request: web.Request) -> web.Response:
    host = request.app[HOST]
    secret = host.options.webhook_secret
    if not secret:
        raise NotFound("webhooks are off: set ALLTALK_WEBHOOK_SECRET (or webhook_secret in "
                       "the host-local file) to turn them on", code=Code.NOT_FOUND)
    body = await read_body(request)
    push = verify(request, body, str(secret))
    seen = request.app[DELIVERIES]
    if push.delivery and push.delivery in seen:
        return _accepted({"result": "ignored", "reason": "this delivery was seen before",
                          "delivery": push.delivery})
    if push.delivery:
        seen.append(push.delivery)
    if push.event.lower() not in ("push", "push hook"):
        return _accepted({"result": "ignored", "reason": f"not a push ({push.event!r})"})
    try:
        # A signed payload is still a forge's input: parse_json refuses one nested 100k deep
        # (RecursionError) or of a 5000-digit number as any JSON body.
        payload = parse_json(body)
        ref, after = payload["ref"], payload.get("after") or payload.get("checkout_sha")
    except (HostError, KeyError, TypeError):
        raise BadRequest("a push payload names its ref (and the commit after it)",
                         code=Code.MALFORMED_JSON) from None
    branch = host.control.repo.branch
    if ref != f"refs/heads/{branch}":
        return _accepted({"result": "ignored", "reason": f"{ref} is not {branch}",
                          "ref": ref})
    joined = not host.control.watcher.poke()
    return _accepted({
        "result": "accepted", "forge": push.forge, "branch": branch, "after": after,
        "will": "fetch and apply the branch head, with the same checks as any apply"
                + (" (after the look already under way)" if joined else ""),
    })


def _accepted(body: dict[str, object]) -> web.Response:
    return web.json_response(body, status=202)
