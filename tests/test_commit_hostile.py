"""Generated: hostile values in every string setting of the template, each committed and applied
through a real host. Each commit is refused or harmless: no file or process appears outside the
host's folders, and the host keeps serving.

The settings are found by walking the template's TOML, so a setting added to the template is
covered without touching this file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from .helpers import TEMPLATE, ConfigRepoHelper, wait_until

HOSTILE = {
    "option": "--upload-pack=touch {sentinel}",
    "subshell": "$(touch {sentinel})",
    "semicolon": "x;touch {sentinel}",
    "newline": "x\ntouch {sentinel}",
    "nul": "x\u0000touch {sentinel}",
    "dotdot": "../../../../../../..{sentinel}",
    "absolute": "{sentinel}",
    "token": "@format {{env[HOME]}}",
    "long": "x" * 100_000,
}
# Relative names without '..': as a path, each stays inside its folder.
PLAIN_NAMES = {"subshell", "semicolon"}


def string_settings() -> list[tuple[str, str, Any]]:
    """(file, dotted key, value as written) for every string, or list of strings, in the
    template's TOML files."""
    found = []

    def walk(file: str, value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(file, item, f"{path}.{key}" if path else key)
        elif isinstance(value, str) or (isinstance(value, list) and value
                                        and all(isinstance(v, str) for v in value)):
            found.append((file, path, value))

    for toml in sorted(TEMPLATE.glob("*.toml")):
        walk(toml.name, tomllib.loads(toml.read_text()), "")
    return found


SETTINGS = string_settings()


def test_the_walk_finds_the_template_settings():
    keys = {key for _, key, _ in SETTINGS}
    assert {"default.watch.remote", "default.models_dir", "default.outputs.dir",
            "default.models.joe.settings.voice_package", "default.models.xtts.settings.checkpoint",
            "default.alltalk.preview_text", "default.http.cors_origins"} <= keys


@pytest.fixture
def template_repo(tmp_path: Path):
    helper = ConfigRepoHelper(tmp_path / "template-config", reference=False)
    yield helper
    helper.repo.close()


async def test_hostile_values_in_every_string_setting_are_refused_or_harmless(
        start_server, template_repo, tmp_path, monkeypatch):
    # Every kind on one host, one after another (a host per kind cost the suite most of a
    # minute): whatever one kind left applied, the next still finds it refused or harmless.
    cwd = tmp_path / "cwd"  # relative folders a commit names land in the test's own folder
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("ALLTALK_OUTPUTS__DIR")  # the commit's outputs.dir is the one used
    monkeypatch.setenv("ALLTALK_CONTROL_TOKEN", "s3cret-token")
    headers = {"Authorization": "Bearer s3cret-token"}
    client = await start_server(config_repo=template_repo.path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for kind in sorted(HOSTILE):
        sentinel = tmp_path / f"sentinel-{kind}"
        outcomes = await _apply_everywhere(client, template_repo, headers, kind,
                                           HOSTILE[kind].format(sentinel=sentinel))
        assert not sentinel.exists(), kind
        assert sorted(p.name for p in tmp_path.iterdir()) == before, (
            f"{kind}: a file outside the host's folders")
        # Whatever was accepted, the host still speaks.
        resp = await client.post("/tts", json={"text": "Still here."}, headers=headers)
        assert resp.status == 200, (kind, await resp.text())
        # A git argument or an import: no hostile value is accepted. A model path: only one
        # that is a plain relative name inside models_dir ("$(touch ..)" is a file name there).
        refused = {"default.watch.remote", "default.models.joe.settings.voice_package"}
        if kind not in PLAIN_NAMES:
            refused |= {"default.models.test-voice.settings.model",
                        "default.models.xtts.settings.checkpoint",
                        "default.models.xtts.settings.voices_dir"}
        assert not refused & set(outcomes.get(200, [])), (kind, outcomes)


async def _apply_everywhere(client, repo: ConfigRepoHelper, headers: dict[str, str], kind: str,
                            value: str) -> dict[int, list[str]]:
    """Commit and apply ``value`` in each string setting in turn (restoring the one before);
    the keys by the status of their apply."""
    outcomes: dict[int, list[str]] = {}
    for file, key, original in SETTINGS:
        hostile: Any = [value] if isinstance(original, list) else value
        commit = repo.change(f"{kind} in {key}", file, key, hostile)
        resp = await client.post("/control/config/apply", json={"commit": commit},
                                 headers=headers)
        text = await resp.text()
        assert resp.status in (200, 422), (kind, key, resp.status, text[:300])
        assert "s3cret-token" not in text
        outcomes.setdefault(resp.status, []).append(key)
        repo.change(f"restore {key}", file, key, original)
    await wait_until(client, lambda s: s["apply_in_progress"] is None, headers=headers)
    return outcomes
