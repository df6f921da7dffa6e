"""The one security boundary: who may call a route that changes state (or shows the config).

Such routes are declared in a ``ControlRoutes`` table, whatever their path (``/control/*``,
AllTalk's ``/api/reload``, ...), and ``create_app`` wraps every route of those tables with
``guard``. No path prefix decides, so a route added anywhere is guarded by being declared so.
The rules have no web framework (``alltalk_host.apis.http_boundary``): the Ray front's
``/ray/status`` is judged by the same ones.

The rules, in order:
1. A browser page may drive them only from a loopback origin (local apps such as SillyTavern)
   or one in ``http.trusted_origins``: any other ``Origin`` is 403 ``origin_not_allowed``.
2. With a control token: ``Authorization: Bearer <token>``, compared in constant time.
3. Without one, control is for a person's CLI and browser apps on this same machine: the peer
   is loopback (``::ffff:127.0.0.1`` included, as a dual-stack listener sees IPv4 clients), and
   nothing suggests a proxy forwarded it, since behind one every client looks local. So a
   token-less request is refused (401, "set a control token") when it carries any proxy header
   (``http_boundary.PROXY_HEADERS``: ``X-Forwarded-*``, ``Forwarded``, ``Via``, ``X-Real-IP``,
   ``CF-Connecting-IP``, ...); when it is HTTP/1.0, which is what nginx's default
   ``proxy_pass`` sends (with no forwarding header and the upstream's address as Host, so the
   version is all that tells it from a local curl); and always when the operator declared a
   proxy (``behind_proxy``, for proxies and tunnels that add nothing: HAProxy without
   ``option forwardfor``, socat, ``ssh -L``). ``behind_proxy`` is a per-machine option, never a
   commit setting: a commit is untrusted and must not be able to lower a protection. Last, the
   Host header names this machine (against DNS rebinding).
4. A route that reads a JSON body gets one of a JSON type: a form or text/plain body, which a
   page may send cross-site without asking, is refused.

A generated token (as Jupyter writes one for its local clients) was weighed against rule 3 and
not taken: SillyTavern's model dropdown and the web UI call control routes without a token on
the same machine today, and would stop working until each was given it.
"""

from __future__ import annotations

from aiohttp import web

from ..apis.http_boundary import Access, Caller, HttpPolicy, check_caller
from ..apis.http_boundary import check_origin as check_caller_origin
from ..errors import Unauthorized, UnsupportedMediaType
from .errors import Handler, error_response
from .keys import HOST
from .policy import policy


class ControlRoutes(web.RouteTableDef):
    """A route table whose routes ``create_app`` guards.

    ``body`` is what the routes read: "json", "multipart" (an upload), or None for routes
    that take only query parameters (their body, if any, is never read).
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
    options = request.app[HOST].options
    check_caller(caller(request), Access(options.control_token, options.behind_proxy),
                 policy(request))
    if body == "json" and request.body_exists and not is_json(request.content_type):
        raise UnsupportedMediaType(
            f"this route reads a JSON body: send Content-Type: application/json, not "
            f"{request.content_type}")
    if body == "multipart" and request.content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"this route reads an upload: send Content-Type: multipart/form-data, not "
            f"{request.content_type}")


def check_origin(request: web.Request, rules: HttpPolicy) -> None:
    check_caller_origin(caller(request), rules)


def caller(request: web.Request) -> Caller:
    version = request.version
    return Caller(remote=request.remote, http_version=f"{version.major}.{version.minor}",
                  headers=request.headers, origin_self=f"{request.scheme}://{request.host}")


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")
