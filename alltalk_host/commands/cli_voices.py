"""``alltalk-host voices``: the voice library of a running server. ``add`` uploads a recording
(the server checks, normalises and commits it), ``replace`` gives a voice a new sample, ``mv``
renames one, ``rm`` removes one from the branch, ``list`` shows them; each change is a commit,
applied before the branch moves."""

from __future__ import annotations

import argparse
import json
import mimetypes
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import cli_words

Call = Callable[..., dict[str, Any]]
FIELDS = ("model", "language", "transcript", "source")


def add_commands(sub: Any, remote: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
                 call: Call, token: Callable[[argparse.Namespace], str | None]) -> None:
    voices = sub.add_parser("voices", help="the voice library: add, replace, rename, remove",
                            description="Voices to clone, kept in the config repo (README, "
                                        "'Voices'). Each change is a commit.")
    vsub = voices.add_subparsers(title="voices commands", metavar="COMMAND")

    def run(fn: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: fn(args, call, token)

    p = remote(vsub.add_parser("list", help="the voices of the serving commit"))
    p.set_defaults(func=run(cmd_list))
    for name, helptext in (("add", "upload FILE as voice NAME (a commit)"),
                           ("replace", "a new sample FILE for voice NAME (a commit)")):
        p = remote(vsub.add_parser(name, help=helptext,
                                   description="wav, flac, mp3, ogg/opus or m4a with 3-30 s of "
                                               "clear speech; the server trims and normalises "
                                               "it."))
        p.add_argument("name", metavar="NAME")
        p.add_argument("file", metavar="FILE", type=Path)
        for key in FIELDS:
            p.add_argument(f"--{key}", help=f"the voice's {key}")
        p.set_defaults(func=run(cmd_add if name == "add" else cmd_replace))
    p = remote(vsub.add_parser("mv", help="rename voice NAME to NEW (a commit)"))
    p.add_argument("name", metavar="NAME")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(func=run(cmd_mv))
    p = remote(vsub.add_parser("rm", help="remove voice NAME from the branch (a commit; "
                                          "history keeps it)"))
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=run(cmd_rm))


def cmd_list(args: argparse.Namespace, call: Call, token: Any) -> int:
    reply = call(args, "GET", "/control/voices")
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    if not reply["voices"]:
        print(f"no voices in the library at {reply['commit'][:10]}")
        return 0
    rows = [("voice", "length", "model", "language", "sha256", "spoken by")] + [
        (v["name"], f"{v['seconds']:g} s" if v["seconds"] else "-", v["model"] or "any",
         v["language"] or "-", v["sha256"][:12], ", ".join(v["models"]) or "-")
        for v in reply["voices"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def cmd_add(args: argparse.Namespace, call: Call, token: Any) -> int:
    return _upload(args, token, "POST", "/control/voices", {"name": args.name})


def cmd_replace(args: argparse.Namespace, call: Call, token: Any) -> int:
    return _upload(args, token, "PUT", f"/control/voices/{quote(args.name, safe='')}", {})


def cmd_mv(args: argparse.Namespace, call: Call, token: Any) -> int:
    return _done(args, call(args, "PATCH", f"/control/voices/{quote(args.name, safe='')}",
                            {"name": args.new, "author": cli_words.author()}))


def cmd_rm(args: argparse.Namespace, call: Call, token: Any) -> int:
    author = quote(cli_words.author() or "", safe="")
    return _done(args, call(args, "DELETE",
                            f"/control/voices/{quote(args.name, safe='')}?author={author}"))


def _done(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    print(json.dumps(reply, indent=2) if args.json else cli_words.change(reply))
    return 0


def _upload(args: argparse.Namespace, token: Any, method: str, path: str,
            fields: dict[str, str]) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {args.file}: {exc.strerror}") from None
    fields = {**fields, "author": cli_words.author() or "",
              **{k: getattr(args, k) for k in FIELDS if getattr(args, k)}}
    boundary = uuid.uuid4().hex
    body = bytearray()
    for key, value in fields.items():
        if value:
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n"
                     f"{value}\r\n").encode()
    kind = mimetypes.guess_type(args.file.name)[0] or "application/octet-stream"
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename="
             f"\"{quote(args.file.name)}\"\r\nContent-Type: {kind}\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if token(args):
        headers["Authorization"] = f"Bearer {token(args)}"
    request = urllib.request.Request(args.url.rstrip("/") + path, data=bytes(body),
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            reply = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc)["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": f"HTTP {exc.code}"}
        raise SystemExit(f"error ({error['code']}): {error['message']}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"error: cannot reach alltalk-host at {args.url} ({exc.reason}); "
                         "is 'alltalk-host serve' running?") from None
    return _done(args, reply)
