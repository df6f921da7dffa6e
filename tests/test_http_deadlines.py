"""A slow HTTP client cannot hold a connection: headers and bodies sent a byte at a time are cut
off at their deadlines, the server meanwhile serves others, and the log has no traceback.

Against a real `alltalk-host serve` (the deadlines are set where it starts aiohttp), with raw
sockets on loopback.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from alltalk_host.errors import ConfigInvalid
from alltalk_host.limits import EdgeLimits
from tools.server import Server

from .helpers import ConfigRepoHelper

DEADLINE_S = 2.0
SLACK_S = 4.0  # a generous margin for a busy machine; without the deadlines: never


@pytest.fixture
def server(config_repo: ConfigRepoHelper, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    config_repo.commit("tests: the template")
    log = tmp_path / "server.log"
    with log.open("wb") as output, Server(
            config_repo.path, tmp_path / "state", log_level="info", output=output,
            env={"ALLTALK_HTTP_HEADER_TIMEOUT_S": str(DEADLINE_S),
                 "ALLTALK_HTTP_BODY_TIMEOUT_S": str(DEADLINE_S),
                 "ALLTALK_OUTPUTS__DIR": str(tmp_path / "outputs")}) as running:
        yield running, log


def live(server: Server) -> int:
    with urllib.request.urlopen(f"{server.base}/health/live", timeout=30) as resp:
        return resp.status


def trickle(server: Server, head: bytes, byte_by_byte: bytes) -> tuple[bytes, float, int]:
    """Send ``head`` at once, then ``byte_by_byte`` a byte every 0.2 s while reading: what
    the server answered, when it closed (seconds after ``head``), and how many others it
    served meanwhile."""
    others = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(head)
        started = time.monotonic()
        conn.settimeout(0.2)
        answer = b""
        for byte in byte_by_byte:
            try:
                conn.sendall(bytes([byte]))
            except OSError:  # closed by the server
                break
            try:
                data = conn.recv(65536)
            except TimeoutError:
                others += live(server) == 200
                continue
            except OSError:
                break
            if not data:
                break
            answer += data
        else:
            raise AssertionError("the server never closed the connection")
        conn.settimeout(5)
        try:
            while data := conn.recv(65536):
                answer += data
        except OSError:
            pass
        return answer, time.monotonic() - started, others


def assert_quiet_log(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(server):
    running, log = server
    answer, took, others = trickle(running, b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                   b"X-Slow: " + b"a" * 200)
    assert took < DEADLINE_S + SLACK_S
    assert others >= 1  # the server went on serving others meanwhile
    assert b"200" not in answer
    assert live(running) == 200
    assert_quiet_log(log)


@pytest.mark.parametrize("sent", [b"", b'{"text": "'], ids=["nothing", "a start"])
def test_a_body_sent_a_byte_at_a_time_is_a_408_at_the_deadline(server, sent):
    running, log = server
    head = (b"POST /tts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + sent)
    answer, took, others = trickle(running, head, b"a" * 200)
    assert took < DEADLINE_S + SLACK_S
    assert others >= 1
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), answer[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "body_timeout"
    assert "http_body_timeout_s" in body["error"]["message"]
    assert live(running) == 200
    assert_quiet_log(log)


def test_requests_in_time_are_served_on_a_kept_alive_connection(server):
    running, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        for _ in range(2):
            conn.request("POST", "/tts", body=json.dumps({"text": "Hello."}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
            time.sleep(DEADLINE_S / 2)  # idle between requests, within the deadline
    finally:
        conn.close()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_limit_that_is_not_a_positive_number_is_refused_at_start(value):
    with pytest.raises(ConfigInvalid, match="http_body_timeout_s"):
        EdgeLimits.from_settings({"ALLTALK_HTTP_BODY_TIMEOUT_S": value}, {})


def test_limits_come_from_the_environment_before_the_host_local_file():
    limits = EdgeLimits.from_settings({"ALLTALK_WYOMING_IDLE_TIMEOUT_S": "3"},
                                      {"wyoming_idle_timeout_s": 7,
                                       "wyoming_max_event_bytes": 4096})
    assert limits.wyoming_idle_timeout_s == 3.0 and limits.wyoming_max_event_bytes == 4096
    assert EdgeLimits.from_settings({}, {}) == EdgeLimits()
