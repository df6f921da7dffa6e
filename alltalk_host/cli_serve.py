"""``alltalk-host serve``: run the server in this process, on sockets bound before it starts."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from . import __version__


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .config.template import init_from_template
    from .host import Host, HostOptions
    from .logs import configure
    from .plugins import discover
    from .web.access import AccessLogger
    from .web.app import create_app

    if args.log_format not in ("text", "json"):
        print(f"error: the log format is text or json, not {args.log_format!r} "
              "(ALLTALK_LOG_FORMAT)", file=sys.stderr)
        return 2
    configure(args.log_level, args.log_format)
    options = HostOptions.from_env(
        config_repo=args.config_repo, state_dir=args.state_dir, branch=args.branch,
        subdir=args.subdir, local_file=args.local_settings,
    )
    if args.init_config and not options.config_repo.exists():
        commit, fitted = init_from_template(options.config_repo, discover(options.plugins),
                                            options.branch, args.template)
        print(f"created config repo {options.config_repo} at {commit[:10]}: "
              + "; ".join(fitted.lines() or ["the template as it is"]))
    app = create_app(Host(options))  # checks the config repo; starts nothing yet
    # Bound before the host starts, so a port in use is one line, not a traceback after the
    # host has begun loading models.
    try:
        sockets = _listen(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; is "
              "another server using it? (choose another with --port)", file=sys.stderr)
        return 1
    # handler_cancellation: a client that disconnects cancels its own generation.
    web.run_app(app, sock=sockets, handler_cancellation=True, access_log_class=AccessLogger,
                access_log=logging.getLogger("alltalk_host.access"),
                print=lambda _: print(f"alltalk-host {__version__} serving on "
                                      f"http://{args.host}:{args.port}", flush=True))
    return 0


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names (as aiohttp would bind them)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(
                (i[0], i[1], i[2], "", i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
