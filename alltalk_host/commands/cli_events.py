"""The phases of a change, printed as the server goes through them while the command waits.

A thread reads ``GET /control/events`` (Server-Sent Events) from just before the request is
sent, and prints each phase of the operation this command asked for (the first to start whose
``who`` is this command's author) to stderr, so stdout keeps the one-line result (or the JSON).
Anything wrong with the stream (an older server, a proxy that buffers it) prints nothing: the
reply still says how the change ended.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO
from urllib.parse import urlsplit

from . import cli_words

HELLO_WAIT_S = 3.0  # how long the request waits for the stream to be open
FINISH_WAIT_S = 2.0  # after the reply: time for the last phases to arrive


class _Follower(threading.Thread):
    def __init__(self, url: str, token: str | None, who: str, out: TextIO) -> None:
        super().__init__(name="alltalk-cli-events", daemon=True)
        self.url, self.token, self.who, self.out = url, token, who, out
        self.open = threading.Event()  # the stream is open (or could not be)
        self.finished = threading.Event()  # our operation is done or failed
        self.conn: http.client.HTTPConnection | None = None
        self.op: str | None = None

    def run(self) -> None:
        try:
            self._follow()
        except (OSError, http.client.HTTPException, ValueError):
            pass  # no progress, no harm: the reply says how it ended
        finally:
            self.open.set()
            self.finished.set()

    def _follow(self) -> None:
        parts = urlsplit(self.url)
        connection = (http.client.HTTPSConnection if parts.scheme == "https"
                      else http.client.HTTPConnection)
        self.conn = connection(parts.hostname or "127.0.0.1", parts.port, timeout=HELLO_WAIT_S)
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.conn.request("GET", parts.path.rstrip("/") + "/control/events", headers=headers)
        response = self.conn.getresponse()
        if response.status != 200:
            return
        assert self.conn.sock is not None
        self.conn.sock.settimeout(None)  # quiet stretches are normal; stop() ends the wait
        for kind, data in _frames(response):
            if kind == "hello":
                self.open.set()
            elif kind == "operation" and self._ours(data):
                print(cli_words.phase(data), file=self.out, flush=True)
                # A canary's apply answers once both arms serve; its verdict comes later.
                if data.get("phase") in ("done", "failed", "canary"):
                    self.finished.set()
                    return

    def _ours(self, data: dict[str, Any]) -> bool:
        if self.op is None and data.get("phase") == "started" and data.get("who") == self.who:
            self.op = data.get("op")
        return self.op is not None and data.get("op") == self.op

    def stop(self) -> None:
        conn = self.conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read
        self.join(1.0)
        if conn is not None:
            conn.close()


def _frames(response: http.client.HTTPResponse) -> Iterator[tuple[str, dict[str, Any]]]:
    kind, data = None, ""
    while True:
        line = response.readline()
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text.startswith("event:"):
            kind = text[6:].strip()
        elif text.startswith("data:"):
            data += text[5:].strip()
        elif text == "":
            if kind is not None:
                yield kind, json.loads(data or "{}")
            kind, data = None, ""


@contextmanager
def progress(url: str, token: str | None, who: str,
             out: TextIO | None = None) -> Iterator[None]:
    """Print the phases of the change made inside the block, as they happen."""
    follower = _Follower(url, token, who, out or sys.stderr)
    follower.start()
    follower.open.wait(HELLO_WAIT_S)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # A refused change (an error reply) is exactly when its last line matters: the reply
        # can overtake the "failed" event, so wait for it as on success. An "unchanged"
        # reply had no operation at all.
        if not interrupted and follower.op is not None:
            follower.finished.wait(FINISH_WAIT_S)
        follower.stop()
