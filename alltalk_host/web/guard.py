"""The one security boundary: who may call a route that changes state (or shows the config).

Such routes are declared in a ``ControlRoutes`` table, whatever their path (``/control/*``,
AllTalk's ``/api/reload``, ...), and ``create_app`` wraps every route of those tables with
``guard``. No path prefix decides, so a route added anywhere is guarded by being declared so.

The rules, in order:
1. A browser page may drive them only from a loopback origin (local apps such as SillyTavern)
   or one in ``http.trusted_origins``: any other ``Origin`` is 403 ``origin_not_allowed``.
2. With a control token: ``Authorization: Bearer <token>``, compared in constant time.
3. Without one: the client is on loopback, no reverse proxy forwarded it (behind a proxy every
   client looks local), and the Host header names this machine (against DNS rebinding).
4. A route that reads a JSON body gets one of a JSON type: a form or text/plain body, which a
   page may send cross-site without asking, is refused.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from ..errors import Code, Forbidden, Unauthorized, UnsupportedMediaType
from .errors import Handler, error_response
from .keys import HOST
from .policy import HttpPolicy, policy

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


class ControlRoutes(web.RouteTableDef):
    """A route table whose routes ``create_app`` guards.

    ``body`` is what the routes read: "json", or None for routes that take only query
    parameters (their body, if any, is never read).
    """

    def __init__(self, body: str | None) -> None:
        super().__init__()
        self.body = body


def guard(handler: Handler, body: str | None) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            check(request, body)
        except Unauthorized as exc:
            response = error_response(exc)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)
    guarded.__name__ = getattr(handler, "__name__", "guarded")
    guarded.__doc__ = handler.__doc__
    return guarded


def check(request: web.Request, body: str | None) -> None:
    """Raise the HostError that refuses ``request``, or return if it may pass."""
    rules = policy(request)
    check_origin(request, rules)
    token = request.app[HOST].options.control_token
    if token:
        _check_token(request, token)
    else:
        _check_local(request, rules)
    if body == "json" and request.body_exists and not is_json(request.content_type):
        raise UnsupportedMediaType(
            f"this route reads a JSON body: send Content-Type: application/json, not "
            f"{request.content_type}")


def check_origin(request: web.Request, rules: HttpPolicy) -> None:
    origin = request.headers.get("Origin")
    if origin is not None:
        # A page this server serves itself (the web UI to come) is same-origin. That alone
        # lets no rebound name in: rule 3 still checks the Host header, rule 2 the token.
        same_origin = origin == f"{request.scheme}://{request.host}"
        if not (same_origin or rules.origin_trusted(origin)):
            raise Forbidden(f"pages from {origin[:100]!r} may not change this server's state; "
                            "add the origin to http.trusted_origins to allow it",
                            code=Code.ORIGIN_NOT_ALLOWED)
    # A browser sends no Origin on a plain cross-site GET (an <img>, a link), but it does say
    # where the request comes from (GET /api/reload_config changes state).
    elif request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Forbidden("a cross-site page may not change this server's state",
                        code=Code.ORIGIN_NOT_ALLOWED)


def _check_token(request: web.Request, token: str) -> None:
    given = request.headers.get("Authorization", "")
    # surrogateescape: a header with bytes that are no UTF-8 is just a wrong token, not a 500
    given_bytes = given.encode("utf-8", "surrogateescape")
    # compare_digest: the time taken must not tell how much of a guess was right
    if not hmac.compare_digest(given_bytes, f"Bearer {token}".encode()):
        raise Unauthorized("control routes need 'Authorization: Bearer <token>'"
                           if not given else "the control token is wrong")


def _check_local(request: web.Request, rules: HttpPolicy) -> None:
    if not is_loopback_remote(request.remote):
        raise Forbidden("no control token is configured, so control routes answer loopback "
                        "clients only; set ALLTALK_CONTROL_TOKEN to allow remote control",
                        code=Code.FORBIDDEN)
    forwarded = [h for h in PROXY_HEADERS if h in request.headers]
    if forwarded:
        raise Unauthorized(
            f"this request came through a proxy ({', '.join(forwarded)}), so it cannot be "
            "told from a remote client: set a control token (ALLTALK_CONTROL_TOKEN) to use "
            "control routes behind a reverse proxy")
    if not rules.host_allowed(request.headers.get("Host")):
        raise Forbidden(f"Host {request.headers.get('Host', '')[:100]!r} is not this machine's "
                        "loopback name; add it to http.allowed_hosts, or set a control token",
                        code=Code.HOST_NOT_ALLOWED)


def is_loopback_remote(remote: str | None) -> bool:
    if remote is None:  # a unix socket: local by construction
        return True
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")

