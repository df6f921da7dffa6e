"""Logging: human-readable lines by default, or one JSON object per line for log pipelines.

Every record logged while a request is handled carries that request's id (``request_id``),
taken from its ``X-Request-Id`` header or made up, so the lines of one request can be found
together. The JSON form comes from python-json-logger.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

REQUEST_ID: ContextVar[str | None] = ContextVar("alltalk_request_id", default=None)
FORMATS = ("text", "json")
_GIVEN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what a client's X-Request-Id may be


def request_id(given: str | None) -> str:
    """The client's id when it is a sane token, else a new one (never echo arbitrary text)."""
    if given and _GIVEN_ID.match(given):
        return given
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class _TextFormatter(logging.Formatter):
    """The default line, with the request's id at its end when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [request {rid}]" if rid else line


def configure(level: str = "info", fmt: str = "text") -> None:
    """Set up the root logger for ``alltalk-host serve``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}", style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
