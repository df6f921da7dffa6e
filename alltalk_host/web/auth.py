"""Who may call /control: bearer-token holders, or loopback clients when no token is set."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from ..errors import Forbidden, Unauthorized
from .errors import Handler, error_response
from .keys import HOST

CONTROL_PREFIX = "/control"


@web.middleware
async def control_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == CONTROL_PREFIX or request.path.startswith(CONTROL_PREFIX + "/"):
        token = request.app[HOST].options.control_token
        if token:
            given = request.headers.get("Authorization", "")
            # compare_digest: the time taken must not tell how much of a guess was right
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                error = Unauthorized(
                    "control routes need 'Authorization: Bearer <token>'"
                    if not given else "the control token is wrong",
                    code="unauthorized",
                )
                response = error_response(error)
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        elif not _is_loopback(request.remote):
            return error_response(Forbidden(
                "no control token is configured, so control routes answer loopback clients "
                "only; set ALLTALK_CONTROL_TOKEN to allow remote control",
                code="forbidden",
            ))
    return await handler(request)


def _is_loopback(remote: str | None) -> bool:
    if remote is None:  # a unix socket: local by construction
        return True
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False
