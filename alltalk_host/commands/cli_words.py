"""How the command line says what a running server, or a fleet's rollout, did, in words
(``--json`` prints the reply).

Replies are read defensively: a key the server does not send (an older or newer version) is
left out of the sentence rather than failing the command.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

VERBS = {"rollback": "rolled back to", "reload-model": "reloaded models at"}


def author() -> str:
    """Who a change made from the command line is recorded as."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "cli"


def short(commit: Any) -> str:
    return str(commit)[:7] if commit else "-"


def change(reply: dict[str, Any]) -> str:
    """One line for an apply, rollback, reload or switch: ``applied 3f2a9c1: test-voice
    loaded in 0.4 s, reference unloaded``."""
    commit = short(reply.get("commit"))
    if reply.get("result") == "canary":
        return canary_started(reply)
    if reply.get("result") == "unchanged":
        return f"unchanged, still serving {commit}: {reply.get('message') or 'nothing to do'}"
    verb = VERBS.get(str(reply.get("action", "")), "applied")
    plan = reply.get("plan") or {}
    loaded = reply.get("loaded") or {}
    parts = []
    for key, word in (("load", "loaded"), ("reload", "reloaded")):
        for name in plan.get(key) or ():
            seconds = loaded.get(name)
            parts.append(f"{name} {word}" + (f" in {seconds:.1f} s"
                                              if isinstance(seconds, int | float) else ""))
    parts += [f"{name} unloaded" for name in plan.get("unload") or ()]
    if not parts:
        parts.append("settings only, no model loaded")
    target = reply.get("rolled_back_to")
    if target and target != reply.get("commit"):
        # A rollback by revert: a new commit with the old configuration.
        line = f"{verb} {short(target)} (as commit {commit}): {', '.join(parts)}"
    else:
        line = f"{verb} {commit}: {', '.join(parts)}"
    duration = reply.get("duration_s")
    if isinstance(duration, int | float) and not loaded:
        line += f" ({duration:.1f} s)"
    branch = reply.get("branch")
    if isinstance(branch, dict) and branch.get("moved") is False:
        line += f"; branch {branch.get('name', '')} not moved: {branch.get('reason', '')}"
    return line


def commit_line(c: dict[str, Any]) -> str:
    """A commit of ``config log`` (and ``ray log``) with its marks, and why it failed."""
    marks = [m for m in ("serving", "known_good", "failed") if c.get(m)]
    line = f"{c['short']}  {c['date'][:19]}  {c['author']:<16} {c['message'].splitlines()[0]}"
    line = f"{line}  [{', '.join(marks)}]" if marks else line
    if c.get("failure_reason"):
        line += f"\n            failed: {c['failure_reason']}"
    return line


def phase(event: dict[str, Any]) -> str:
    """One phase of a change as it happens: ``  1.52 s  loading test-voice (last time 0.4 s)``;
    the last line says how it ended."""
    name = str(event.get("phase", ""))
    elapsed = event.get("elapsed_s")
    at = f"{elapsed:6.2f} s" if isinstance(elapsed, int | float) else " " * 8
    if name == "started":
        return f"{at}  {event.get('action', 'change')} of {short(event.get('commit'))} started"
    if name == "done":
        duration = event.get("duration_s")
        return f"{at}  done" + (f" in {duration:.2f} s" if isinstance(duration, int | float)
                                 else "")
    if name == "failed":
        serving = event.get("still_serving")
        return (f"{at}  failed: {event.get('reason', '')}"
                + (f" (still serving {short(serving)})" if serving else ""))
    words = f"{at}  {name}"
    if event.get("model"):
        words += f" {event['model']}"
        if isinstance(event.get("instances"), int) and event["instances"] > 1:
            words += f" (instance {event.get('instance')} of {event['instances']})"
    expected = event.get("expected_s")
    if isinstance(expected, int | float) and name == "loading":
        words += f" (last time {expected:.1f} s)"
    return words


def canary_started(reply: dict[str, Any]) -> str:
    """``canary 3f2a9c1 serves 10 % of requests beside 8e1d0a2 for 300 s: promoted if ...``"""
    canary = reply.get("canary") or {}
    spec = canary.get("spec") or {}

    def num(key: str) -> str:  # 10 and 10.0 alike, as a person writes them
        value = spec.get(key)
        return f"{value:g}" if isinstance(value, int | float) else "?"

    loaded = ", ".join(f"{name} loaded in {s:.1f} s" for name, s in
                       (reply.get("loaded") or {}).items() if isinstance(s, int | float))
    return (f"canary {short(reply.get('commit'))} serves {num('percent')} % of requests "
            f"beside {short(canary.get('stable'))} for {num('duration_s')} s: promoted if it "
            f"serves at least {num('min_requests')} requests with an error rate <= "
            f"{num('max_error_rate')} and a p95 time to first audio <= "
            f"{num('max_latency_ratio')} x the stable arm's, else aborted"
            + (f" ({loaded})" if loaded else " (settings only, no model loaded)"))


# --- the fleet (`alltalk-host ray`) ---------------------------------------------------------

class Progress:
    """``waiting for 2 replicas to take 3f2a9c1... 1/2`` on stderr, each time it changes."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self._last: tuple[Any, ...] | None = None

    def __call__(self, commit: str, app: str | None, replicas: list[dict[str, Any]]) -> None:
        done = sum(1 for r in replicas if r.get("target") == commit
                   and r.get("state") != "starting")
        refused = sum(1 for r in replicas if r.get("target") == commit
                      and r.get("state") == "failed")
        now = (commit, app, done, refused)
        if now == self._last:
            return
        self._last = now
        line = f"waiting for {self.replicas} replicas to take {short(commit)}... " \
               f"{done}/{self.replicas}"
        if refused:
            line += f" ({refused} refused it)"
        if app != "RUNNING":
            line += f" (Ray: {app or 'not deployed yet'})"
        print(line, file=sys.stderr, flush=True)



def table(replicas: list[dict[str, Any]]) -> str:
    """One row per replica: id, node, commit, generations, state, last error."""
    rows = [("replica", "node", "commit", "generation", "state", "last error")]
    for r in replicas:
        gens = ", ".join(f"{name} {n}" for name, n in (r.get("generations") or {}).items())
        error = r.get("last_error") or {}
        rows.append((str(r.get("replica", "?")), str(r.get("node") or "-"),
                     short(r.get("commit")), gens or "-", str(r.get("state", "?")),
                     f"{short(error.get('commit'))}: {error.get('reason', '')}" if error
                     else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True))
                     + "  " + row[5] for row in rows)


def rollout_words(result: dict[str, Any]) -> str:
    """What the rollout did, and what each replica did."""
    commit = short(result.get("commit"))
    replicas = result.get("replicas") or []
    if result.get("result") == "applied":
        lines = [f"{len(replicas)} replicas serve {commit} "
                 f"({result.get('duration_s', 0):.1f} s)", table(replicas)]
        return "\n".join(lines)
    refused = [r for r in replicas if r.get("state") == "failed"]
    took = [r for r in replicas if r.get("state") != "failed"]
    back = result.get("rolled_back_to")
    # No replica refused it: it did not finish (a timeout, Ray gave up or went away).
    lines = [f"rollout of {commit} failed: {len(refused)} of {len(replicas)} replicas "
             f"refused it" if refused else f"rollout of {commit} failed: {result.get('reason')}"]
    for r in refused:
        error = r.get("last_error") or {}
        lines.append(f"  {r.get('replica')}: refused it ({error.get('reason', '?')}), "
                     f"kept serving {short(r.get('commit'))}")
    for r in took:
        lines.append(f"  {r.get('replica')}: took it"
                     + (f", then went back to {short(back)}" if back else ""))
    if back and result.get("rollback_pending"):
        lines.append(f"rolled back to {short(back)}: Ray declares it again, but the replicas "
                     f"had not all taken it yet ({result['rollback_pending']}); see "
                     "`alltalk-host ray status`")
    elif back:
        lines.append(f"rolled back to {short(back)}; the fleet now:")
        lines.append(table(result.get("after_rollback") or []))
    else:
        lines.append("no earlier known-good commit to roll back to: fix the commit and apply "
                     "again")
    return "\n".join(lines)
