"""Announcing the Wyoming server on the local network, so Home Assistant discovers it.

mDNS service ``_wyoming._tcp``, as wyoming-piper's ``--zeroconf`` announces it (Home
Assistant's Wyoming integration watches for that type). Off unless asked for; needs the
``zeroconf`` package (``pip install 'alltalk-host[zeroconf]'``), imported only then.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
NAME_RE = re.compile(r"^[A-Za-z0-9 _-]{1,63}$")  # one DNS label, readable in Home Assistant
# Connecting a UDP socket towards the mDNS group sends nothing; it only picks the interface
# (and so the address) that multicast leaves from, as wyoming's own helper does.
_MDNS_GROUP = ("224.0.0.251", 5353)


def service_info(name: str, host: str, port: int) -> Any:
    """The announcement of a server listening on ``host``:``port``; a wildcard host
    (``0.0.0.0``, ``::``) announces the address the local network reaches this machine at."""
    from zeroconf.asyncio import AsyncServiceInfo

    if not NAME_RE.match(name):
        raise ValueError(f"{name!r} is no service name: letters, digits, spaces, '_' and '-', "
                         "at most 63")
    if not _is_ip(host):
        host = socket.gethostbyname(host)
    if ipaddress.ip_address(host).is_unspecified:
        host = _outward_address()
    return AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=port,
                            parsed_addresses=[host], server=f"{name}.local.")


class Announcement:
    """Registered while the Wyoming server listens; withdrawn when it stops."""

    def __init__(self, info: Any) -> None:
        self.info = info
        self._zeroconf: Any = None

    async def start(self) -> None:
        from zeroconf.asyncio import AsyncZeroconf

        self._zeroconf = AsyncZeroconf()
        await self._zeroconf.async_register_service(self.info)
        log.info("announced %s on the local network (zeroconf, %s:%d)", self.info.name,
                 self.info.parsed_addresses()[0], self.info.port)

    async def stop(self) -> None:
        if self._zeroconf is None:
            return
        try:
            await self._zeroconf.async_unregister_service(self.info)
        finally:
            await self._zeroconf.async_close()
            self._zeroconf = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _outward_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(_MDNS_GROUP)
        return probe.getsockname()[0]
