"""Plugin discovery through real entry points: installed, broken, duplicate, filtered."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import alltalk_host
from alltalk_host.errors import PluginConflict
from alltalk_host.plugins import discover

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
# What a plugin may import of the host: the contract, and in its tests the conformance check.
CONTRACT, TESTING = "alltalk_host", "alltalk_host.testing"

GOOD_BACKEND = """
from alltalk_host import Backend, Capabilities, hookimpl
from alltalk_host_reference import ReferenceBackend

class {cls}(ReferenceBackend):
    name = "{backend}"

@hookimpl
def alltalk_host_register_backends(register):
    register({cls})
"""


def make_dist(site: Path, dist: str, module: str, code: str, ep_name: str | None = None) -> None:
    """A real (tiny) installed distribution: a module plus dist-info with an entry point."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[alltalk_host]\n{ep_name or module} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    importlib.invalidate_caches()
    return path


def by_name(catalog) -> dict:
    return {p.name: p.to_dict() for p in catalog.plugins}


def test_the_in_tree_reference_plugin_is_found_by_its_entry_point():
    plugins = by_name(discover())
    assert plugins["reference"]["distribution"] == "alltalk-host-reference"
    assert plugins["reference"]["backends"] == ["reference"]
    assert plugins["reference"]["status"] == "loaded"


def test_a_plugin_that_fails_to_import_is_reported_and_others_still_load(site: Path):
    make_dist(site, "broken-plugin", "broken_plugin", "raise ImportError('needs libfoo')")
    catalog = discover()
    report = by_name(catalog)["broken_plugin"]
    assert report["status"] == "failed"
    assert report["distribution"] == "broken-plugin"
    assert "needs libfoo" in report["error"]
    assert "reference" in catalog.backends


def test_a_plugin_whose_registration_raises_is_reported(site: Path):
    make_dist(site, "bad-register", "bad_register", """
        from alltalk_host import hookimpl
        @hookimpl
        def alltalk_host_register_backends(register):
            raise RuntimeError("no GPU driver")
    """)
    assert "no GPU driver" in by_name(discover())["bad_register"]["error"]


def test_a_registered_class_that_is_not_a_backend_is_reported(site: Path):
    make_dist(site, "not-backend", "not_backend", """
        from alltalk_host import hookimpl
        class Thing: name = "thing"
        @hookimpl
        def alltalk_host_register_backends(register):
            register(Thing)
    """)
    catalog = discover()
    assert "not a subclass" in by_name(catalog)["not_backend"]["error"]
    assert "thing" not in catalog.backends


def test_a_misspelled_hook_is_reported(site: Path):
    make_dist(site, "typo-plugin", "typo_plugin", """
        from alltalk_host import hookimpl
        @hookimpl
        def alltalk_host_register_backend(register):
            pass
    """)
    assert "unknown hook" in by_name(discover())["typo_plugin"]["error"]


def test_two_backends_with_one_name_stop_startup_naming_both_distributions(site: Path):
    make_dist(site, "copycat-tts", "copycat",
              GOOD_BACKEND.format(cls="Copy", backend="reference"))
    with pytest.raises(PluginConflict) as info:
        discover()
    assert "alltalk-host-reference" in str(info.value)
    assert "copycat-tts" in str(info.value)


def test_the_allow_list_loads_only_named_plugins(site: Path):
    make_dist(site, "copycat-tts", "copycat",
              GOOD_BACKEND.format(cls="Copy", backend="reference"))
    catalog = discover(allow=["copycat"])  # the duplicate is fine once reference is left out
    assert by_name(catalog)["reference"]["status"] == "skipped"
    assert catalog.backends["reference"].__name__ == "Copy"


def _run_cli(args: list[str], site: Path | None = None,
             **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALLTALK_")}
    if site is not None:  # in front of the tree under test (a worktree's PYTHONPATH)
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(site), environ.get("PYTHONPATH")) if p)
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "alltalk_host", *args], env=environ,
                          capture_output=True, text=True, timeout=60)


def test_cli_plugins_lists_failures_and_honours_the_env_allow_list(site: Path):
    make_dist(site, "broken-plugin", "broken_plugin", "raise ImportError('needs libfoo')")
    out = _run_cli(["plugins"], site)
    assert out.returncode == 1, out.stderr  # a broken install is not a success
    assert "broken_plugin" in out.stdout and "needs libfoo" in out.stdout
    # The log keeps the traceback, which names the file that raised.
    assert "Traceback" in out.stderr and "broken_plugin.py" in out.stderr
    assert "reference" in out.stdout
    data = json.loads(_run_cli(["plugins", "--json"], site, ALLTALK_PLUGINS="reference").stdout)
    status = {p["name"]: p["status"] for p in data["plugins"]}
    assert status["reference"] == "loaded"
    assert set(status.values()) == {"loaded", "skipped"}  # everything else left out
    assert status["broken_plugin"] == "skipped"


def test_discovery_imports_no_heavy_library():
    code = ("import sys; from alltalk_host.plugins import discover; discover(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'TTS') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"


async def test_control_plugins_reports_a_broken_plugin_and_the_host_still_serves(
        site: Path, start_server):
    make_dist(site, "broken-plugin", "broken_plugin", "raise ImportError('needs libfoo')")
    client = await start_server()
    body = await (await client.get("/control/plugins")).json()
    assert {p["name"]: p["status"] for p in body["plugins"]}["broken_plugin"] == "failed"
    resp = await client.post("/tts", json={"text": "Still here."})
    assert resp.status == 200


def _host_imports(source: str) -> list[tuple[str, set[str]]]:
    """(module, names) of every import of alltalk_host or its submodules in ``source``."""
    def host(module: str) -> bool:  # alltalk_host and its submodules, not alltalk_host_onnx
        return module == CONTRACT or module.startswith(CONTRACT + ".")

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and host(node.module or ""):
            found.append((node.module, {a.name for a in node.names}))
        elif isinstance(node, ast.Import):
            found += [(a.name, set()) for a in node.names if host(a.name)]
    return found


def test_the_authors_guide_and_the_contract_name_the_same_things():
    """What the plugin authors' guide imports from alltalk_host is exported, everything
    exported is in the guide, and the in-tree plugins import the host only through it."""
    guide = GUIDE.read_text()
    exported = set(alltalk_host.__all__) - {"__version__"}
    imported: set[str] = set()
    for block in re.findall(r"```python\n(.*?)```", guide, re.S):
        for module, names in _host_imports(block):
            assert module in (CONTRACT, TESTING), f"the guide imports from {module}"
            if module == CONTRACT:
                imported |= names
    assert imported == exported, (imported ^ exported)
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        in_tests = "tests" in path.relative_to(ROOT).parts
        for module, names in _host_imports(path.read_text()):
            allowed = (CONTRACT, TESTING) if in_tests else (CONTRACT,)
            assert module in allowed, f"{path} imports from {module}"
            assert module == TESTING or names <= exported, (path, names - exported)


def test_the_guide_names_only_real_commands_and_the_contracts_scales():
    from alltalk_host import RESERVED_OPTIONS
    from alltalk_host.commands.cli import _parser

    guide = GUIDE.read_text()
    parser = _parser()
    # Commands as the guide shows them: in code, at the start of a line or after a backtick.
    commands = set(re.findall(r"(?:^|`)alltalk-host ([a-z]+)(?: ([a-z]+))?", guide, re.M))
    assert {("plugin", "new"), ("plugin", "check"), ("try", "mytts")} <= commands
    for first, second in commands:
        words = [first, second] if first in ("plugin", "config") else [first]
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*words, "--help"])
        assert info.value.code == 0, words
    for name, scale in RESERVED_OPTIONS.items():
        row = next(line for line in guide.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{scale.low} to {scale.high}" in row, row
    assert "`speed` | not an option" in guide
