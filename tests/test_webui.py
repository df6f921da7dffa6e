"""The web UI's server side: its files at /ui/, and nothing else; / sends browsers there. The
page itself is tested in a real browser (tests/browser/)."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch

from alltalk_host.webui.routes import STATIC

from .helpers import ROOT, error_of


async def test_the_root_sends_browsers_to_the_page(start_server):
    client = await start_server()
    for path in ("/", "/ui"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == "/ui/", path
    resp = await client.get("/ui/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert '<script type="module" src="app.js">' in await resp.text()


async def test_files_are_served_with_their_type_and_a_policy_that_keeps_the_page_home(
        start_server):
    client = await start_server()
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
             ".html": "text/html"}
    for path in sorted(STATIC.iterdir()):
        resp = await client.get(f"/ui/{path.name}")
        assert resp.status == 200, path.name
        assert resp.content_type == types[path.suffix], path.name
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cache-Control"] == "no-cache"  # an upgraded host serves new files
        policy = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert "script-src 'self';" in policy  # no inline script, nothing from elsewhere


async def test_only_the_pages_own_files_are_served(start_server):
    client = await start_server()
    for name in ("nothing.js", "..%2Fapp.py", "%2E%2E%2Froutes.py", "routes.py", "__init__.py",
                 ".hidden.js", "app.js%00.txt"):
        resp = await client.get(f"/ui/{name}")
        assert resp.status == 404, name
        assert (await error_of(resp))["code"] == "not_found"
    assert (await client.get("/ui/../webui/routes.py")).status == 404


def test_every_module_the_page_imports_is_there_and_shipped():
    """Imports resolve to files in static/ (no CDN, no bare package names), and the package
    data globs in pyproject.toml take every file."""
    files = {p.name for p in STATIC.iterdir()}
    html = (STATIC / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^"#]+)"', html))
    for path in STATIC.glob("*.js"):
        text = path.read_text()
        for spec in re.findall(r'^import .*? from "([^"]+)";$', text, re.MULTILINE | re.DOTALL):
            assert spec.startswith("./") and spec.endswith(".js"), (path.name, spec)
            referenced.add(spec[2:])
        assert "http://" not in text.replace("http://HOST", "") and "https://" not in text
    assert referenced <= files, referenced - files
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["alltalk_host"]
    for name in files:
        assert any(fnmatch(f"webui/static/{name}", g) for g in globs), name
