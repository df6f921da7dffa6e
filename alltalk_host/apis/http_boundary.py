"""The HTTP boundary with no web framework: its settings (``[http]`` of the serving commit) and
who may call a control route.

Both fronts judge a control request by these rules: the aiohttp app in ``web/guard.py`` (which
lists them) and the Ray front for ``/ray/status``. Each front turns its own request into a
``Caller``, so a rule lives here once and the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import Code, Forbidden, Unauthorized
from ..serving.registry import Serving

LOOPBACK_NAMES = ("localhost",)

# Headers a proxy, load balancer or CDN adds to say whom it forwards. Any one of them on a
# token-less control request means a proxy stands between the client and this server, so the
# loopback peer says nothing about the client. Kept wide on purpose: a false alarm costs a
# local client nothing it sends by itself, a miss opens control to whoever reaches the proxy.
PROXY_HEADERS = (
    "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port",
    "X-Forwarded-Server", "Forwarded", "Via", "X-Real-IP", "X-Client-IP", "CF-Connecting-IP",
    "True-Client-IP", "X-Cluster-Client-IP", "Fastly-Client-IP", "X-Original-Forwarded-For",
    "X-ProxyUser-Ip",
)
TOKEN_HINT = "set a control token (ALLTALK_CONTROL_TOKEN, or control_token in the host-local file)"


@dataclass(frozen=True)
class HttpPolicy:
    trusted_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = 1_048_576

    @classmethod
    def of(cls, serving: Serving | None) -> HttpPolicy:
        """The serving commit's ``[http]``; before the first apply, the defaults."""
        if serving is None:
            return cls()
        http = serving.config.http
        return cls(trusted_origins=http.trusted_origins, allowed_hosts=http.allowed_hosts,
                   cors_origins=http.cors_origins, max_body_bytes=http.max_body_bytes)

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


@dataclass(frozen=True)
class Caller:
    """What the guard looks at in a request, whichever framework received it."""

    remote: str | None  # the peer's address; None for a Unix socket (local by construction)
    http_version: str  # "1.0", "1.1", "2"
    headers: Mapping[str, str]  # case-insensitive, as both frameworks give them
    origin_self: str  # "scheme://host" of this request, which a same-origin page sends


@dataclass(frozen=True)
class Access:
    """How this host lets control routes in: the per-machine options, never a commit's."""

    token: str | None
    behind_proxy: bool = False


def check_caller(caller: Caller, access: Access, rules: HttpPolicy) -> None:
    """Raise the HostError that refuses ``caller`` a control route, or return."""
    check_origin(caller, rules)
    if access.token:
        check_token(caller.headers.get("Authorization", ""), access.token)
    else:
        check_local(caller, access, rules)


def check_origin(caller: Caller, rules: HttpPolicy) -> None:
    origin = caller.headers.get("Origin")
    if origin is not None:
        # A page this server serves itself (the web UI) is same-origin. That alone lets no
        # rebound name in: the Host rule still applies, or the token does.
        if not (origin == caller.origin_self or rules.origin_trusted(origin)):
            raise Forbidden(f"pages from {origin[:100]!r} may not change this server's state; "
                            "add the origin to http.trusted_origins to allow it",
                            code=Code.ORIGIN_NOT_ALLOWED)
    # A browser sends no Origin on a plain cross-site GET (an <img>, a link), but it does say
    # where the request comes from (GET /api/reload_config changes state).
    elif caller.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Forbidden("a cross-site page may not change this server's state",
                        code=Code.ORIGIN_NOT_ALLOWED)


def token_digest(token: str | None) -> str | None:
    """The SHA-256 (hex) a token is checked against; None for no token."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def check_token(given: str, token: str) -> None:
    check_token_digest(given, token_digest(token) or "")


def check_token_digest(given: str, digest: str) -> None:
    """``given`` must be ``Bearer <token>`` for the token whose SHA-256 (hex) is ``digest``: a
    Ray fleet's replicas are given only the digest, so the token never sits in Ray's deploy
    config. compare_digest: the time taken must not tell how much of a guess was right;
    surrogateescape: a header with bytes that are no UTF-8 is just a wrong token, not a 500."""
    token = given.removeprefix("Bearer ").encode("utf-8", "surrogateescape")
    if not given.startswith("Bearer ") or not hmac.compare_digest(
            hashlib.sha256(token).hexdigest().encode(), digest.encode()):
        raise Unauthorized("control routes need 'Authorization: Bearer <token>'"
                           if not given else "the control token is wrong")


def check_local(caller: Caller, access: Access, rules: HttpPolicy) -> None:
    """Token-less control: a client on this machine that no proxy can have forwarded.

    The signs of a proxy come first, whatever the peer: a server that believes forwarding
    headers (uvicorn, so Ray Serve's proxy) has already replaced the peer with the client
    they name, and the answer must not depend on which front it was."""
    forwarded = proxy_headers(caller.headers)
    if forwarded:
        raise Unauthorized(
            f"this request came through a proxy ({', '.join(forwarded)}), so it cannot be "
            f"told from a remote client: {TOKEN_HINT} to use control routes behind a proxy")
    if access.behind_proxy:
        raise Unauthorized(
            "this host is declared behind a proxy (behind_proxy), where every client looks "
            f"local: {TOKEN_HINT} to use control routes")
    # nginx's default proxy_pass speaks HTTP/1.0, adds no forwarding header and names the
    # upstream in Host: only the version tells it from a local client, which speaks 1.1.
    if caller.http_version == "1.0":
        raise Unauthorized(
            "this request is HTTP/1.0, as a reverse proxy (nginx's default proxy_pass) sends "
            f"it, so it cannot be told from a remote client: {TOKEN_HINT}, or send HTTP/1.1 "
            "from this machine")
    if not is_loopback_address(caller.remote):
        raise Forbidden("no control token is configured, so control routes answer loopback "
                        f"clients only; {TOKEN_HINT} to allow remote control",
                        code=Code.FORBIDDEN)
    if not rules.host_allowed(caller.headers.get("Host")):
        raise Forbidden(f"Host {caller.headers.get('Host', '')[:100]!r} is not this machine's "
                        "loopback name; add it to http.allowed_hosts, or set a control token",
                        code=Code.HOST_NOT_ALLOWED)


def proxy_headers(headers: Mapping[str, str]) -> list[str]:
    return [h for h in PROXY_HEADERS if h in headers]


def is_loopback_address(remote: str | None) -> bool:
    """Is the peer address loopback? ``::ffff:127.0.0.1`` is: a dual-stack listener (``::``)
    sees IPv4 clients so, and Python before 3.13 does not call it loopback."""
    if remote is None:  # a Unix socket: local by construction
        return True
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    return is_loopback_address(name)


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
