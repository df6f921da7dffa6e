"""Issue 15, sections 1 to 3: `alltalk-host try`, the conformance check (`plugin check` and
alltalk_host.testing) and the scaffold (`plugin new`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from alltalk_host import Audio, MemoryNeed, ModelContext, SpeechRequest
from alltalk_host.commands import cli, trial
from alltalk_host.testing import WorkerLimits, assert_conforms, check_backend
from alltalk_host_reference import ReferenceBackend

from .helpers import dominant_pitch, read_wav

# Short deadlines, for a backend told to hang (the reference's hang_on); nothing here asserts
# how long a step took, only that it ended and how it was reported.
HANG = WorkerLimits(load_s=2, warmup_s=2, request_s=2, request_per_char_s=0, unload_s=2)
HANG_FLAGS = ["--load-timeout", "2", "--warmup-timeout", "2", "--request-timeout", "2",
              "--char-timeout", "0", "--unload-timeout", "2"]

# --- the conformance check -----------------------------------------------------------------


def test_the_reference_backend_conforms():
    report = assert_conforms(ReferenceBackend, {"pitch_hz": 120},
                             bad_settings=[{"pitch_hz": 9999}, {"sample_rate": 1234}])
    names = [c.name for c in report.checks]
    assert "speaks language en" in names and "cancelling stops the stream" in names
    assert all(c.ok for c in report.checks), report.summary()


class Sloppy(ReferenceBackend):
    """Breaks one promise of the contract per flag."""

    name = "sloppy"
    flaws: frozenset[str] = frozenset()

    @classmethod
    def validate_settings(cls, settings):  # type: ignore[no-untyped-def]
        if "lax_settings" in cls.flaws:
            settings = {k: v for k, v in settings.items() if not k.startswith("no_such")}
        return super().validate_settings(settings)

    def synthesize(self, request: SpeechRequest) -> Audio:
        if "lax_options" in self.flaws:
            request = replace(request, options={k: v for k, v in request.options.items()
                                                if k == "pitch"})
        if "crash_on_voice" in self.flaws and request.voice == "no-such-voice-x":
            raise KeyError(request.voice)
        return super().synthesize(request)

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        if "raising_stream" in self.flaws:
            raise RuntimeError("the stream fell over")
        if "nan_stream" in self.flaws:  # right as a whole, NaN from its second chunk on
            for i, chunk in enumerate(super().stream(request)):
                yield chunk if i == 0 else Audio(chunk.samples * np.nan, chunk.sample_rate)
            return
        if "deaf_stream" not in self.flaws:
            yield from super().stream(request)
            return
        for sentence in request.text.split(". "):
            yield super().synthesize(replace(request, text=sentence))

    def unload(self) -> None:
        if "leaky" not in self.flaws:
            super().unload()

    def memory_estimate(self) -> int:
        return 0 if "no_estimate" in self.flaws else super().memory_estimate()

    @classmethod
    def memory_needed(cls, settings, context):  # type: ignore[no-untyped-def]
        if "huge_need" in cls.flaws:  # a typo's worth of memory: no machine has it
            return MemoryNeed(ram_bytes=32 * 2**40)
        return super().memory_needed(settings, context)


@pytest.mark.parametrize(("flaw", "check"), [
    ("lax_settings", "settings: bad ones are a ValueError"),
    ("lax_options", "an unknown option is a BadRequest"),
    ("crash_on_voice", "an unknown voice is a BadRequest or ignored"),
    ("deaf_stream", "cancelling stops the stream"),
    ("leaky", "unload releases what load took"),
    ("no_estimate", "memory_estimate() fits the measured load"),
    ("nan_stream", "stream is as long as a whole synthesis"),
    ("raising_stream", "stream is as long as a whole synthesis"),
    ("huge_need", "memory_needed() fits this machine"),
])
def test_each_broken_promise_fails_its_check_and_only_that_one(flaw, check):
    backend = type("Flawed", (Sloppy,), {"flaws": frozenset({flaw})})
    report = check_backend(backend, {"memory_mb": 96})
    failed = [c.name for c in report.checks if c.ok is False]
    assert failed == [check], report.summary()
    assert not report.ok
    with pytest.raises(AssertionError, match="checks failed"):
        assert_conforms(backend, {"memory_mb": 96})


def test_a_stream_that_raises_or_turns_nan_fails_one_check_and_skips_the_cancel_check():
    for flaw, detail in (("raising_stream", "RuntimeError: the stream fell over"),
                         ("nan_stream", "chunk 2: samples contain NaN or infinity")):
        backend = type("Flawed", (Sloppy,), {"flaws": frozenset({flaw})})
        checks = {c.name: c for c in check_backend(backend).checks}
        stream, cancel = (checks["stream is as long as a whole synthesis"],
                          checks["cancelling stops the stream"])
        assert stream.ok is False and stream.detail == detail
        assert cancel.ok is None
        assert cancel.detail == "the stream check failed, so there is none to cancel"


def test_a_claim_no_machine_has_does_not_conform():
    backend = type("Flawed", (Sloppy,), {"flaws": frozenset({"huge_need"})})
    check = check_backend(backend).checks[-1]
    assert check.name == "memory_needed() fits this machine" and check.ok is False
    assert check.detail.startswith("memory_needed() claims 33,554,432 MiB of RAM; this "
                                   "machine has "), check.detail
    assert check.detail.endswith(" MiB, so the host would never admit the model here")


def test_the_summary_names_every_skipped_check():
    report = check_backend(ReferenceBackend, {"max_concurrency": 1}, stream_text="One. Two.")
    assert report.ok
    assert report.summary().splitlines()[0] == (
        "backend reference: conforms; 2 skipped: cancelling stops the stream, 1 request(s) "
        "at once")


def test_a_backend_that_does_not_load_stops_the_check_there():
    report = check_backend(ReferenceBackend, {"model_file": "/nonexistent/weights.toml"})
    assert report.checks[-1].name == "load and warm-up" and report.checks[-1].ok is False
    assert "FileNotFoundError" in report.checks[-1].detail


@pytest.mark.parametrize(("hang_on", "check", "step"), [
    ("load", "load and warm-up", "load"),
    ("warmup", "load and warm-up", "warm-up"),
    ("hello", "speaks language en", "synthesis"),  # "Hello, this is a test."
    ("unload", "unload", "unload"),
])
def test_a_step_past_its_deadline_fails_its_check_and_skips_the_rest(hang_on, check, step):
    report = check_backend(ReferenceBackend, {"hang_on": hang_on}, limits=HANG)
    names = [c.name for c in report.checks]
    failed = [c for c in report.checks if c.ok is False]
    assert [c.name for c in failed] == [check], report.summary()
    assert failed[0].detail.startswith(f"{step} timed out after 2 s"), failed[0].detail
    rest = report.checks[names.index(check) + 1:]
    assert rest, report.summary()  # the checks it kept from running are named, as skips
    assert all(c.ok is None and c.detail == f"not run: {step} timed out after 2 s"
               for c in rest), report.summary()
    assert names[-1] == "memory_needed() fits this machine"
    assert report.summary().startswith(f"backend reference: 1 of {len(names)} checks failed; "
                                       f"{len(rest)} skipped: ")


# --- the commands --------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None, pythonpath: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLTALK_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath),
                                                        env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "alltalk_host", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_try_takes_a_backend_from_settings_to_a_wav(tmp_path, capsys):
    out_file = tmp_path / "out.wav"
    code = cli.main(["try", "reference", "Hello there. How are you?", "--set", "pitch_hz=200",
                     "--voice", "male_01", "--stream", "-o", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    for step in ("settings", "available", "memory", "load", "warm-up", "synthesis", "stream",
                 "unload"):
        assert any(line.startswith(f"{step} ") and " ok " in line
                   for line in out.splitlines()), (step, out)
    assert "reading the model file (0%)" in out  # the load's progress
    assert "RMS" in out and "22050 Hz" in out and "chunk(s)" in out
    samples, rate = read_wav(out_file.read_bytes())
    assert rate == 22050 and len(samples) > rate


@pytest.mark.parametrize(("flaw", "step", "error"), [
    ("nan_stream", "stream", "ValueError: chunk 2: samples contain NaN or infinity"),
    ("huge_need", "memory", "ValueError: memory_needed() claims 33,554,432 MiB of RAM"),
])
def test_try_reports_bad_audio_and_an_impossible_memory_claim(tmp_path, flaw, step, error):
    backend = type("Flawed", (Sloppy,), {"flaws": frozenset({flaw})})
    lines: list[str] = []
    plan = trial.Trial(backend, {}, "One. Two. Three.", ModelContext("m", tmp_path, tmp_path),
                       stream=True, inline=True)  # a class made here: no worker can import it
    with pytest.raises(trial.StepFailed) as failed:
        trial.run(plan, lines.append)
    assert failed.value.step == step
    assert any(line.startswith(f"{step:<9} FAILED") and error in line for line in lines), lines
    assert lines[-1].startswith("unload    ok") or step == "memory"


class NanStreaming(Sloppy):
    """Importable by a worker (the classes made in tests above are not)."""

    flaws = frozenset({"nan_stream"})


def test_try_leaves_a_bad_stream_before_it_unloads_the_worker(tmp_path, caplog):
    lines: list[str] = []
    plan = trial.Trial(NanStreaming, {}, "One. Two. Three.",
                       ModelContext("m", tmp_path, tmp_path), stream=True)
    with pytest.raises(trial.StepFailed) as failed:
        trial.run(plan, lines.append)
    assert failed.value.step == "stream" and lines[-1].startswith("unload    ok"), lines
    # The stream was closed first: unload() ran in the worker rather than killing it.
    assert "still running" not in caplog.text


def test_plugin_check_takes_the_stream_text_and_the_language(capsys):
    code = cli.main(["plugin", "check", "reference", "--stream-text", "One. Two.",
                     "--language", "de", "--set", "max_concurrency=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1] == ("backend reference: conforms; 1 skipped: cancelling stops "
                                    "the stream")
    assert "2 chunks, " in out  # the stream spoke the text given
    code = cli.main(["plugin", "check", "reference", "--language", "xx"])
    out = capsys.readouterr().out
    assert code == 1 and "language 'xx' is not one of ['en', 'de', 'es', 'fr', 'it']" in out


def test_try_shows_the_failing_step_with_its_traceback(tmp_path):
    result = run_cli("try", "reference", "Hello.", "--set",
                     f"model_file=\"{tmp_path / 'missing.toml'}\"")
    assert result.returncode == 1
    assert "load      FAILED" in result.stdout
    assert "Traceback (most recent call last)" in result.stderr
    assert "FileNotFoundError" in result.stderr and "error: load failed" in result.stderr


async def test_try_takes_a_models_settings_from_a_commit(config_repo, tmp_path, capsys):
    low, high = tmp_path / "low.wav", tmp_path / "high.wav"
    for model, path in (("reference-low", low), ("reference", high)):
        assert cli.main(["try", "--model", model, "--config-repo", str(config_repo.path),
                         "Hello there", "-o", str(path)]) == 0
        assert f"model {model} at commit {config_repo.initial[:10]}" in capsys.readouterr().out
    # reference-low has pitch_hz 90, reference 140 (tests/reference_models.toml)
    assert dominant_pitch(*read_wav(low.read_bytes())) < dominant_pitch(
        *read_wav(high.read_bytes())) * 0.8


@pytest.mark.parametrize(("fault", "step", "ended"), [
    ("hang_on=\"load\"", "load", "timed out after 2 s (the worker was stopped)"),
    ("hang_on=\"warmup\"", "warm-up", "timed out after 2 s (the worker was stopped)"),
    ("hang_on=\"stuck\"", "synthesis", "timed out after 2 s (the worker was stopped)"),
    ("hang_on=\"unload\"", "unload", "timed out after 2 s (the worker was stopped)"),
    ("crash_on=\"load\"", "load", "the worker died (signal SIGSEGV)"),
    ("crash_on=\"stuck\"", "synthesis", "the worker died (signal SIGSEGV)"),
])
def test_try_stops_a_worker_that_hangs_or_crashes_and_names_the_step(fault, step, ended,
                                                                      capsys):
    code = cli.main(["try", "reference", "I am stuck.", "--set", fault, *HANG_FLAGS])
    captured = capsys.readouterr()
    assert code == 1, captured.out
    assert f"{step:<9} FAILED after " in captured.out, captured.out
    assert f"s: {ended}\n" in captured.out, captured.out
    assert f"error: {step}: {ended}" in captured.err
    if step not in ("load", "unload"):  # a loaded worker that is gone: nothing to unload
        assert "unload    skipped: the worker is gone" in captured.out


def test_try_inline_reports_a_hung_step_and_ends(tmp_path):
    result = run_cli("try", "reference", "I am stuck.", "--inline", "--set",
                     "hang_on=\"stuck\"", *HANG_FLAGS)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "in this process" in result.stdout
    assert ("synthesis FAILED after " in result.stdout
            and "s: timed out after 2 s (inline: it still runs on a thread, nothing can stop "
                "it)" in result.stdout), result.stdout
    assert "unload    skipped: synthesis still runs" in result.stdout


def test_plugin_check_ends_at_a_deadline_naming_the_step():
    result = run_cli("plugin", "check", "reference", "--set", "hang_on=\"warmup\"",
                     *HANG_FLAGS)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAIL load and warm-up") and "warm-up timed out after 2 s"
               in line for line in lines), result.stdout
    assert any(line.startswith("skip unload ") and "not run: warm-up timed out after 2 s"
               in line for line in lines), result.stdout
    assert lines[-1].startswith("backend reference: 1 of 8 checks failed; 4 skipped: unload, ")


@pytest.mark.parametrize("args", [["try", "reference"], ["try", "nope", "Hi"],
                                  ["try", "--model", "x", "Hi"], ["plugin", "new", "Bad-Name"],
                                  ["plugin", "check", "nope"]])
def test_mistakes_in_the_authors_commands_are_one_line(args):
    result = run_cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["try", "reference", "Hi", "--load-timeout", "0"],
     "--load-timeout: 0.0 is not a number above 0 up to 86400"),
    (["try", "reference", "Hi", "--request-timeout", "1e9"],
     "--request-timeout: 1000000000.0 is not a number above 0 up to 86400"),
    (["plugin", "check", "reference", "--char-timeout", "nan"],
     "--char-timeout: nan is not a number from 0 up to 60"),
    (["plugin", "check", "reference", "--unload-timeout", "soon"],
     "--unload-timeout: expected seconds (a number), not 'soon'"),
])
def test_deadline_flags_refuse_what_the_workers_settings_refuse(capsys, args, says):
    # A deadline of 0 would end every step at once and report the backend as hanging.
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_plugin_new_writes_a_distribution_that_installs_lists_and_conforms(tmp_path):
    """The scaffold, as an author uses it: written, installed, listed, checked, tested."""
    dest = tmp_path / "alltalk-host-mytts"
    result = run_cli("plugin", "new", "mytts", str(dest))
    assert result.returncode == 0, result.stderr
    assert "pip install -e" in result.stdout
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "README.md", "alltalk_host_mytts/__init__.py", "pyproject.toml",
        "tests/test_mytts.py"]
    # Installed as pip installs it (not editable here: the shared environment stays as it is).
    site = tmp_path / "site"
    build = tmp_path / "build"
    shutil.copytree(dest, build)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target",
                    str(site), str(build)], check=True, capture_output=True, timeout=300)
    listed = run_cli("plugins", pythonpath=site)
    assert "mytts            loaded   alltalk-host-mytts 0.1.0  backends: mytts" in listed.stdout
    checked = run_cli("plugin", "check", "mytts", pythonpath=site)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "backend mytts: conforms" in checked.stdout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), os.environ.get("PYTHONPATH", "")])}
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=dest, env=env, capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0 and "1 passed" in tested.stdout, tested.stdout
    again = run_cli("plugin", "new", "mytts", str(dest))
    assert again.returncode == 2 and "not empty" in again.stderr


def test_plugin_check_exits_non_zero_naming_the_failed_check(tmp_path):
    site = tmp_path / "site"
    (site / "sloppy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "sloppy_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sloppy-plugin\nVersion: 0.1\n")
    (site / "sloppy_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[alltalk_host]\nsloppy = sloppy_plugin\n")
    (site / "sloppy_plugin.py").write_text(
        "from alltalk_host import hookimpl\n"
        "from alltalk_host_reference import ReferenceBackend\n"
        "class Deaf(ReferenceBackend):\n"
        "    name = 'sloppy'\n"
        "    def stream(self, request):\n"
        "        for s in request.text.split('. '):\n"
        "            yield self.synthesize(type(request)(text=s))\n"
        "@hookimpl\n"
        "def alltalk_host_register_backends(register):\n"
        "    register(Deaf)\n")
    result = run_cli("plugin", "check", "sloppy", "--set", "pitch_hz=150", pythonpath=site)
    assert result.returncode == 1
    assert "FAIL cancelling stops the stream" in result.stdout
    assert "backend sloppy: 1 of" in result.stdout

