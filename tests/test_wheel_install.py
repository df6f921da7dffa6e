"""Issue 15, section 5: the host as a user installs it from a wheel, not from this checkout.

The host's wheel and the reference plugin's are built from this tree and installed (not
editable) into a fresh virtual environment; then ``alltalk-host config init`` and ``serve``
run from that environment alone, with no PYTHONPATH, so nothing of this source tree is used.
The other dependencies come from the package index through pip's cache, at the versions of
constraints.txt (so a second run downloads nothing). A minute or so on a quiet machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import venv
from pathlib import Path

import pytest

from tools.server import free_port

from .helpers import ROOT, read_wav

pytestmark = pytest.mark.timeout(900)


def _run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=600, **kwargs)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _sources(tmp: Path) -> Path:
    """A copy of the host's and the reference plugin's sources, so the build writes its
    scratch folders (build/, *.egg-info) there and not into the checkout."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache", "tests",
                                    "tools", "docs", "plugins")
    shutil.copytree(ROOT, src, ignore=ignore)
    shutil.copytree(ROOT / "plugins" / "reference", src / "reference", ignore=ignore)
    return src


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment with the host's and the reference plugin's wheels: its bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _sources(tmp)
    wheels = tmp / "wheels"
    # No build isolation: setuptools is already here, so the build needs no download.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", wheels, src, src / "reference")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    # The user's environment here too: with PYTHONPATH into this checkout, pip would see the
    # host as installed already and skip its wheel (and its alltalk-host command).
    _run(bin_dir / "python", "-m", "pip", "install", "--disable-pip-version-check",
         "-c", ROOT / "constraints.txt", *sorted(wheels.glob("*.whl")), env=_user_env())
    return bin_dir


def _user_env() -> dict[str, str]:
    """The environment of a user of that install: no PYTHONPATH into this checkout, none of
    the developer's ALLTALK_* settings."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("ALLTALK_")}


def test_the_wheel_has_the_template_and_config_init_fits_it_to_what_is_installed(
        installed: Path, tmp_path: Path):
    out = _run(installed / "alltalk-host", "config", "init", tmp_path / "cfg", cwd=tmp_path,
               env=_user_env()).stdout
    assert "default model: reference (the template's joe cannot load here)" in out, out
    settings = tomllib.loads((tmp_path / "cfg" / "settings.toml").read_text())
    assert settings["default"]["default_model"] == "reference"
    models_text = (tmp_path / "cfg" / "models.toml").read_text()
    assert set(tomllib.loads(models_text)["default"]["models"]) == {"reference"}
    for package in ("alltalk-host-onnx[cpu,joe]", "alltalk-host-xtts", "alltalk-host-espeak"):
        assert f"(it comes with {package})" in models_text
    # It runs the installed copy, not this checkout.
    where = _run(installed / "python", "-c", "import alltalk_host; print(alltalk_host.__file__)",
                 cwd=tmp_path, env=_user_env()).stdout
    assert "site-packages" in where and str(ROOT) not in where


def test_the_installed_host_serves_the_initialised_repo(installed: Path, tmp_path: Path):
    port = free_port()
    server = subprocess.Popen(
        [str(installed / "alltalk-host"), "serve", "--init-config", "--config-repo",
         str(tmp_path / "cfg"), "--state-dir", str(tmp_path / "state"), "--port", str(port),
         "--log-level", "warning"],
        cwd=tmp_path, env=_user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready",
                                            timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the installed host did not become ready"
            time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/tts", data=b'{"text": "Installed from a wheel."}',
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
            samples, rate = read_wav(resp.read())
        assert rate == 22050 and len(samples) > rate // 2
        assert float(abs(samples).max()) > 0.1
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_a_plugin_made_with_the_scaffold_installs_editable_and_is_listed_at_once(
        installed: Path, tmp_path: Path):
    """Issue 15, section 3, as an author does it in their own environment."""
    dest = tmp_path / "alltalk-host-mytts"
    _run(installed / "alltalk-host", "plugin", "new", "mytts", dest, cwd=tmp_path,
         env=_user_env())
    _run(installed / "python", "-m", "pip", "install", "--disable-pip-version-check", "-e",
         dest, cwd=tmp_path, env=_user_env())
    listed = _run(installed / "alltalk-host", "plugins", cwd=tmp_path, env=_user_env()).stdout
    assert "mytts            loaded   alltalk-host-mytts 0.1.0  backends: mytts" in listed
    checked = _run(installed / "alltalk-host", "plugin", "check", "mytts", cwd=tmp_path,
                   env=_user_env()).stdout
    assert "backend mytts: conforms" in checked
