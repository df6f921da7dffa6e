"""Issue 15, section 5: `config init` writes a template that works with what is installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import git

from alltalk_host.commands import cli
from alltalk_host.config.template import COMMENTED, init_from_template, template_dir
from alltalk_host.plugins import BackendCatalog, PluginInfo, discover

from .test_availability import Plugin


def models_of(path: Path) -> dict:
    return tomllib.loads((path / "models.toml").read_text())["default"]["models"]


def default_of(path: Path) -> str:
    return tomllib.loads((path / "settings.toml").read_text())["default"]["default_model"]


def test_the_template_is_package_data_and_names_a_package_for_each_model():
    folder = template_dir()
    assert {p.name for p in folder.iterdir()} >= {"settings.toml", "models.toml", ".gitignore"}
    text = (folder / "models.toml").read_text()
    assert text.count("# package: ") == len(models_of(folder))


def test_with_every_backend_installed_the_template_is_kept_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLTALK_MODELS_DIR", str(tmp_path / "models"))
    catalog = discover()
    commit, fitted = init_from_template(tmp_path / "cfg", catalog)
    installed = {n for n, m in models_of(template_dir()).items()
                 if m["backend"] in catalog.backends}
    assert set(models_of(tmp_path / "cfg")) == installed
    assert default_of(tmp_path / "cfg") == "joe" and fitted.default_changed_from is None
    # test-voice and xtts have no files in this models_dir: kept, reported, not the default.
    assert {"test-voice", "xtts"} <= set(fitted.unavailable)
    with git.Repo(tmp_path / "cfg") as repo:
        assert repo.head.commit.hexsha == commit and not repo.is_dirty(untracked_files=True)


def test_models_of_missing_backends_are_commented_out_naming_their_package(tmp_path):
    catalog = discover(allow=["reference"])
    _, fitted = init_from_template(tmp_path / "cfg", catalog)
    assert set(models_of(tmp_path / "cfg")) == {"reference"}
    assert default_of(tmp_path / "cfg") == "reference"
    assert fitted.default_changed_from == "joe"
    assert fitted.commented_out["xtts"] == (
        "backend 'xtts' is not installed (it comes with alltalk-host-xtts)")
    text = (tmp_path / "cfg" / "models.toml").read_text()
    assert f"{COMMENTED}[default.models.xtts]" in text
    assert "(it comes with alltalk-host-onnx[cpu,joe])" in text
    # Uncommenting a model gives back exactly the template's definition of it.
    restored = tomllib.loads(text.replace(COMMENTED, ""))["default"]["models"]
    assert restored == models_of(template_dir())


def test_a_broken_plugins_models_stay_and_are_not_the_default(tmp_path):
    installed = discover(allow=["reference"])
    broken = PluginInfo("onnx", "alltalk-host-onnx", "0.1", error="ImportError: no libfoo")
    others = [p for p in installed.plugins if p.name != "onnx"]
    catalog = BackendCatalog(installed.backends, [*others, broken])
    _, fitted = init_from_template(tmp_path / "cfg", catalog)
    assert {"joe", "test-voice", "reference"} <= set(models_of(tmp_path / "cfg"))
    assert "no libfoo" in fitted.unavailable["joe"]
    assert default_of(tmp_path / "cfg") == "reference"


def test_with_nothing_that_can_load_the_default_is_left_and_the_host_says_why(tmp_path):
    catalog = discover(allow=[], extra=[("none", Plugin())])
    _, fitted = init_from_template(tmp_path / "cfg", catalog)
    assert "models" not in tomllib.loads((tmp_path / "cfg" / "models.toml").read_text())
    assert fitted.default_model == "joe"
    assert "no model of the template can load here" in fitted.lines()[-1]


def test_config_init_prints_what_it_changed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALLTALK_PLUGINS", "reference")
    assert cli.main(["config", "init", str(tmp_path / "cfg")]) == 0
    out = capsys.readouterr().out
    assert "model joe: commented out, backend 'onnx' is not installed" in out
    assert "default model: reference (the template's joe cannot load here)" in out
