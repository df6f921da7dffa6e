"""``alltalk-host plugin new``: a ready-to-install plugin distribution from the template.

The template (``plugin_template/``, package data) is the reference backend cut down to what a
new backend starts from: a pyproject with the entry point, the backend module, a README and a
test that runs the conformance check. ``{{name}}``-style placeholders are filled in; nothing
else is generated, so what an author reads is what the template says.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from .. import __version__
from ..errors import BadRequest, Code, Conflict

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def template_root() -> Path:
    return Path(str(resources.files("alltalk_host") / "plugin_template"))


def names(name: str) -> dict[str, str]:
    """The placeholders: backend name, import package, distribution, class, host version."""
    if not NAME_RE.match(name):
        raise BadRequest(f"{name!r} is not a backend name: lower-case letters, digits and '_', "
                         "starting with a letter", code=Code.BAD_REQUEST)
    release = re.match(r"\d+(\.\d+)*", __version__)
    return {
        "name": name,
        "package": f"alltalk_host_{name}",
        "dist": f"alltalk-host-{name.replace('_', '-')}",
        "cls": "".join(part.capitalize() for part in name.split("_")) + "Backend",
        "host_version": release.group(0) if release and release.group(0) != "0" else "0.1",
    }


def new_plugin(name: str, dest: Path | None = None) -> Path:
    """Write the distribution for backend ``name`` into ``dest`` (default ./<dist name>)."""
    values = names(name)
    dest = Path(dest or values["dist"])
    if dest.exists() and any(dest.iterdir()):
        raise Conflict(f"{dest} exists and is not empty", code=Code.PATH_EXISTS)
    root = template_root()
    for source in sorted(root.rglob("*.tmpl")):
        relative = source.relative_to(root).with_suffix("")  # drop .tmpl
        parts = [values["package"] if p == "package" else p.replace("NAME", name)
                 for p in relative.parts]
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        target.write_text(text, encoding="utf-8")
    return dest
