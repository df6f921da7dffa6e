"""Errors meant for users: each carries a stable code, a message and an HTTP-like status.

Front-ends render them in one place; everything else that escapes is an internal error whose
details go to the log, never to the client.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self


class Code(StrEnum):
    """Every error code a client may see, defined once. Values are the wire format."""

    # requests
    BAD_REQUEST = "bad_request"
    BAD_FIELD = "bad_field"
    MISSING_FIELD = "missing_field"
    MALFORMED_JSON = "malformed_json"
    MALFORMED_FORM = "malformed_form"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    NOTHING_TO_SAY = "nothing_to_say"
    # Text with no letter or digit: refused before a model runs; the client-compatible routes
    # answer it with short silence (they test for this code).
    NOTHING_TO_SPEAK = "nothing_to_speak"
    UNKNOWN_VOICE = "unknown_voice"
    # An upload under the name of a voice the library has (replace it with PUT)
    VOICE_EXISTS = "voice_exists"
    BAD_VOICE_FILE = "bad_voice_file"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    UNSUPPORTED_FORMAT = "unsupported_format"
    BAD_SPEED = "bad_speed"
    BAD_OPTION = "bad_option"
    # Phonemes a client sent (``phonemes`` instead of ``text``) that the model has no symbol for
    UNKNOWN_PHONEMES = "unknown_phonemes"
    BAD_FILE_NAME = "bad_file_name"
    FILE_NOT_FOUND = "file_not_found"
    NOT_CAPABLE = "not_capable"
    CANCELLED = "cancelled"
    # OpenAI's own codes, which the OpenAI-compatible routes answer with (its SDK shows them)
    INVALID_VALUE = "invalid_value"
    INVALID_TYPE = "invalid_type"
    MODEL_NOT_FOUND = "model_not_found"
    # serving
    NOT_READY = "not_ready"
    BUSY = "busy"
    UNKNOWN_MODEL = "unknown_model"
    MODEL_NOT_LOADED = "model_not_loaded"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_UNLOADED = "model_unloaded"
    # An unload asked of the default or a keep_loaded model: the commit keeps it loaded
    MODEL_PINNED = "model_pinned"
    DRAIN_DEADLINE = "drain_deadline"
    SHUTTING_DOWN = "shutting_down"
    # backend workers: a worker process that died, a call or a load past its deadline
    WORKER_CRASHED = "worker_crashed"
    BACKEND_TIMEOUT = "backend_timeout"
    # A backend's audio broke the contract's sample format (integer PCM, out of range, NaN,
    # another sample rate): refused rather than served as noise
    BAD_AUDIO = "bad_audio"
    # access
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    # config repo and commits
    NOT_A_GIT_REPO = "not_a_git_repo"
    BRANCH_NOT_FOUND = "branch_not_found"
    BAD_COMMIT_NAME = "bad_commit_name"
    UNKNOWN_COMMIT = "unknown_commit"
    AMBIGUOUS_COMMIT = "ambiguous_commit"
    WORKING_TREE_DIRTY = "working_tree_dirty"
    BRANCH_MOVED = "branch_moved"
    BRANCH_DIVERGED = "branch_diverged"
    REPO_LOCKED = "repo_locked"
    BARE_REPO = "bare_repo"
    WRONG_BRANCH = "wrong_branch"
    NOTHING_TO_COMMIT = "nothing_to_commit"
    COMMIT_REFUSED = "commit_refused"
    SETTING_OVERRIDDEN = "setting_overridden"
    FETCH_FAILED = "fetch_failed"
    PATH_EXISTS = "path_exists"
    # configuration and applying it
    CONFIG_INVALID = "config_invalid"
    CONFIG_UNREADABLE = "config_unreadable"
    INVALID_TOML = "invalid_toml"
    VALIDATION_FAILED = "validation_failed"
    UNKNOWN_BACKEND = "unknown_backend"
    APPLY_FAILED = "apply_failed"
    APPLY_IN_PROGRESS = "apply_in_progress"
    MODEL_LOAD_FAILED = "model_load_failed"
    LOAD_TIMED_OUT = "load_timed_out"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    WARMUP_FAILED = "warmup_failed"
    NO_ROLLBACK_TARGET = "no_rollback_target"
    # canaries: another change while one runs; promote/abort with none running; a commit that
    # cannot be canaried (the one serving, or a model that would have to be replaced in place)
    CANARY_IN_PROGRESS = "canary_in_progress"
    NO_CANARY = "no_canary"
    CANARY_NOT_POSSIBLE = "canary_not_possible"
    CANARY_ABORTED = "canary_aborted"
    # the HTTP boundary and the outputs folder
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    # A body that is not what its Content-Encoding says (400), or a coding not decoded (415)
    BAD_CONTENT_ENCODING = "bad_content_encoding"
    OUTPUTS_UNWRITABLE = "outputs_unwritable"
    STATE_UNWRITABLE = "state_unwritable"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    HOST_NOT_ALLOWED = "host_not_allowed"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    BODY_TIMEOUT = "body_timeout"
    # the Wyoming boundary: an event that breaks the protocol, one beyond the size limit, a
    # stream that went quiet while holding a model
    MALFORMED_EVENT = "malformed_event"
    EVENT_TOO_LARGE = "event_too_large"
    IDLE_TIMEOUT = "idle_timeout"
    # generic, per HTTP status
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"


class HostError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    code: str = Code.INTERNAL_ERROR

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

    def with_details(self, **more: Any) -> Self:
        """A new error like this one, with ``more`` added to its details (details that are not
        a dict are kept under ``errors``). An error already raised is not changed on its way up:
        whoever else holds it still sees what was raised."""
        if isinstance(self.details, dict):
            details = {**self.details, **more}
        else:
            details = more if self.details is None else {**more, "errors": self.details}
        # Not through __init__: a subclass may take other arguments (FieldError's field).
        error = type(self).__new__(type(self), *self.args)
        error.__dict__.update(self.__dict__, details=details)
        return error

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class BadRequest(HostError):
    status = 400
    code: str = Code.BAD_REQUEST


class Unauthorized(HostError):
    status = 401
    code: str = Code.UNAUTHORIZED


class Forbidden(HostError):
    status = 403
    code: str = Code.FORBIDDEN


class NotFound(HostError):
    status = 404
    code: str = Code.NOT_FOUND


class Conflict(HostError):
    status = 409
    code: str = Code.CONFLICT


class PayloadTooLarge(HostError):
    status = 413
    code: str = Code.BODY_TOO_LARGE


class RequestTimeout(HostError):
    """A client that stopped sending in the middle of its request."""

    status = 408
    code: str = Code.BODY_TIMEOUT


class UnsupportedMediaType(HostError):
    """A body of a type the route does not read (e.g. text/plain sent to a JSON route)."""

    status = 415
    code: str = Code.UNSUPPORTED_MEDIA_TYPE


class ConfigInvalid(HostError):
    """A commit's configuration cannot be loaded or does not validate."""

    status = 422
    code: str = Code.CONFIG_INVALID


class ApplyFailed(HostError):
    """A valid configuration whose models failed to load or warm up."""

    status = 422
    code: str = Code.APPLY_FAILED


class Unavailable(HostError):
    status = 503
    code: str = Code.UNAVAILABLE


class BadAudio(HostError):
    """A backend returned audio that breaks the contract (``audio.chunk_problem``): integer
    PCM, samples beyond [-1, 1], NaN or infinity, another sample rate. The host's upstream, the
    backend, failed, hence 502; the message names the model, its backend and what is wrong."""

    status = 502
    code: str = Code.BAD_AUDIO


class OutputsUnwritable(HostError):
    """The outputs folder cannot take a file (read-only, full, or not a folder)."""

    status = 507
    code: str = Code.OUTPUTS_UNWRITABLE


class StateUnwritable(HostError):
    """The state folder cannot take the state file (read-only, full, or not a folder): the
    change that needed it to be saved did not happen."""

    status = 507
    code: str = Code.STATE_UNWRITABLE


class PluginConflict(Exception):
    """Two plugins register backends with one name: a startup error, never a client error."""
