"""``GET /``: a short page that says what runs here and where to look, until the web UI lands."""

from __future__ import annotations

import html

from aiohttp import web

from .. import __version__
from .keys import HOST

routes = web.RouteTableDef()

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alltalk-host</title></head>
<body>
<h1>alltalk-host {version}</h1>
<p>{state}</p>
<ul>
<li><a href="/health/ready">/health/ready</a>: ready to serve?</li>
<li><a href="/control/status">/control/status</a>: the serving commit and models
(control routes: loopback or a control token)</li>
<li><a href="/api/ready">/api/ready</a>, <a href="/api/voices">/api/voices</a>: the
AllTalk-compatible API, for SillyTavern, text-generation-webui and Home Assistant</li>
<li><a href="/v1/models">/v1/models</a>: the OpenAI-compatible API (base URL <code>/v1</code>)</li>
</ul>
<p>Speak: <code>curl -X POST {base}/tts -H 'Content-Type: application/json'
-d '{{"text": "Hello there."}}' -o out.wav</code></p>
<p>Documentation: <code>README.md</code> and <code>docs/compatibility.md</code> in the
source tree; <code>alltalk-host --help</code> for the command line.</p>
</body></html>
"""


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    serving = request.app[HOST].registry.serving
    if serving is None:
        state = "Starting: no configuration is applied yet."
    else:
        state = (f"Serving commit {serving.commit[:10]}, default model "
                 f"{html.escape(serving.config.default_model)}.")
    base = html.escape(f"{request.scheme}://{request.host}")
    return web.Response(text=PAGE.format(version=__version__, state=state, base=base),
                        content_type="text/html")
