"""Typed application keys: the only state the aiohttp app holds, set before start-up."""

from aiohttp import web

from ..host import Host
from ..outputs import OutputStores

HOST = web.AppKey("host", Host)
OUTPUTS = web.AppKey("outputs", OutputStores)
