"""The ``alltalk-host`` command: serve, manage the config repo, list plugins.

``serve`` runs the server in this process. ``config init`` and ``plugins`` work locally. The
other commands talk to a running server's /control routes (``--url``, token from
``--token`` or ALLTALK_CONTROL_TOKEN), so they act on the models it has loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from .. import __version__
from ..errors import HostError, PluginConflict
from . import cli_events, cli_plugin, cli_ray, cli_voices, cli_words
from .cli_serve import cmd_serve

DEFAULT_URL = "http://127.0.0.1:7851"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (HostError, PluginConflict) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2


# --- local commands ------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    from ..config.template import init_from_template
    from ..host import HostOptions
    from ..plugins import discover

    commit, fitted = init_from_template(args.path, discover(HostOptions.from_env().plugins),
                                        args.branch, args.template)
    print(f"created config repo {args.path} (branch {args.branch}) at commit {commit}")
    for line in fitted.lines():
        print(f"  {line}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from ..host import HostOptions
    from ..plugins import discover

    catalog = discover(HostOptions.from_env().plugins)
    rows = [p.to_dict() for p in catalog.plugins]
    # Non-zero when any plugin failed, so a script or CI notices a broken install.
    failed = int(any(row["status"] == "failed" for row in rows))
    if args.json:
        print(json.dumps({"plugins": rows}, indent=2))
        return failed
    if not rows:
        print("no plugins installed (entry-point group 'alltalk_host')")
    for row in rows:
        line = f"{row['name']:<16} {row['status']:<8} {row['distribution']} {row['version']}"
        if row["backends"]:
            line += f"  backends: {', '.join(row['backends'])}"
        if row["error"]:
            line += f"  error: {row['error']}"
        print(line)
    return failed


# --- commands that call a running server ---------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    data = _call(args, "GET", "/control/status")
    if args.json:
        return _print_json(data)
    print(f"version   {data['version']}")
    print(f"serving   {data['serving_commit'] or '-'}  (env {data['env']}, "
          f"default model {data['default_model']})")
    print(f"attempted {data['attempted_commit'] or '-'}")
    if data["apply_in_progress"]:
        print(f"busy      {data['apply_in_progress']}")
    canary = data.get("canary") or {}
    if canary.get("running"):
        print(f"canary    {canary['commit']}  ({canary['spec']['percent']:g} %, "
              f"{canary['time_left_s']:.0f} s left): {canary['verdict_now']['reason']}")
    for m in data["models"]:
        gen = f"gen {m['generation']}" if "generation" in m else ""
        print(f"  {m['name']:<20} {m['state']:<10} {m.get('backend', ''):<12} {gen} "
              f"in flight {m.get('in_flight', 0)}")
    if data["last_failure"]:
        f = data["last_failure"]
        print(f"last failure: {f['commit'][:10]} {f.get('reason', '')}")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    data = _call(args, "GET", f"/control/config/commits?limit={args.n}")
    if args.json:
        return _print_json(data)
    for c in data["commits"]:
        print(cli_words.commit_line(c))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    data = _call(args, "POST", "/control/config/plan", {"commit": args.commit})
    if args.json:
        return _print_json(data)
    print(f"plan {data['from_commit'] and data['from_commit'][:10]} -> {data['commit'][:10]}")
    for key in ("load", "reload", "unload", "keep"):
        print(f"  {key:<8} {', '.join(data[key]) or '-'}")
    print(f"  runtime-only: {data['runtime_only']}")
    for change in data["changes"]:
        print(f"  {change['key']}: {change['old']!r} -> {change['new']!r}")
    for voice in data.get("voices", []):
        length = f", {voice['seconds']:g} s" if voice.get("seconds") else ""
        print(f"  voice {voice['name']}: {voice['change']} ({voice['file']}{length}, sha256 "
              f"{voice['sha256']})")
    return 0


# The canary thresholds `config apply` takes as flags (--duration-s for duration_s): each one
# implies --canary and overrides the serving commit's [canary] default.
CANARY_FLAGS = ("percent", "duration_s", "min_requests", "max_error_rate", "max_latency_ratio",
                "latency_slack_s")


def cmd_apply(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"commit": args.commit}
    overrides = {name: getattr(args, name) for name in CANARY_FLAGS
                 if getattr(args, name) is not None}
    if args.canary or overrides:
        body["canary"] = overrides or True
    return _change(args, "/control/config/apply", body)


def cmd_rollback(args: argparse.Namespace) -> int:
    return _change(args, "/control/config/rollback", {"commit": args.commit})


def cmd_reload(args: argparse.Namespace) -> int:
    return _change(args, "/control/config/reload", {
        "commit_working_tree": args.commit_working_tree, "message": args.message})


def cmd_switch(args: argparse.Namespace) -> int:
    return _change(args, "/control/models/switch", {"model": args.model})


def cmd_load(args: argparse.Namespace) -> int:
    return _residency(args, "load")


def cmd_unload(args: argparse.Namespace) -> int:
    return _residency(args, "unload")


def _residency(args: argparse.Namespace, what: str) -> int:
    """Load or unload a model on demand: not a commit, so no author and no phases."""
    reply = _call(args, "POST", f"/control/models/{quote(args.model, safe='')}/{what}", {})
    if args.json:
        return _print_json(reply)
    generation = f" (generation {reply['generation']})" if reply.get("generation") else ""
    print(f"{reply['model']} {reply['result']}{generation}; serving {reply['commit'][:10]}")
    return 0


def _change(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    """Send a change; its phases go to stderr as they happen, the result to stdout."""
    author = cli_words.author()
    with cli_events.progress(args.url, _token(args), who=author):
        reply = _call(args, "POST", path, {**body, "author": author})
    if args.json:
        return _print_json(reply)
    print(cli_words.change(reply))
    return 0


def _print_json(data: Any) -> int:
    print(json.dumps(data, indent=2))
    return 0


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("ALLTALK_CONTROL_TOKEN")


def _call(args: argparse.Namespace, method: str, path: str,
          body: dict[str, Any] | None = None) -> dict[str, Any]:
    token = _token(args)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc)["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": f"HTTP {exc.code}"}
        details = f"\n{json.dumps(error['details'], indent=2)}" if error.get("details") else ""
        raise SystemExit(f"error ({error['code']}): {error['message']}{details}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"error: cannot reach alltalk-host at {args.url} ({exc.reason}); "
                         "is 'alltalk-host serve' running?") from None


# --- argument parsing ----------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Bad flags: one line that says what is wrong and where the help is, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="alltalk-host",
        description="Text-to-speech server with plugin backends and git-versioned config.",
    )
    parser.add_argument("--version", action="version", version=f"alltalk-host {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server",
                           description="Serve speech and the control API over HTTP, and "
                                       "speech over Wyoming with --wyoming-uri.")
    serve.add_argument("--config-repo", type=Path,
                       help="the config git repo (default: ALLTALK_CONFIG_REPO or var/config)")
    serve.add_argument("--state-dir", type=Path,
                       help="where applied/failed commits are remembered (default: "
                            "ALLTALK_STATE_DIR or var/state)")
    serve.add_argument("--branch", help="the branch to serve and watch (default: main)")
    serve.add_argument("--subdir", help="the config folder inside the repo (default: its root)")
    serve.add_argument("--local-settings", type=Path,
                       help="the host-local settings file (default: <state dir>/local.toml)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=7851, help="port (default: %(default)s)")
    serve.add_argument("--behind-proxy", action="store_true", default=None,
                       help="a reverse proxy or tunnel forwards to this port: control routes "
                            "then need the control token from every client (also "
                            "ALLTALK_BEHIND_PROXY=1, or behind_proxy = true in the host-local "
                            "file)")
    serve.add_argument("--wyoming-uri", metavar="URI",
                       help="also serve the Wyoming protocol (Home Assistant) on tcp://HOST:PORT "
                            "or unix://PATH (default: ALLTALK_WYOMING_URI; off when unset)")
    serve.add_argument("--wyoming-zeroconf", nargs="?", const="alltalk-host", metavar="NAME",
                       help="announce the Wyoming server on the local network (mDNS "
                            "_wyoming._tcp) as NAME (default: %(const)s; env "
                            "ALLTALK_WYOMING_ZEROCONF=NAME); needs the zeroconf extra")
    serve.add_argument("--init-config", action="store_true",
                       help="create the config repo from the template if it does not exist")
    serve.add_argument("--template", type=Path, help=argparse.SUPPRESS)
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["text", "json"],
                       default=os.environ.get("ALLTALK_LOG_FORMAT", "text"),
                       help="text lines, or one JSON object per line with the request id "
                            "(default: ALLTALK_LOG_FORMAT or text)")
    serve.set_defaults(func=cmd_serve)

    plugins = sub.add_parser("plugins", help="list installed backend plugins",
                             description="List plugins found in entry-point group "
                                         "'alltalk_host', with any load errors.")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=cmd_plugins)
    cli_plugin.add_commands(sub)
    cli_ray.add_commands(sub)

    config = sub.add_parser("config", help="manage the config repo",
                            description="Create the config repo, or inspect and apply its "
                                        "commits on a running server.")
    csub = config.add_subparsers(title="config commands", metavar="COMMAND")
    init = csub.add_parser("init", help="create a config repo from the template",
                           description="Create a git config repo at PATH from the template, "
                                       "with an initial commit.")
    init.add_argument("path", type=Path, metavar="PATH")
    init.add_argument("--branch", default="main", help="initial branch (default: %(default)s)")
    init.add_argument("--template", type=Path,
                      help="template folder (default: the one shipped with alltalk-host)")
    init.set_defaults(func=cmd_init)

    def remote(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", default=os.environ.get("ALLTALK_URL", DEFAULT_URL),
                       help="the server (default: ALLTALK_URL or %(default)s)")
        p.add_argument("--token", help="control token (default: ALLTALK_CONTROL_TOKEN)")
        p.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
        p.add_argument("--json", action="store_true",
                       help="print the server's JSON reply instead of words")
        return p

    p = remote(csub.add_parser("log", help="the branch log with applied/good/failed marks",
                               description="Show the config branch's commits with marks."))
    p.add_argument("-n", type=int, default=20, help="how many commits (default: %(default)s)")
    p.set_defaults(func=cmd_log)
    p = remote(csub.add_parser("plan", help="what applying a commit would change",
                               description="Diff a commit against the applied one; changes "
                                           "nothing."))
    p.add_argument("commit", help="full or short hash, branch or tag")
    p.set_defaults(func=cmd_plan)
    p = remote(csub.add_parser("apply", help="apply a commit",
                               description="Load what the commit changes beside the serving "
                                           "models, warm up, then switch."))
    p.add_argument("commit", help="full or short hash, branch or tag")
    p.add_argument("--canary", action="store_true",
                   help="serve it to a share of requests first; promoted or aborted by what it "
                        "did (docs/canary.md; defaults from the serving commit's [canary])")
    p.add_argument("--percent", type=float, help="the canary's share of requests (implies "
                                                 "--canary)")
    p.add_argument("--duration-s", type=float, help="how long the canary runs before it is "
                                                    "judged (implies --canary)")
    p.add_argument("--min-requests", type=int, help="requests the canary must serve to be "
                                                    "judged (implies --canary)")
    p.add_argument("--max-error-rate", type=float, help="the highest share of its requests "
                                                        "that may fail (implies --canary)")
    p.add_argument("--max-latency-ratio", type=float,
                   help="its p95 time to first audio, at most this times the stable arm's "
                        "(implies --canary)")
    p.add_argument("--latency-slack-s", type=float,
                   help="a p95 at most this many seconds above the stable arm's passes "
                        "whatever the ratio (implies --canary)")
    p.set_defaults(func=cmd_apply)
    p = remote(csub.add_parser("rollback", help="go back to a known-good commit",
                               description="Apply COMMIT, or the previous known-good commit; "
                                           "automatic apply then pauses until a new commit."))
    p.add_argument("commit", nargs="?", help="default: the previous known-good commit")
    p.set_defaults(func=cmd_rollback)
    p = remote(csub.add_parser("reload", help="apply the branch head",
                               description="Apply the branch head; with uncommitted changes, "
                                           "refuse unless --commit-working-tree."))
    p.add_argument("--commit-working-tree", action="store_true",
                   help="commit uncommitted changes first (you as author)")
    p.add_argument("-m", "--message", help="commit message for --commit-working-tree")
    p.set_defaults(func=cmd_reload)
    p = remote(csub.add_parser("status", help="what the server is serving",
                               description="Applied and attempted commit, models, watch."))
    p.set_defaults(func=cmd_status)

    models = sub.add_parser("models", help="switch the default model, load or unload one",
                            description="Model commands on a running server.")
    msub = models.add_subparsers(title="models commands", metavar="COMMAND")
    p = remote(msub.add_parser("switch", help="make MODEL the default (a commit, then apply)",
                               description="Write a commit setting default_model, then apply "
                                           "it."))
    p.add_argument("model")
    p.set_defaults(func=cmd_switch)
    p = remote(msub.add_parser("load", help="load MODEL now, as a request naming it would",
                               description="Load a configured model before traffic needs it "
                                           "(not a commit; it unloads when idle)."))
    p.add_argument("model")
    p.set_defaults(func=cmd_load)
    p = remote(msub.add_parser("unload", help="unload MODEL, loaded on demand",
                               description="Unload a model loaded on demand once its requests "
                                           "finish (not a commit)."))
    p.add_argument("model")
    p.set_defaults(func=cmd_unload)
    cli_voices.add_commands(sub, remote, _call, _token)
    return parser


if __name__ == "__main__":
    sys.exit(main())
