"""Errors meant for users: each carries a stable code, a message and an HTTP-like status.

Front-ends render them in one place; everything else that escapes is an internal error whose
details go to the log, never to the client.
"""

from __future__ import annotations

from typing import Any

# Text with no letter or digit: the host refuses it before a model runs, and the client-facing
# routes answer it with short silence (front-ends test for this code).
NOTHING_TO_SPEAK = "nothing_to_speak"


class HostError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class BadRequest(HostError):
    status = 400
    code = "bad_request"


class Unauthorized(HostError):
    status = 401
    code = "unauthorized"


class Forbidden(HostError):
    status = 403
    code = "forbidden"


class NotFound(HostError):
    status = 404
    code = "not_found"


class Conflict(HostError):
    status = 409
    code = "conflict"


class PayloadTooLarge(HostError):
    status = 413
    code = "body_too_large"


class UnsupportedMediaType(HostError):
    """A body of a type the route does not read (e.g. text/plain sent to a JSON route)."""

    status = 415
    code = "unsupported_media_type"


class ConfigInvalid(HostError):
    """A commit's configuration cannot be loaded or does not validate."""

    status = 422
    code = "config_invalid"


class ApplyFailed(HostError):
    """A valid configuration whose models failed to load or warm up."""

    status = 422
    code = "apply_failed"


class Unavailable(HostError):
    status = 503
    code = "unavailable"


class OutputsUnwritable(HostError):
    """The outputs folder cannot take a file (read-only, full, or not a folder)."""

    status = 507
    code = "outputs_unwritable"


class PluginConflict(Exception):
    """Two plugins register backends with one name: a startup error, never a client error."""
