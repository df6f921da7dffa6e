"""The HTTP boundary's settings (``[http]`` in the config), as the serving commit sets them.

They live in the config like every other setting, so a commit changes them without a restart.
Before the first apply nothing serves, and the defaults (the validators') apply.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from .keys import HOST

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class HttpPolicy:
    trusted_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = 1_048_576

    def origin_trusted(self, origin: str) -> bool:
        """May a page from ``origin`` change state? Loopback pages (local apps such as
        SillyTavern) and the configured ``http.trusted_origins`` may."""
        return is_loopback_origin(origin) or origin.rstrip("/") in {
            o.rstrip("/") for o in self.trusted_origins}

    def host_allowed(self, host: str | None) -> bool:
        """Does the Host header name this machine's loopback, or an allowed host?"""
        name = host_name(host or "")
        return name is not None and (is_loopback_name(name) or name in {
            h.lower() for h in self.allowed_hosts})

    def cors_origin(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for a read-only route, or None."""
        if "*" in self.cors_origins:
            return "*"
        return origin if origin.rstrip("/") in {
            o.rstrip("/") for o in self.cors_origins} else None


def policy(request: web.Request) -> HttpPolicy:
    serving = request.app[HOST].registry.serving
    if serving is None:
        return HttpPolicy()
    http = serving.config.http
    return HttpPolicy(trusted_origins=http.trusted_origins, allowed_hosts=http.allowed_hosts,
                      cors_origins=http.cors_origins, max_body_bytes=http.max_body_bytes)


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_origin(origin: str) -> bool:
    """``http://localhost:*``, ``http://127.0.0.1:*``, ``http://[::1]:*`` (any port)."""
    try:
        parts = urlsplit(origin)
        name = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and name is not None and is_loopback_name(name)


def host_name(host: str) -> str | None:
    """The name in a Host header ("localhost:7851" -> "localhost", "[::1]:80" -> "::1")."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.lower() if name else None
