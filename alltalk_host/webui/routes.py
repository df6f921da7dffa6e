"""``GET /ui/...``: the web UI's files, and ``GET /`` sending browsers there.

The files are package data, served as they are (no build step, nothing fetched from elsewhere).
Only names in ``static/`` with a known type are served, so no path can reach other files. The
page's Content-Security-Policy allows nothing but this origin: no script, style or request goes
anywhere else, whatever a response it renders contains.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from ..errors import NotFound

routes = web.RouteTableDef()

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
         ".svg": "image/svg+xml"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|js|css|svg)$")
HEADERS = {
    # The page may talk to this server only; blob: is the audio it generated.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Always revalidated (ETag / Last-Modified), so an upgraded host serves its new page.
    "Cache-Control": "no-cache",
}


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


@routes.get("/ui")
async def ui_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


@routes.get("/ui/")
async def index(request: web.Request) -> web.FileResponse:
    return _file("index.html")


@routes.get("/ui/{name}")
async def static_file(request: web.Request) -> web.FileResponse:
    return _file(request.match_info["name"])


def _file(name: str) -> web.FileResponse:
    path = STATIC / name
    if not _NAME.match(name) or not path.is_file():
        raise NotFound(f"the web UI has no file {name[:80]!r}", )
    return web.FileResponse(path, headers={**HEADERS, "Content-Type": TYPES[path.suffix]})
