"""The plugin authors' commands: ``plugin new``, ``plugin check`` and ``try``. All local, with
no server and no config repo (``try --model`` reads one). ``try`` runs the backend in a worker
process as the host does (``--inline``: in this one); ``plugin check`` runs the conformance
kit in this process, as an author's pytest does. Both take the host's deadlines."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backend import Backend, ModelContext
from ..config.workers import value_problem
from ..errors import BadRequest, Code
from ..workers import WorkerLimits


def add_commands(sub: Any) -> None:
    """The ``plugin`` group and ``try``, added to the CLI's subparsers."""
    plugin = sub.add_parser("plugin", help="write or check a backend plugin",
                            description="Commands for plugin authors.")
    psub = plugin.add_subparsers(title="plugin commands", metavar="COMMAND")
    p = psub.add_parser("new", help="write a new plugin distribution from the template",
                        description="Write a ready-to-install plugin distribution (pyproject "
                                    "with the entry point, backend module, README, a test "
                                    "running the conformance check) into DIR.")
    p.add_argument("name", metavar="NAME", help="the backend's name (lower-case, e.g. mytts)")
    p.add_argument("dir", metavar="DIR", nargs="?", type=Path,
                   help="where to write it (default: ./alltalk-host-NAME)")
    p.set_defaults(func=cmd_new)
    p = psub.add_parser("check", help="run the conformance check against a backend",
                        description="Exercise the backend contract on a real instance: "
                                    "settings, load, warm-up, voices and languages, streaming, "
                                    "cancellation, concurrency, client errors, unload and "
                                    "memory. Exits 1 when a check fails. It runs in "
                                    "this process, as the kit does in pytest: a step past "
                                    "its deadline fails its check and the rest are skipped.")
    p.add_argument("backend", metavar="BACKEND")
    _settings_flags(p)
    _deadline_flags(p)
    p.add_argument("--stream-text", metavar="TEXT",
                   help="the text streamed and cancelled: enough for three chunks or more "
                        "(default: four short English sentences)")
    p.add_argument("--language", help="the language of the warm-up, the stream and the "
                                      "single-text checks (default: en, else the model's first)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("try", help="take one backend from settings to audio, no server",
                       description="Validate settings, check availability, load, warm up "
                                   "(the host's own check), synthesise (and stream), unload: "
                                   "each step timed, the backend in a worker process as the "
                                   "host runs it (a step past its deadline stops the worker; "
                                   "a crash ends only the worker). With --model, the model's "
                                   "settings come from a commit of a config repo.")
    p.add_argument("args", nargs="+", metavar="BACKEND TEXT",
                   help="the backend and the text (only the text with --model)")
    _settings_flags(p)
    _deadline_flags(p)
    p.add_argument("--inline", action="store_true",
                   help="run the backend in this process (for a debugger): a step past its "
                        "deadline is reported, not stopped, and a crash ends the command")
    p.add_argument("--voice", help="the voice (default: the model's default, else its first)")
    p.add_argument("--language", help="the language (default: the model's default, else en)")
    p.add_argument("--stream", action="store_true", help="also stream it, chunk by chunk")
    p.add_argument("-o", "--output", type=Path, help="write the audio to this WAV file")
    p.add_argument("--model", help="take this model's backend and settings from --config-repo")
    p.add_argument("--config-repo", type=Path, help="the config repo --model is read from")
    p.add_argument("--commit", default=None, help="commit of --config-repo (default: the "
                                                  "branch head)")
    p.set_defaults(func=cmd_try)


def _settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a model setting; VALUE is TOML (140, true, \"x\", [1, 2]) or else "
                        "a string; repeat for more")
    p.add_argument("--models-dir", type=Path, default=Path("var/models"),
                   help="relative paths in settings resolve against this (default: "
                        "%(default)s)")


def _deadline_flags(p: argparse.ArgumentParser) -> None:
    """The host's deadlines for a backend (``WorkerLimits``), refused as the ``[workers]``
    settings of the same names refuse them: a deadline of 0 would end every step at once."""
    limits = WorkerLimits()
    for flag, key, default, help_ in (
            ("--load-timeout", "load_timeout_s", limits.load_s, "seconds load() may take"),
            ("--warmup-timeout", "warmup_timeout_s", limits.warmup_s,
             "seconds the warm-up may take"),
            ("--request-timeout", "request_timeout_s", limits.request_s,
             "seconds a synthesis may take, plus --char-timeout per character of its text "
             "(a stream: each chunk)"),
            ("--char-timeout", "request_timeout_per_char_s", limits.request_per_char_s,
             "seconds a request's deadline grows per character of its text"),
            ("--unload-timeout", "unload_timeout_s", limits.unload_s,
             "seconds unload() may take")):
        p.add_argument(flag, type=_seconds(key), default=default, metavar="S",
                       help=f"{help_} (default: %(default)g)")


def _seconds(key: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected seconds (a number), not {value!r:.60}") from None
        problem = value_problem(key, seconds)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return seconds
    return parse


def _limits(args: argparse.Namespace) -> WorkerLimits:
    return WorkerLimits(load_s=args.load_timeout, warmup_s=args.warmup_timeout,
                        request_s=args.request_timeout,
                        request_per_char_s=args.char_timeout, unload_s=args.unload_timeout)


def _cache(name: str) -> Path:
    """Where derived data may be kept: the host's default cache folder, as a server uses."""
    return Path(tempfile.gettempdir()) / "alltalk-cache" / name


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadRequest(f"--set {pair!r}: expected KEY=VALUE", code=Code.BAD_REQUEST)
        try:
            settings[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip()] = value
    return settings


def _backend(name: str) -> type[Backend]:
    from ..host import HostOptions
    from ..plugins import discover

    catalog = discover(HostOptions.from_env().plugins)
    cls = catalog.get(name)
    if cls is None:
        raise BadRequest(catalog.why_missing(name) or name, code=Code.BAD_REQUEST)
    return cls


def cmd_new(args: argparse.Namespace) -> int:
    from .scaffold import names, new_plugin

    dest = new_plugin(args.name, args.dir)
    values = names(args.name)
    print(f"wrote {values['dist']} into {dest}/ (backend {args.name!r}, class "
          f"{values['cls']} in {values['package']}/__init__.py). Next:\n"
          f"  pip install -e {dest}\n"
          f"  alltalk-host plugins\n"
          f"  alltalk-host try {args.name} \"Hello there.\" -o hello.wav\n"
          f"  alltalk-host plugin check {args.name}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..testing import check_backend

    cls = _backend(args.backend)
    text = {} if args.stream_text is None else {"stream_text": args.stream_text}
    report = check_backend(cls, parse_sets(args.set), models_dir=args.models_dir,
                           language=args.language, limits=_limits(args), **text,
                           on_check=None if args.json else lambda c: print(c.line(),
                                                                          flush=True))
    if args.json:
        print(json.dumps({"backend": report.backend, "ok": report.ok,
                          "checks": [vars(c) for c in report.checks]}, indent=2))
    else:
        print(report.summary().splitlines()[0])
    return 0 if report.ok else 1


def cmd_try(args: argparse.Namespace) -> int:
    from . import trial

    if args.model:
        if len(args.args) != 1 or args.config_repo is None:
            raise BadRequest("with --model, give --config-repo and only the TEXT",
                             code=Code.BAD_REQUEST)
        plan = _from_repo(args, args.args[0])
    else:
        if len(args.args) != 2:
            raise BadRequest("give BACKEND and TEXT (or --model NAME --config-repo R and "
                             "TEXT)", code=Code.BAD_REQUEST)
        name, text = args.args
        plan = trial.Trial(_backend(name), parse_sets(args.set), text,
                           ModelContext(name, args.models_dir.resolve(), _cache(name)),
                           voice=args.voice, language=args.language, stream=args.stream)
    plan = replace(plan, limits=_limits(args), inline=args.inline)
    where = "in this process" if plan.inline else "in a worker process"
    print(f"trying backend {plan.backend.name} ({plan.backend.__module__}) {where}")
    try:
        audio = trial.run(plan, lambda line: print(line, flush=True))
    except trial.StepFailed as exc:
        if exc.ended:  # a deadline or a dead worker: no traceback of the backend's to show
            print(f"error: {exc.step}: {exc.ended}", file=sys.stderr)
            return 1
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
        print(f"error: {exc.step} failed (the traceback is above)", file=sys.stderr)
        return 1
    if args.output:
        trial.write_wav(audio, args.output)
        print(f"wrote {args.output}: {trial.describe(audio)}")
    return 0


def _from_repo(args: argparse.Namespace, text: str) -> Any:
    from ..config.loader import ConfigLoader
    from ..config.repo import ConfigRepo
    from ..host import HostOptions
    from ..plugins import discover
    from . import trial

    catalog = discover(HostOptions.from_env().plugins)
    repo = ConfigRepo(args.config_repo)
    try:
        commit = repo.resolve(args.commit or repo.branch)
        config = ConfigLoader(repo, catalog).load(commit)
    finally:
        repo.close()
    model = config.models.get(args.model)
    if model is None:
        raise BadRequest(f"commit {commit[:10]} has no model {args.model!r}; it has "
                         f"{sorted(config.models)}", code=Code.UNKNOWN_MODEL)
    cls = catalog.get(model.backend)
    if cls is None:
        raise BadRequest(model.unavailable or model.backend, code=Code.MODEL_UNAVAILABLE)
    print(f"model {model.name} at commit {commit[:10]}")
    return trial.Trial(cls, {**model.settings, **parse_sets(args.set)}, text,
                       ModelContext(model.name, config.models_dir, _cache(model.name)),
                       voice=args.voice, language=args.language, stream=args.stream,
                       warmup_text=config.warmup_text, default_language=config.default_language,
                       model=model)
