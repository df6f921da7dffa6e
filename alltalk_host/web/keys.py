"""Typed application keys: the only state the aiohttp app holds, set before start-up."""

from collections import deque

from aiohttp import web

from ..host import Host
from ..outputs import OutputStores

HOST = web.AppKey("host", Host)
OUTPUTS = web.AppKey("outputs", OutputStores)
# A route's canonical path -> "public" or "control", for CORS (see cors.py).
ROUTE_KINDS = web.AppKey("route_kinds", dict)
# Webhook delivery ids seen lately (a bounded deque), so a replayed delivery does nothing.
DELIVERIES = web.AppKey("webhook_deliveries", deque)
SEEN_DELIVERIES = 1000
# The request's id (access.py), for the access log and the response header.
REQUEST_ID_KEY = web.RequestKey("request_id", str)
