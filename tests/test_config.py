"""The config repo and the settings built from a commit: layers, isolation, validation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from alltalk_host.config.loader import ConfigLoader
from alltalk_host.config.repo import ConfigRepo, init_repo
from alltalk_host.errors import BadRequest, ConfigInvalid, Conflict, NotFound
from alltalk_host.plugins import discover

from .helpers import TEMPLATE, ConfigRepoHelper


@pytest.fixture
def repo(config_repo: ConfigRepoHelper) -> Iterator[ConfigRepo]:
    repo = ConfigRepo(config_repo.path)
    yield repo
    repo.close()


@pytest.fixture
def loader(repo: ConfigRepo, tmp_path: Path) -> ConfigLoader:
    return ConfigLoader(repo, discover(), tmp_path / "local.toml")


def test_init_creates_a_repo_with_one_commit_of_the_template(tmp_path: Path):
    helper = ConfigRepoHelper(tmp_path / "cfg", reference=False)
    assert [c.hexsha for c in helper.repo.iter_commits()] == [helper.initial]
    assert {p.name for p in helper.path.iterdir() if p.name != ".git"} == {
        p.name for p in TEMPLATE.iterdir()}
    helper.repo.close()


def test_init_refuses_a_non_empty_folder(config_repo: ConfigRepoHelper):
    with pytest.raises(Conflict, match="not empty"):
        init_repo(config_repo.path, TEMPLATE)


def test_the_template_serves_joe_and_offers_the_test_voice(tmp_path: Path):
    helper = ConfigRepoHelper(tmp_path / "cfg", reference=False)
    repo = ConfigRepo(helper.path)
    try:
        config = ConfigLoader(repo, discover()).load(helper.initial)
    finally:
        repo.close()
        helper.repo.close()
    assert config.default_model == "joe"
    assert config.models["joe"].backend == "onnx"
    assert config.models["test-voice"].backend == "onnx"
    assert config.loaded_models == {"joe"}
    assert str(config.sources["default_model"]) == "repo:settings.toml[default]"
    assert str(config.sources["models.joe.settings.voice_package"]) == "repo:models.toml[default]"


def test_a_path_that_is_not_a_git_repo_is_a_clear_error(tmp_path: Path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(BadRequest) as info:
        ConfigRepo(tmp_path / "plain")
    assert info.value.code == "not_a_git_repo"
    assert "config init" in info.value.message


def test_commits_are_named_by_full_or_short_hash_branch_or_tag(config_repo, repo):
    second = config_repo.change("raise limit", "settings.toml", "default.max_text_length", 10)
    config_repo.repo.create_tag("v1", ref=config_repo.initial)
    assert repo.resolve(second) == second
    assert repo.resolve(second[:8]) == second
    assert repo.resolve("main") == second
    assert repo.resolve("v1") == config_repo.initial
    assert repo.resolve("main~1") == config_repo.initial


@pytest.mark.parametrize("name", ["deadbeef", "no-such-branch", "0000000"])
def test_an_unknown_commit_is_not_found(repo: ConfigRepo, name: str):
    with pytest.raises(NotFound) as info:
        repo.resolve(name)
    assert info.value.code == "unknown_commit"


@pytest.mark.parametrize("name", ["", "--all", "a b", "x;rm"])
def test_a_malformed_commit_name_is_rejected(repo: ConfigRepo, name: str):
    with pytest.raises(BadRequest):
        repo.resolve(name)


def test_an_ambiguous_short_hash_is_a_conflict_listing_the_candidates(
        config_repo: ConfigRepoHelper, repo: ConfigRepo):
    raw = config_repo.repo
    tree = raw.head.commit.tree
    seen: dict[str, str] = {}
    # Make commits (cheaply, in-process) until two share a 4-digit prefix.
    for i in range(5000):
        c = git.Commit.create_from_tree(raw, tree, f"filler {i}", head=False)
        prefix = c.hexsha[:4]
        if prefix in seen:
            break
        seen[prefix] = c.hexsha
    else:
        pytest.fail("no colliding prefix found")
    with pytest.raises(Conflict) as info:
        repo.resolve(prefix)
    assert info.value.code == "ambiguous_commit"
    assert set(info.value.details["candidates"]) == {seen[prefix], c.hexsha}


def test_loading_a_commit_never_reads_the_working_tree(loader, config_repo):
    config_repo.set("settings.toml", "default.max_text_length", 7)  # uncommitted
    assert loader.load(config_repo.initial).max_text_length == 2000


def test_committed_local_files_are_not_a_layer(loader, config_repo):
    config_repo.write("settings.local.toml", "[default]\nmax_text_length = 3\n")
    commit = config_repo.commit("sneak in a local file")
    assert loader.load(commit).max_text_length == 2000


def test_environment_sections_are_chosen_by_alltalk_env(loader, config_repo, monkeypatch):
    monkeypatch.setenv("ALLTALK_ENV", "production")
    config = loader.load(config_repo.initial)
    assert config.drain_deadline_s == 120
    assert str(config.sources["drain_deadline_s"]) == "repo:settings.toml[production]"


def test_host_local_file_then_env_vars_override_the_repo(loader, config_repo, monkeypatch,
                                                         tmp_path):
    (tmp_path / "local.toml").write_text(
        'control_token = "s3cret"\nmax_text_length = 100\nqueue_limit = 5\n'
        "[watch]\ninterval_s = 9\n")
    monkeypatch.setenv("ALLTALK_MAX_TEXT_LENGTH", "50")
    monkeypatch.setenv("ALLTALK_MODELS__reference__settings__pitch_hz", "150")
    monkeypatch.setenv("DYNACONF_QUEUE_LIMIT", "1")  # not our prefix: must be ignored
    config = loader.load(config_repo.initial)
    assert config.max_text_length == 50
    assert str(config.sources["max_text_length"]) == "env"
    assert config.queue_limit == 5
    assert str(config.sources["queue_limit"]) == "host-local"
    assert config.watch.interval_s == 9 and config.watch.enabled is False  # merged, not replaced
    assert config.models["reference"].settings["pitch_hz"] == 150
    assert config.models["reference"].backend == "reference"
    assert config.redacted()["control_token"] == "***"


def test_invalid_toml_names_the_file(loader, config_repo):
    config_repo.write("models.toml", "[default.models.x\nbackend = 1\n")
    commit = config_repo.commit("broken toml")
    with pytest.raises(ConfigInvalid) as info:
        loader.load(commit)
    assert info.value.code == "invalid_toml"
    assert "models.toml" in info.value.message


@pytest.mark.parametrize(
    ("file", "key", "value", "needle"),
    [
        ("settings.toml", "default.max_text_length", -5, "max_text_length"),
        ("settings.toml", "default.watch.interval_s", 0, "interval_s"),
        ("settings.toml", "default.default_model", "nope", "default_model"),
        ("models.toml", "default.models.reference.settings.pitch_hz", 9999, "pitch_hz"),
        ("models.toml", "default.models.reference.settings.colour", "red", "colour"),
        ("models.toml", "default.models.reference.instances", 0, "instances"),
        ("models.toml", "default.models.reference.default_speed", 9.0, "default_speed"),
        ("models.toml", "default.models.reference.flavour", "x", "flavour"),
    ],
)
def test_validator_failures_say_which_key(loader, config_repo, file, key, value, needle):
    commit = config_repo.change(f"bad {key}", file, key, value)
    with pytest.raises(ConfigInvalid) as info:
        loader.load(commit)
    assert needle in str(info.value.details), info.value.details


def test_an_unknown_backend_makes_the_model_unavailable_and_lists_the_installed_ones(
        loader, config_repo):
    commit = config_repo.change("typo", "models.toml", "default.models.reference-low.backend",
                                "refrence")
    model = loader.load(commit).models["reference-low"]
    assert model.availability["availability"] == "unavailable"
    assert "'refrence' is not installed" in model.unavailable
    assert "reference" in model.unavailable.split("installed backends:")[1]


def test_nan_in_backend_settings_is_rejected(loader, config_repo):
    commit = config_repo.change("nan", "models.toml",
                                "default.models.reference.settings.amplitude", math.nan)
    with pytest.raises(ConfigInvalid) as info:
        loader.load(commit)
    assert "amplitude" in str(info.value.details)


def test_a_config_folder_inside_a_larger_repo_on_another_branch(tmp_path: Path):
    """path + subfolder + branch: the host reads only that folder of that branch."""
    root = tmp_path / "ops"
    raw = git.Repo.init(root, initial_branch="trunk")
    (root / "README").write_text("other things live here\n")
    import shutil
    shutil.copytree(TEMPLATE, root / "tts")
    (root / "tts" / "settings.toml").write_text(
        (root / "tts" / "settings.toml").read_text().replace("max_text_length = 2000",
                                                             "max_text_length = 321"))
    raw.git.add("-A")
    raw.index.commit("ops repo with a tts folder")
    repo = ConfigRepo(root, subdir="tts", branch="trunk")
    try:
        config = ConfigLoader(repo, discover()).load(repo.head())
        assert config.max_text_length == 321
        (root / "README").write_text("changed\n")
        assert repo.dirty_files() == []  # changes outside the config folder are not ours
        (root / "tts" / "models.toml").write_text("")
        assert repo.dirty_files() == ["tts/models.toml"]
        with pytest.raises(BadRequest, match="no branch 'main'"):
            ConfigRepo(root, subdir="tts")
    finally:
        repo.close()
        raw.close()
