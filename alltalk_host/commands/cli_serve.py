"""``alltalk-host serve``: run the server in this process, on sockets bound before it starts."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    from aiohttp import web

    from ..host import Host
    from ..wyoming.server import WyomingServer

WYOMING_URI_ENV = "ALLTALK_WYOMING_URI"
WYOMING_ZEROCONF_ENV = "ALLTALK_WYOMING_ZEROCONF"
# At SIGTERM: how long open requests get to finish before they are cancelled (aiohttp's
# default, 60 s, plus the unload would keep a stopping host around for over a minute).
SHUTDOWN_GRACE_S = 10.0


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..config.template import init_from_template
    from ..host import Host, HostOptions
    from ..logs import configure
    from ..plugins import discover
    from ..web.access import AccessLogger
    from ..web.app import create_app
    from ..web.deadlines import server_args

    if args.log_format not in ("text", "json"):
        print(f"error: the log format is text or json, not {args.log_format!r} "
              "(ALLTALK_LOG_FORMAT)", file=sys.stderr)
        return 2
    configure(args.log_level, args.log_format)
    options = HostOptions.from_env(
        config_repo=args.config_repo, state_dir=args.state_dir, branch=args.branch,
        subdir=args.subdir, local_file=args.local_settings, behind_proxy=args.behind_proxy,
    )
    if args.init_config and not options.config_repo.exists():
        commit, fitted = init_from_template(options.config_repo, discover(options.plugins),
                                            options.branch, args.template)
        print(f"created config repo {options.config_repo} at {commit[:10]}: "
              + "; ".join(fitted.lines() or ["the template as it is"]))
    host = Host(options)  # checks the config repo; starts nothing yet
    app = create_app(host)
    # Bound before the host starts, so a port in use is one line, not a traceback after the
    # host has begun loading models.
    try:
        sockets = _listen(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; is "
              "another server using it? (choose another with --port)", file=sys.stderr)
        return 1
    bracketed = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address
    serving = f"http://{bracketed}:{args.port}"
    wyoming_uri = args.wyoming_uri or os.environ.get(WYOMING_URI_ENV)
    if args.wyoming_zeroconf and not wyoming_uri:
        print("error: --wyoming-zeroconf announces the Wyoming server: give --wyoming-uri too",
              file=sys.stderr)
        for sock in sockets:
            sock.close()
        return 1
    if wyoming_uri:
        zeroconf = args.wyoming_zeroconf or os.environ.get(WYOMING_ZEROCONF_ENV)
        wyoming = _wyoming_server(host, wyoming_uri, zeroconf)
        if wyoming is None:
            for sock in sockets:
                sock.close()
            return 1
        # After the host's own start-up (cleanup contexts run in order, and end in reverse):
        # the Wyoming server starts once the host has started and stops before it does.
        app.cleanup_ctx.append(_lifetime_of(wyoming))
        serving += f" and {wyoming.address.uri} (Wyoming)"
    # handler_cancellation: a client that disconnects cancels its own synthesis.
    # shutdown_timeout: how long a stop waits for open requests before it cancels them; then
    # the host unloads (bounded too) and kills its workers, so SIGTERM ends in bounded time.
    web.run_app(app, sock=sockets, handler_cancellation=True, **server_args(options.limits),
                shutdown_timeout=SHUTDOWN_GRACE_S,
                access_log_class=AccessLogger,
                access_log=logging.getLogger("alltalk_host.access"),
                print=lambda _: print(f"alltalk-host {__version__} serving on {serving}",
                                      flush=True))
    return 0


def _wyoming_server(host: Host, uri: str, zeroconf: str | None) -> WyomingServer | None:
    """The Wyoming front-end on its bound sockets (announced as ``zeroconf`` if that names
    it), or None once the reason is printed."""
    from ..wyoming.announce import Announcement, service_info
    from ..wyoming.server import Address, WyomingServer, bind_unix

    try:
        address = Address.parse(uri)
    except ValueError as exc:
        print(f"error: --wyoming-uri: {exc}", file=sys.stderr)
        return None
    announcement = None
    if zeroconf:
        if address.path is not None:
            print("error: --wyoming-zeroconf announces a tcp:// address, not a Unix socket",
                  file=sys.stderr)
            return None
        try:
            announcement = Announcement(service_info(zeroconf, address.host, address.port))
        except ImportError:
            print("error: --wyoming-zeroconf needs the zeroconf package: pip install "
                  "'alltalk-host[zeroconf]'", file=sys.stderr)
            return None
        except (OSError, ValueError) as exc:
            print(f"error: --wyoming-zeroconf: cannot announce {address.host}: {exc}",
                  file=sys.stderr)
            return None
    try:
        sockets = ([bind_unix(address.path)] if address.path is not None
                   else _listen(address.host, address.port))
    except OSError as exc:
        print(f"error: cannot listen on {uri} for Wyoming: {exc.strerror or exc}; is another "
              "server using it? (choose another with --wyoming-uri)", file=sys.stderr)
        return None
    return WyomingServer(host, address, sockets, announcement)


def _lifetime_of(server: WyomingServer) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.stop()
    return lifetime


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names (as aiohttp would bind them)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        wanted = list(dict.fromkeys((i[0], i[1], i[2], "", i[4]) for i in infos))
        # IPv6 only where IPv4 gets its own socket (a name with both kinds of address, such
        # as localhost); "::" alone is dual-stack, as users of --host :: expect, and its IPv4
        # clients are seen as ::ffff:a.b.c.d (which the guard maps back).
        both = {socket.AF_INET, socket.AF_INET6} <= {w[0] for w in wanted}
        for family, kind, proto, _, address in wanted:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(both))
            sock.bind(address)
            sock.listen(128)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
