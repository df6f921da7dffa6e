"""Which arm a request asks for while a canary runs, handed to the core for every route.

``X-AllTalk-Canary: canary`` or ``stable`` sends a request to that arm (to try a canary by
hand); any other value is no preference. A sticky choice keys on the client's address or a
header (``canary.arm_choice``): the core picks the key from what this hands it. Audio responses
say which arm served them in ``X-AllTalk-Arm`` (streams.py).
"""

from __future__ import annotations

from aiohttp import web

from ..config.canary import ARMS
from ..serving.arms import ARM_REQUEST, ArmRequest
from .errors import Handler

CHOICE_HEADER = "X-AllTalk-Canary"


@web.middleware
async def arm_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    forced = request.headers.get(CHOICE_HEADER, "").strip().lower()
    token = ARM_REQUEST.set(ArmRequest(forced if forced in ARMS else None, request.remote,
                                       request.headers))
    try:
        return await handler(request)
    finally:
        ARM_REQUEST.reset(token)
