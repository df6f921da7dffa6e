"""``alltalk-host ray``: run the fleet on Ray Serve. ``deploy`` starts or updates the
application, ``apply`` rolls a commit out, ``rollback`` goes back to the previous known-good
commit, ``status`` and ``log`` show the replicas and the fleet's marks on the branch; ``local``
runs a one-machine cluster in the foreground.

All but ``local`` talk HTTP to Ray's REST API and the Serve proxy (``ray/rollout.py``), so
they need no Ray in this process. What was deployed (``FleetSpec``) is read back from Ray and
the fleet's ledger from the cluster's board, so any machine that reaches the cluster runs the
later commands with nothing but the cluster's addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..ray.rollout import Fleet
    from ..ray.spec import FleetSpec

from .cli_words import Progress, author, commit_line, rollout_words, short, table

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"  # Ray's own default, as `serve deploy` uses
DEFAULT_SERVE = "http://127.0.0.1:8000"
INSTALL = "pip install 'alltalk-host[ray]'"


def add_commands(sub: Any) -> None:
    """The ``ray`` group, added to the CLI's subparsers."""
    ray = sub.add_parser("ray", help="run the fleet on Ray Serve (docs/scale-out.md)",
                         description="N replicas of the host on Ray Serve, each config commit "
                                     "rolled across them in place. Needs a Ray cluster "
                                     "(`alltalk-host ray local` on one machine); the commands "
                                     "talk to it over HTTP.")
    rsub = ray.add_subparsers(title="ray commands", metavar="COMMAND")

    p = _fleet(rsub.add_parser(
        "deploy", help="start or update the application",
        description="Deploy the application with COMMIT (default: the commit the fleet runs, "
                    "else the branch head), or update its replicas or resources. Ray keeps "
                    "these options; later commands (from any machine) read them from Ray."))
    p.add_argument("--remote", "--config-repo", dest="remote",
                   help="the config repo every node fetches commits from: a git URL "
                        "(https://, ssh://, git://) or a path that is the same on every node "
                        "(required the first time)")
    p.add_argument("--root", type=Path,
                   help="an absolute folder, the same on every node: replicas keep their "
                        "state and clone there, and relative models_dir and outputs.dir "
                        "resolve there (default: the state folder, made absolute)")
    p.add_argument("--models-dir", help="the replicas' models folder (absolute, or under "
                                        "--root; default: as each commit says)")
    p.add_argument("--outputs-dir", help="the replicas' outputs folder (absolute, or under "
                                         "--root; default: as each commit says)")
    p.add_argument("--max-replicas-per-node", type=int,
                   help="at most this many replicas on one machine (1: one per machine)")
    p.add_argument("--http-host", help="where Serve's proxies listen on each node (default: "
                                       "127.0.0.1; 0.0.0.0 opens them to the network)")
    p.add_argument("--http-port", type=int,
                   help="their port (default: the --serve-url port)")
    p.add_argument("--proxy-location", choices=["EveryNode", "HeadOnly"],
                   help="a proxy on every node (default) or on the head only")
    p.add_argument("--replicas", type=int, help="how many replicas (default: 2, or as before)")
    p.add_argument("--plugins", help="the plugins each replica loads, comma-separated "
                                     "(default: every installed one, or as before)")
    p.add_argument("--branch", help="the config branch (default: main, or as before)")
    p.add_argument("--subdir", help="the config folder inside the repo (default: its root)")
    p.add_argument("--num-cpus", type=float, help="CPUs per replica (default: 0.5)")
    p.add_argument("--num-gpus", type=float, help="GPUs per replica (default: none)")
    p.add_argument("--commit", help="the commit to deploy")
    p.set_defaults(func=cmd_deploy)

    p = _fleet(rsub.add_parser(
        "apply", help="roll a commit out across the replicas",
        description="Deploy COMMIT as the replicas' user_config; if any replica refuses it, "
                    "deploy the previous known-good commit again. Exits 1 if it was refused."))
    p.add_argument("commit", help="full or short hash, branch or tag")
    p.set_defaults(func=cmd_apply)

    p = _fleet(rsub.add_parser("rollback", help="go back to the previous known-good commit",
                               description="Roll the previous known-good commit out again."))
    p.set_defaults(func=cmd_rollback)

    p = _fleet(rsub.add_parser("status", help="each replica's commit, generation and state",
                               description="Ray's view of the application and each "
                                           "replica's own: commit, generations, state, last "
                                           "error."))
    p.set_defaults(func=cmd_status)

    p = _fleet(rsub.add_parser("log", help="the branch log with the fleet's marks",
                               description="The config branch's commits, marked as `config "
                                           "log` marks them, from the fleet's ledger."))
    p.add_argument("-n", type=int, default=20, help="how many commits (default: %(default)s)")
    p.set_defaults(func=cmd_log)

    p = rsub.add_parser("local", help="a Ray cluster on this machine, until Ctrl-C",
                        description="Start a Ray cluster (with Serve's proxy) on loopback and "
                                    "keep it until Ctrl-C; it stops only what it started.")
    p.add_argument("--dir", type=Path, default=Path("var/ray"),
                   help="its folder: log and token (default: %(default)s)")
    p.add_argument("--num-cpus", type=int, default=4,
                   help="CPUs Ray may hand out, a count not a limit (default: %(default)s)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="(default: %(default)s)")
    p.add_argument("--serve-port", type=int, default=8000, help="(default: %(default)s)")
    p.set_defaults(func=cmd_local)


def _fleet(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--state-dir", type=Path,
                   help="this machine's copy of the fleet's ledger and remote is in "
                        "STATE_DIR/fleet (default: ALLTALK_STATE_DIR or var/state, as `serve`)")
    p.add_argument("--json", action="store_true", help="print JSON instead of words")
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS",
                                                       DEFAULT_DASHBOARD),
                   help="Ray's dashboard (REST API) (default: RAY_DASHBOARD_ADDRESS or "
                        f"{DEFAULT_DASHBOARD})")
    p.add_argument("--serve-url", default=os.environ.get("ALLTALK_RAY_SERVE_URL",
                                                         DEFAULT_SERVE),
                   help=f"Serve's HTTP proxy (default: ALLTALK_RAY_SERVE_URL or "
                        f"{DEFAULT_SERVE})")
    p.add_argument("--token-file", type=Path,
                   help="Ray's auth token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                        "else ~/.ray/auth_token if it exists)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a rollout may take to settle (default: %(default)s)")
    return p


# --- commands ------------------------------------------------------------------------------

def cmd_deploy(args: argparse.Namespace) -> int:
    from ..apis.http_boundary import token_digest
    from ..ray import source
    from ..ray.spec import FleetSpec, RolloutError, deployed_spec

    if args.remote is not None:  # refused before anything is asked of Ray
        try:
            source.check_remote(_remote(args.remote))
        except source.SourceError as exc:
            raise SystemExit(f"error: {exc}") from None
    deployed = _talking(args, lambda: deployed_spec(args.address, _token(args)))
    try:
        spec = deployed or _new_spec(args)
        for name in ("replicas", "branch", "subdir", "max_replicas_per_node", "http_host",
                     "http_port", "proxy_location", "models_dir", "outputs_dir"):
            if getattr(args, name) is not None:
                setattr(spec, name, getattr(args, name))
        if args.remote is not None:
            spec.remote = _remote(args.remote)
        if args.root is not None:
            spec.root = args.root.resolve()
        if args.plugins is not None:
            spec.plugins = [p.strip() for p in args.plugins.split(",") if p.strip()]
        for name in ("num_cpus", "num_gpus"):
            if getattr(args, name) is not None:
                spec.ray_actor_options = {**spec.ray_actor_options, name: getattr(args, name)}
        spec.control_token_sha256 = token_digest(os.environ.get("ALLTALK_CONTROL_TOKEN"))
        spec = FleetSpec(**vars(spec))  # checked again, as changed
    except (RolloutError, source.SourceError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if spec.replicas < 1:
        raise SystemExit("error: --replicas must be at least 1")

    async def run(fleet: Fleet) -> dict[str, Any]:
        ref = args.commit or fleet.ledger.applied or fleet.declared or spec.branch
        return dict(await fleet.apply(ref, who=_who(), action="deploy"))
    return _rollout(args, run, spec=spec)


def _new_spec(args: argparse.Namespace) -> FleetSpec:
    from urllib.parse import urlsplit

    from ..ray.spec import FleetSpec

    if args.remote is None:
        raise SystemExit("error: the first deploy needs --remote (the config repo every node "
                         "fetches from: a git URL, or a path that is the same on every node)")
    port = urlsplit(args.serve_url).port or 8000
    return FleetSpec(remote=_remote(args.remote), root=(args.root or _state_dir(args)).resolve(),
                     http_port=port)


def _remote(value: str) -> str:
    """A URL as given; a path made absolute here (it must be the same on every node)."""
    if "://" in value or ":" in value.split("/", 1)[0] or value.startswith("-"):
        return value
    return str(Path(value).resolve())


def cmd_apply(args: argparse.Namespace) -> int:
    return _rollout(args, lambda fleet: fleet.apply(args.commit, who=_who()))


def cmd_rollback(args: argparse.Namespace) -> int:
    return _rollout(args, lambda fleet: fleet.rollback(who=_who()))


def cmd_status(args: argparse.Namespace) -> int:
    data = _with_fleet(args, lambda fleet: fleet.status())
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"application {data['application']}: {data['serving']} of {data['wanted']} replicas "
          f"serve the fleet's commit {short(data['applied'])} ({data['running']} running; "
          f"{args.address})")
    if data["declared"] != data["applied"]:
        print(f"Ray declares {short(data['declared'])}, not the ledger's "
              f"{short(data['applied'])}: the next `ray apply` or `ray rollback` converges")
    if data.get("ledger_not_shared"):
        print(f"note: {data['ledger_not_shared']}; this machine's copy of the ledger is shown")
    print(table(data["replicas"]) if data["replicas"] else "no replica running")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from ..change.report import marked

    async def commits(fleet: Fleet) -> list[dict[str, Any]]:
        log = await asyncio.to_thread(fleet.repo.log, args.n)
        return marked(log, fleet.ledger, fleet.ledger.applied)
    found = _with_fleet(args, commits)
    if args.json:
        print(json.dumps({"commits": found}, indent=2))
        return 0
    for c in found:
        print(commit_line(c))
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("ray") is None:
        raise SystemExit(f"error: Ray is not installed here: {INSTALL}")
    from ..ray.local import LocalCluster, free_port

    dashboard = _port_or_free(args.dashboard_port, free_port)
    serve = _port_or_free(args.serve_port, free_port)
    print(f"starting a Ray cluster in {args.dir} ({args.num_cpus} CPUs)...", file=sys.stderr)
    # A `kill` ends it as Ctrl-C does: leaving the `with` shuts the cluster down in order.
    signal.signal(signal.SIGTERM, _interrupt)
    cluster = LocalCluster(args.dir, num_cpus=args.num_cpus, dashboard_port=dashboard,
                           serve_port=serve)
    with cluster as info:
        token = args.dir / "home" / ".ray" / "auth_token"
        flags = []
        if info.dashboard != DEFAULT_DASHBOARD:
            flags.append(f"--address {info.dashboard}")
        if info.serve != DEFAULT_SERVE:
            flags.append(f"--serve-url {info.serve}")
        if info.token:
            flags.append(f"--token-file {token}")
        print(f"Ray's dashboard (REST API): {info.dashboard}\n"
              f"Serve (speech):             {info.serve}\n"
              f"log:                        {cluster.log_path}\n"
              "In another terminal:\n"
              f"  alltalk-host ray deploy --remote var/config {' '.join(flags)}\n"
              f"  curl -X POST {info.serve}/tts -H 'Content-Type: application/json' "
              "-d '{\"text\": \"Hello.\"}' -o out.wav\n"
              "Ctrl-C stops the cluster.", flush=True)
        try:
            while cluster.process is not None and cluster.process.poll() is None:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("\nstopping the cluster...", file=sys.stderr)
            return 0
    print(f"error: the cluster stopped by itself; see {cluster.log_path}", file=sys.stderr)
    return 1


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _port_or_free(port: int, free: Callable[[], int]) -> int:
    """``port`` if nothing listens there, else a free one (said on stderr)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            other = free()
            print(f"port {port} is taken; using {other}", file=sys.stderr)
            return other


# --- talking to the fleet ------------------------------------------------------------------

def _state_dir(args: argparse.Namespace) -> Path:
    from ..host import HostOptions  # the host's default, without importing it for every command

    return Path(args.state_dir or HostOptions.from_env().state_dir)


def _rollout(args: argparse.Namespace, command: Callable[[Fleet], Awaitable[dict[str, Any]]],
             spec: FleetSpec | None = None) -> int:
    """Run a rollout, its progress on stderr, the result on stdout; 1 if it failed."""
    result = _with_fleet(args, command, spec=spec, progress=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(rollout_words(result))
    return 0 if result["result"] == "applied" else 1


def _with_fleet(args: argparse.Namespace, command: Callable[[Fleet], Awaitable[Any]], *,
                spec: FleetSpec | None = None, progress: bool = False) -> Any:
    """``command`` on the fleet: ``spec`` for a deploy, else the deployed one (exit 1 when
    nothing is deployed)."""
    from ..ray.rollout import Fleet

    async def run() -> Any:
        async with Fleet(args.address, args.serve_url, _token(args), state_dir=_state_dir(args),
                         spec=spec, timeout_s=args.timeout,
                         control_token=os.environ.get("ALLTALK_CONTROL_TOKEN")) as fleet:
            if progress:
                fleet.progress = Progress(fleet.spec_.replicas)
            return await command(fleet)
    return _talking(args, run)


def _talking(args: argparse.Namespace, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` run, and a failure to reach Ray or the fleet said as an exit."""
    import aiohttp

    from ..ray.spec import NotDeployed, RolloutError

    try:
        return asyncio.run(call())
    except aiohttp.ClientConnectionError as exc:
        hint = ("start one with `alltalk-host ray local` (one machine) or `ray start --head`"
                if importlib.util.find_spec("ray") else
                f"Ray is not installed here either; {INSTALL} to start one")
        raise SystemExit(f"error: no Ray cluster at {args.address} ({exc}): {hint}, or give "
                         "its dashboard with --address") from None
    except NotDeployed as exc:
        raise SystemExit(f"error: {exc} (`alltalk-host ray deploy --remote URL --replicas N`)"
                         ) from None
    except RolloutError as exc:
        raise SystemExit(f"error: {exc}") from None


def _token(args: argparse.Namespace) -> str | None:
    """As Ray's own clients find it: the flag, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then
    ~/.ray/auth_token; none when token auth is off."""
    if args.token_file is not None:
        return args.token_file.read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def _who() -> str:
    return author()
