"""Logs: one JSON object per line with the request id, an access log naming the model and commit
that served each answer, and never the text that was spoken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from tools.server import Server, free_port

from .helpers import ROOT

SECRET_TEXT = "Meet me at the old mill at midnight"


def request(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
        return resp


def test_json_logs_carry_the_request_id_and_the_access_log_says_what_served(
        config_repo, tmp_path):
    log = tmp_path / "server.log"
    with log.open("wb") as output, Server(
            config_repo.path, tmp_path / "state", log_level="info", args=["--log-format", "json"],
            env={"ALLTALK_OUTPUTS__DIR": str(tmp_path / "outputs")}, output=output) as server:
        base = server.base
        resp = request(f"{base}/tts", json.dumps({"text": SECRET_TEXT}).encode(),
                       {"Content-Type": "application/json", "X-Request-Id": "req-42"})
        assert resp.headers["X-Request-Id"] == "req-42"
        generated = request(f"{base}/health/live").headers["X-Request-Id"]
        assert len(generated) == 32
        query = urllib.parse.urlencode({"text": SECRET_TEXT, "voice": "female_01"})
        request(f"{base}/api/tts-generate-streaming?{query}", headers={"X-Request-Id": "req-43"})
        bad = json.dumps({"commit": "nope"}).encode()
        try:
            request(f"{base}/control/config/apply", bad,
                    {"Content-Type": "application/json", "X-Request-Id": "req-44"})
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        time.sleep(0.3)  # let the access log lines of the last answers be written
    out = log.read_text()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    tts = next(r for r in records if r.get("request_id") == "req-42"
               and r["logger"] == "alltalk_host.access")
    assert tts["route"] == "/tts" and tts["status"] == 200 and tts["model"] == "reference"
    assert tts["generation"] == 1 and tts["commit"] == config_repo.head
    assert tts["duration_s"] > 0 and tts["method"] == "POST"
    stream = next(r for r in records if r.get("request_id") == "req-43"
                  and r["logger"] == "alltalk_host.access")
    assert stream["path"] == "/api/tts-generate-streaming"  # no query: the text stays out
    failed = [r for r in records if r.get("request_id") == "req-44"]
    assert any(r["logger"] == "alltalk_host.change.control" and r["level"] == "WARNING"
               for r in failed), failed
    # The text spoken never reaches the log, in a body or in a query string.
    assert "old mill" not in out and "old+mill" not in out and "old%20mill" not in out


def test_text_logs_stay_readable_and_a_bad_format_is_one_line(config_repo, tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALLTALK_")}
    refused = subprocess.run(
        [sys.executable, "-m", "alltalk_host", "serve", "--config-repo", str(config_repo.path),
         "--state-dir", str(tmp_path / "state"), "--port", str(free_port())],
        env={**environ, "ALLTALK_LOG_FORMAT": "xml"}, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=60)
    assert refused.returncode == 2
    out = refused.stdout
    assert out.strip() == "error: the log format is text or json, not 'xml' (ALLTALK_LOG_FORMAT)"
    log = tmp_path / "server.log"
    with log.open("wb") as output, Server(config_repo.path, tmp_path / "state",
                                          log_level="info", output=output) as server:
        request(f"{server.base}/health/live", headers={"X-Request-Id": "abc"})
        time.sleep(0.3)
    out = log.read_text()
    line = next(li for li in out.splitlines() if "GET /health/live 200" in li)
    assert line.endswith("[request abc]") and not line.startswith("{")
