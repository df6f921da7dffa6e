"""The Wyoming server: where it listens, and its connections for as long as the host serves.

The caller binds the sockets (before the host starts, so an address in use is one line, not a
traceback after models have begun to load) and starts and stops this server inside the host's
lifetime: it starts after the host and stops before it, ending every connection first so no
request outlives the models it uses. Connections run on the host's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..host import Host
from .announce import Announcement
from .handler import SpeechHandler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Address:
    """A Wyoming URI as wyoming-piper's ``--uri`` takes it: ``tcp://HOST:PORT`` or
    ``unix://PATH`` (``stdio://`` makes no sense beside an HTTP server)."""

    uri: str
    host: str = ""
    port: int = 0
    path: Path | None = None

    @classmethod
    def parse(cls, uri: str) -> Address:
        parsed = urlparse(uri)
        if parsed.scheme == "tcp":
            try:
                port = parsed.port
            except ValueError:
                port = None
            if not parsed.hostname or port is None:
                raise ValueError(f"{uri!r} needs a host and a port: tcp://HOST:PORT "
                                 "(tcp://0.0.0.0:10200 for every interface)")
            return cls(uri, host=parsed.hostname, port=port)
        if parsed.scheme == "unix" and (parsed.netloc + parsed.path):
            return cls(uri, path=Path(parsed.netloc + parsed.path))
        raise ValueError(f"{uri!r} is no Wyoming address: use tcp://HOST:PORT or unix://PATH")


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, replacing a stale one that nothing listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if path.is_socket():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                except ConnectionRefusedError:
                    path.unlink()  # left by a server that is gone
        sock.bind(str(path))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class WyomingServer:
    def __init__(self, host: Host, address: Address, sockets: list[socket.socket],
                 announcement: Announcement | None = None) -> None:
        self.host = host
        self.address = address
        self.announcement = announcement
        self._sockets = sockets
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # The readers' own limit bounds an event's header line (events.py bounds the rest).
        limit = self.host.options.limits.wyoming_max_event_bytes
        for sock in self._sockets:
            if sock.family == socket.AF_UNIX:
                server = await asyncio.start_unix_server(self._serve, sock=sock, limit=limit)
            else:
                server = await asyncio.start_server(self._serve, sock=sock, limit=limit)
            self._servers.append(server)
        log.info("Wyoming text-to-speech on %s", self.address.uri)
        if self.announcement is not None:
            await self.announcement.start()

    async def stop(self) -> None:
        if self.announcement is not None:
            await self.announcement.stop()
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.address.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.address.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = SpeechHandler(reader, writer, self.host)
        # Its own task, cancelled at stop: on Python 3.11 asyncio logs a traceback when the
        # task it made for this callback ends cancelled.
        task = asyncio.create_task(handler.run(), name=f"wyoming {handler.peer}")
        self._connections.add(task)
        try:
            await task
        except asyncio.CancelledError:
            pass  # the server stops; the handler gave back what it held on its way out
        except ConnectionError:
            pass  # the client went away mid-answer; its request has been cancelled
        except Exception:
            log.exception("Wyoming connection from %s ended by an error", handler.peer)
        finally:
            self._connections.discard(task)
