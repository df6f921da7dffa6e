"""``alltalk-host ray``, run as a user runs it (the command in a child process) against one real
local Ray cluster for the module: deploy, roll commits out, a commit every replica refuses,
rollback, status and log; and the mistakes (no deploy yet, no cluster, an unknown commit).

The cluster is this module's own (``alltalk_host.ray.local``, token auth on) and is shut down
whatever happens; ``ray stop`` is never used. The tests that need it skip where Ray is not
installed; the others run anyway, since the commands themselves need no Ray.
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alltalk_host.ray.local import ClusterInfo, free_port
from alltalk_host.ray.rollout import APP_NAME, APPS_PATH, refusal_reason

from .helpers import ConfigRepoHelper
from .ray_nodes import Run, ray_cli

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="Ray is not installed: pip install 'alltalk-host[ray]' (make test does)")


@dataclass
class Cluster:
    info: ClusterInfo
    token_file: Path

    def flags(self) -> list[str]:
        return ["--address", self.info.dashboard, "--serve-url", self.info.serve,
                "--token-file", str(self.token_file)]

    def applications(self) -> dict:
        request = urllib.request.Request(self.info.dashboard + APPS_PATH, headers={
            "Authorization": f"Bearer {self.info.token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp).get("applications", {})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from alltalk_host.ray.local import LocalCluster

    root = tmp_path_factory.mktemp("cluster")
    with LocalCluster(root, num_cpus=2) as info:
        yield Cluster(info, root / "home" / ".ray" / "auth_token")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigRepoHelper]:
    helper = ConfigRepoHelper(tmp_path_factory.mktemp("repo") / "config")
    yield helper
    helper.repo.close()


@pytest.fixture
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI's --state-dir for a test that deploys. Kept to the end of the run, not deleted
    with the test's tmp_path: a first deploy makes it the fleet's root, later deploys keep the
    deployed root, and the replicas on the module's cluster keep their clones under it."""
    return tmp_path_factory.mktemp("state")


# --- mistakes, said plainly ----------------------------------------------------------------

@needs_ray
def test_apply_before_deploy_says_to_deploy_first(cluster: Cluster, tmp_path: Path) -> None:
    # First in the module: nothing is deployed on the cluster yet.
    for command in (["apply", "main"], ["status"], ["rollback"], ["log"]):
        run = ray_cli(*command, "--state-dir", str(tmp_path / "state"), *cluster.flags(),
                      cwd=tmp_path)
        assert run.code == 1, run
        assert "run `alltalk-host ray deploy` first" in run.err, run
        assert "--remote URL" in run.err, run


def test_a_refusal_with_a_traceback_is_named_by_its_exception() -> None:
    # A deploy refused with a 500 once said only "Traceback ... File \"/...": the reason is
    # the traceback's last line.
    body = ('Traceback (most recent call last):\n  File "/x/ray/dashboard/head.py", line 9, '
            'in put\n    raise\nray.exceptions.GetTimeoutError: Get timed out after 30 s.\n')
    assert refusal_reason(body) == "ray.exceptions.GetTimeoutError: Get timed out after 30 s."
    assert refusal_reason("  bad config: replicas  ") == "bad config: replicas"
    assert len(refusal_reason("x" * 9000)) == 500


def test_a_remote_that_names_a_command_is_refused(tmp_path: Path) -> None:
    for remote, words in (("ext::sh -c touch% /tmp/pwned", "remote helper"),
                          ("file:///srv/config\x07", "control characters"),
                          ("-uhack", "starts with '-'"),
                          ("ftp://example.org/x.git", "uses ftp://")):
        run = ray_cli("deploy", f"--remote={remote}", "--address",
                      f"http://127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "s"),
                      cwd=tmp_path)
        assert run.code == 1, run
        assert words in run.err and "no Ray cluster" not in run.err, run


def test_no_cluster_is_a_quick_clear_error(repo: ConfigRepoHelper, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    run = ray_cli("deploy", "--remote", str(repo.path), "--address", dead,
                  "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert run.code == 1, run
    assert f"no Ray cluster at {dead}" in run.err and "--address" in run.err, run
    assert "alltalk-host ray local" in run.err or "pip install" in run.err, run
    assert run.seconds < 15, run  # refused at once, not a timeout


@needs_ray
@pytest.mark.timeout(300)
def test_an_unknown_commit_deploys_nothing(cluster: Cluster, repo: ConfigRepoHelper,
                                           tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = ray_cli("deploy", "--remote", str(repo.path), "--commit", "0badc0ffee",
                  "--state-dir", str(state), *cluster.flags(), cwd=tmp_path)
    assert run.code == 2, run
    assert "no commit" in run.err or "unknown" in run.err.lower(), run
    assert APP_NAME not in cluster.applications()
    assert not (state / "fleet" / "state.json").exists()


# --- a fleet's life ------------------------------------------------------------------------

@needs_ray
@pytest.mark.timeout(300)
def test_a_first_deploy_that_fails_is_reported_and_recorded(
        cluster: Cluster, repo: ConfigRepoHelper, tmp_path: Path, state_dir: Path) -> None:
    """No replica has a commit to keep, so each one raises and Ray gives up on the
    deployment: the command says so without waiting out its timeout and records the commit as
    failed; the fleet's settings are not kept, so the next command asks for a deploy again.
    (Before the module's first deploy, so nothing has to be torn down first.)"""
    silent = repo.change("silent from the start", "models.toml",
                         "default.models.reference.settings.amplitude", 0.0)
    state = ["--state-dir", str(state_dir)]
    delete_app(cluster)  # a first deploy: nothing runs
    try:
        run = ray_cli("deploy", "--remote", str(repo.path), "--replicas", "1",
                      "--plugins", "reference", "--commit", silent, *state, *cluster.flags(),
                      cwd=tmp_path)
        assert run.code == 1, run
        assert f"Ray could not deploy {silent[:10]}" in run.err, run
        ledger = json.loads((state_dir / "fleet" / "state.json").read_text())
        assert silent in ledger["failed"] and not ledger.get("known_good"), ledger

        for command in (["rollback"], ["apply", repo.initial]):
            run = ray_cli(*command, *state, *cluster.flags(), cwd=tmp_path)
            assert run.code == 1, run
            assert "run `alltalk-host ray deploy` first" in run.err, run
    finally:
        delete_app(cluster)
        # The module's repo goes on from here: the tests after this one start audible.
        repo.change("audible again", "models.toml",
                    "default.models.reference.settings.amplitude", None)


@needs_ray
@pytest.mark.timeout(300)
def test_deploy_apply_refuse_rollback(cluster: Cluster, repo: ConfigRepoHelper,
                                      tmp_path: Path, state_dir: Path) -> None:
    first = repo.initial
    second = repo.change("lower", "models.toml", "default.models.reference.settings.pitch_hz",
                         120)
    silent = repo.change("silent", "models.toml",
                         "default.models.reference.settings.amplitude", 0.0)
    state = ["--state-dir", str(state_dir)]

    def ray(*args: str) -> Run:
        return ray_cli(*args, *state, *cluster.flags(), cwd=tmp_path)

    def status() -> dict:
        run = ray("status", "--json")
        assert run.code == 0, run
        return json.loads(run.out)

    run = ray("deploy", "--remote", str(repo.path), "--replicas", "2",
              "--plugins", "reference", "--commit", first)
    assert run.code == 0, run
    assert f"2 replicas serve {first[:7]}" in run.out, run
    assert f"waiting for 2 replicas to take {first[:7]}..." in run.err, run
    deployed = cluster.applications()[APP_NAME]["deployed_app_config"]
    assert deployed["args"]["plugins"] == ["reference"], deployed
    assert deployed["deployments"][0]["num_replicas"] == 2, deployed

    # No --remote or --replicas again: Ray keeps what was deployed.
    run = ray("apply", second[:10])
    assert run.code == 0, run
    assert f"2 replicas serve {second[:7]}" in run.out, run
    assert "2/2" in run.err, run
    now = status()
    assert now["application"] == "RUNNING" and now["applied"] == second, now
    assert [(r["commit"], r["state"]) for r in now["replicas"]] == [(second, "serving")] * 2
    words = ray("status")
    assert words.code == 0, words
    for r in now["replicas"]:  # one row per replica: id, commit, generation, state
        assert any(r["replica"] in line and second[:7] in line and "serving" in line
                   and "reference" in line for line in words.out.splitlines()), words.out

    # A commit whose model warms up silent: every replica refuses it and keeps serving the
    # last good one; the command says who did what, and exits 1.
    run = ray("apply", silent)
    assert run.code == 1, run
    assert f"rollout of {silent[:7]} failed: 2 of 2 replicas refused it" in run.out, run
    for r in now["replicas"]:
        assert f"{r['replica']}: refused it (" in run.out, run.out
    assert f"rolled back to {second[:7]}" in run.out, run
    after = status()
    assert [(r["commit"], r["state"]) for r in after["replicas"]] == [(second, "serving")] * 2
    assert after["applied"] == second and silent in after["failed"], after
    assert all(r["last_error"]["commit"] == silent for r in after["replicas"]), after

    # Back to the known-good commit before the current one.
    run = ray("rollback")
    assert run.code == 0, run
    assert f"2 replicas serve {first[:7]}" in run.out, run
    assert [r["commit"] for r in status()["replicas"]] == [first] * 2

    # Another operator's machine (its own folder, no state): the same fleet and ledger,
    # read from Ray and the board; the other state folder was never needed.
    other = tmp_path / "elsewhere"
    other.mkdir()
    run = ray_cli("status", "--json", "--state-dir", str(other / "state"), *cluster.flags(),
                  cwd=other)
    assert run.code == 0, run
    seen = json.loads(run.out)
    assert (seen["applied"], seen["serving"], seen["wanted"]) == (first, 2, 2), seen
    assert silent in seen["failed"] and seen["converged"], seen

    # The branch log, marked from the fleet's ledger as `config log` marks it.
    run = ray_cli("log", *state, *cluster.flags(), cwd=tmp_path)
    assert run.code == 0, run
    lines = run.out.splitlines()
    marks = {c: next(line for line in lines if line.startswith(c[:10]))
             for c in (first, second, silent)}
    assert marks[first].endswith("[serving, known_good]"), run.out
    assert marks[second].endswith("[known_good]"), run.out
    assert marks[silent].endswith("[failed]"), run.out
    reason = lines[lines.index(marks[silent]) + 1].strip()  # each replica's own refusal
    assert reason.startswith("failed: ") and all(r["replica"] in reason
                                                 for r in now["replicas"]), run.out


@needs_ray
@pytest.mark.timeout(300)
def test_a_rollout_that_times_out_declares_the_previous_commit_again(
        cluster: Cluster, repo: ConfigRepoHelper, tmp_path: Path, state_dir: Path) -> None:
    """A replica slower than --timeout: the commit is recorded failed, Ray declares the
    previous one again, and the replica, once its load ends, goes back to it instead of
    staying on the failed commit."""
    good = repo.change("audible, quick", "models.toml",
                       "default.models.reference.settings.amplitude", 0.3)
    slow = repo.change("slow to load", "models.toml",
                       "default.models.reference.settings.load_seconds", 12)
    state = ["--state-dir", str(state_dir)]
    run = ray_cli("deploy", "--remote", str(repo.path), "--replicas", "1",
                  "--plugins", "reference", "--commit", good, *state, *cluster.flags(),
                  cwd=tmp_path)
    assert run.code == 0, run

    run = ray_cli("apply", slow, "--timeout", "3", *state, *cluster.flags(), cwd=tmp_path)
    assert run.code == 1, run
    assert f"rollout of {slow[:7]} failed: the fleet did not settle" in run.out, run
    assert f"rolled back to {good[:7]}" in run.out, run
    declared = json.dumps(cluster.applications()[APP_NAME]["deployed_app_config"])
    assert good in declared and slow not in declared, declared
    ledger = json.loads((state_dir / "fleet" / "state.json").read_text())
    assert ledger["applied"] == good and slow in ledger["failed"], ledger

    deadline = time.monotonic() + 120
    while True:
        run = ray_cli("status", "--json", *state, *cluster.flags(), cwd=tmp_path)
        replicas = json.loads(run.out)["replicas"] if run.code == 0 else []
        if [(r["commit"], r["target"]) for r in replicas] == [(good, good)]:
            break
        assert time.monotonic() < deadline, (run, replicas)
        time.sleep(2)


def delete_app(cluster: Cluster) -> None:
    request = urllib.request.Request(cluster.info.dashboard + APPS_PATH, method="DELETE",
                                      headers={"Authorization": f"Bearer {cluster.info.token}"})
    urllib.request.urlopen(request, timeout=30).close()
    deadline = time.monotonic() + 60
    while APP_NAME in cluster.applications():
        assert time.monotonic() < deadline, "the application was not deleted"
        time.sleep(0.5)
