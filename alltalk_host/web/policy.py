"""The HTTP boundary's settings (``[http]`` in the config), as the serving commit sets them.

They live in the config like every other setting, so a commit changes them without a restart.
Before the first apply nothing serves, and the defaults (the validators') apply. The rules
themselves have no web framework (``alltalk_host.apis.http_boundary``); this reads them for a
request.
"""

from __future__ import annotations

from aiohttp import web

from ..apis.http_boundary import HttpPolicy
from .keys import HOST

__all__ = ["HttpPolicy", "policy"]


def policy(request: web.Request) -> HttpPolicy:
    return HttpPolicy.of(request.app[HOST].registry.serving)
