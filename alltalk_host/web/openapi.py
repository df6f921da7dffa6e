"""The HTTP API described (OpenAPI 3.1) at ``/openapi.json``, and readable at ``/docs``.

Written here, next to the routes, as data: a test compares it with the app's route table both
ways (a route cannot be added without being described), and schemathesis throws generated
requests at a live server and checks every answer against it. ``/docs`` is a plain page
generated from the same data, with no CDN.
"""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from .. import __version__

routes = web.RouteTableDef()

ERROR = {"$ref": "#/components/schemas/Error"}
OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}
ALLTALK_FAILURE = {"$ref": "#/components/schemas/AllTalkFailure"}
OBJECT: dict[str, Any] = {"type": "object"}
REASONS = {
    200: "OK", 202: "Accepted", 400: "Bad input", 401: "No or wrong control token",
    403: "Refused: not loopback, another origin or host name", 404: "Not found",
    409: "Conflict with the current state", 413: "Body larger than http.max_body_bytes",
    415: "Body of the wrong content type", 422: "The configuration or a model failed",
    502: "The backend returned audio that breaks the contract (bad_audio)",
    503: "Not ready, busy, or ended at a drain deadline", 507: "The outputs folder is unusable",
}
# GET / and GET /ui answer a redirect; a client that follows it gets the page.
UI_REDIRECT: dict[str, Any] = {
    "302": {"description": "To /ui/", "headers": {"Location": {"schema": {"type": "string"}}}},
    "200": {"description": "The page, once the redirect is followed",
            "content": {"text/html": {"schema": {"type": "string"}}}}}
UI_TYPES = ("text/html", "text/javascript", "text/css", "image/svg+xml")
AUDIO_TYPES = ("audio/wav", "audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/pcm")


def _errors(codes: tuple[int, ...], schema: dict[str, Any] = ERROR) -> dict[str, Any]:
    return {str(c): {"description": REASONS[c],
                     "content": {"application/json": {"schema": schema}}} for c in codes}


def _ok(content_type: str = "application/json", schema: dict[str, Any] | None = None,
        status: int = 200, description: str = "OK") -> dict[str, Any]:
    body = {"schema": schema if schema is not None else
            ({"type": "string"} if not content_type.endswith("json") else OBJECT)}
    return {str(status): {"description": description, "content": {content_type: body}}}


def _audio(description: str, types: tuple[str, ...] = ("audio/wav",)) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"}
    headers = {"X-AllTalk-Commit": {"description": "the config commit that served it",
                                    "schema": {"type": "string"}},
               "X-AllTalk-Model": {"description": "model; generation=N",
                                   "schema": {"type": "string"}},
               "X-AllTalk-Arm": {"description": "canary when a running canary served it, "
                                                "else stable",
                                 "schema": {"type": "string", "enum": ["stable", "canary"]}}}
    return {"200": {"description": description, "headers": headers,
                    "content": {t: {"schema": schema} for t in types}}}


def _json_body(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return {"required": bool(required),
            "content": {"application/json": {"schema": schema}}}


def _form_body(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": schema},
        "multipart/form-data": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str = "",
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
            "description": description}


S, N, B = {"type": "string"}, {"type": "number"}, {"type": "boolean"}
AUTHOR = {"type": "string", "description": "recorded in the history; the git author of a "
                                           "commit the host writes"}
SPEAK = {"text": S, "model": S, "voice": S, "language": S, "speed": N,
         "options": {"type": "object", "description": "the backend's own parameters"},
         "phonemes": {"type": "string", "description": "instead of text: the model's own "
                                                        "phoneme symbols, as written"}}
ALLTALK_FORM = {name: S for name in (
    "text_input", "text_filtering", "character_voice_gen", "narrator_enabled",
    "narrator_voice_gen", "text_not_inside", "language", "output_file_name",
    "output_file_timestamp", "autoplay", "autoplay_volume", "speed", "temperature",
    "repetition_penalty", "pitch", "streaming", "rvccharacter_voice_gen", "rvccharacter_pitch",
    "rvcnarrator_voice_gen", "rvcnarrator_pitch")}
STREAM_FIELDS = {"text": S, "voice": S, "language": S, "output_file": S}
CANARY = {"oneOf": [
    {"type": "boolean", "description": "true: a canary with the [canary] defaults"},
    {"type": "object", "additionalProperties": False,
     "description": "a canary with some of the [canary] defaults overridden",
     "properties": {
         "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
         "duration_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 86400},
         "min_requests": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
         "max_error_rate": {"type": "number", "minimum": 0, "maximum": 1},
         "max_latency_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
         "latency_slack_s": {"type": "number", "minimum": 0, "maximum": 60}}}]}
CONTROL_ERRORS = (401, 403)
JSON_CONTROL_ERRORS = (400, 401, 403, 413, 415)


def _op(summary: str, tag: str, responses: dict[str, Any], *, control: bool = False,
        body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        description: str = "") -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        operation["description"] = description
    if body is not None:
        operation["requestBody"] = body
    if params:
        operation["parameters"] = params
    if control:
        # A token when one is configured; without one, loopback clients need none.
        operation["security"] = [{"controlToken": []}, {}]
    return operation


# Every speech route takes it; any other value is no preference.
ARM = {"name": "X-AllTalk-Canary", "in": "header", "required": False, "schema": S,
       "description": "while a canary runs: canary or stable sends the request to that arm"}


VOICE_UPLOAD = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream",
                            "description": "wav, flac, mp3, ogg/opus or m4a; 3-30 s of speech"},
                   "name": S, "model": S, "language": S, "transcript": S, "source": S,
                   "author": AUTHOR}}}}}


def _paths() -> dict[str, dict[str, Any]]:
    speech = (400, 404, 409, 413, 502, 503)
    return {
        "/": {"get": _op("Sends browsers to the web UI", "ui", UI_REDIRECT)},
        "/ui": {"get": _op("Sends browsers to the web UI", "ui", UI_REDIRECT)},
        "/ui/": {"get": _op("The web UI's page", "ui", _ok("text/html"))},
        "/ui/{name}": {"get": _op(
            "The web UI's scripts, styles and images", "ui",
            {"200": {"description": "The file", "content": {
                t: {"schema": {"type": "string"}} for t in UI_TYPES}}, **_errors((404,))},
            params=[_path("name", "a file of the page, e.g. app.js")])},
        "/tts": {"post": _op(
            "Speak text (the native route)", "speech",
            {**_audio("16-bit PCM WAV"), **_errors(speech)},
            body=_json_body(SPEAK, ("text",)), params=[ARM],
            description="Text with nothing to speak is 400 nothing_to_speak.")},
        "/tts/models": {"get": _op(
            "What /tts may be asked for: models, their state, voices, languages, options",
            "speech", _ok())},
        "/health/live": {"get": _op("200 while the process runs", "health", _ok())},
        "/health/ready": {"get": _op("200 once the default model serves", "health",
                                     {**_ok(), **_ok(status=503, description="not ready")})},
        "/health/models/{name}": {"get": _op(
            "One model's health", "health",
            {**_ok(), **_ok(status=503, description="loading, not loaded, unavailable, or its "
                                                    "workers restarting or failed"),
             **_errors((404,))}, params=[_path("name", "a configured model")])},
        "/api/ready": {"get": _op("AllTalk: Ready or Unloaded", "alltalk",
                                  _ok("text/plain"))},
        "/api/voices": {"get": _op("AllTalk: the default model's voices", "alltalk",
                                   {**_ok(), **_errors((503,))})},
        "/api/rvcvoices": {"get": _op("AllTalk: RVC voices (none)", "alltalk", _ok())},
        "/api/currentsettings": {"get": _op("AllTalk: engine, models and capabilities",
                                            "alltalk", {**_ok(), **_errors((503,))})},
        "/api/tts-generate": {"post": _op(
            "AllTalk: generate a file (narrator mode too)", "alltalk",
            {**_ok(), **_errors((400, 404, 409, 413, 502, 503, 507), ALLTALK_FAILURE)},
            body=_form_body(ALLTALK_FORM, ("text_input",)), params=[ARM])},
        "/api/previewvoice/": {"post": _op(
            "AllTalk: a voice preview file", "alltalk",
            {**_ok(), **_errors((400, 404, 409, 413, 502, 503, 507), ALLTALK_FAILURE)},
            body=_form_body({"voice": S}, ("voice",)), params=[ARM])},
        "/api/tts-generate-streaming": {
            "get": _op("AllTalk: stream WAV as sentences complete", "alltalk",
                       {**_audio("WAV header, then PCM"),
                        **_errors((400, 404, 409, 502, 503), ALLTALK_FAILURE)},
                       params=[*(_query(k, v, required=k == "text")
                                 for k, v in STREAM_FIELDS.items()), ARM]),
            "post": _op("AllTalk: stream WAV as sentences complete (form)", "alltalk",
                        {**_audio("WAV header, then PCM"),
                         **_errors((400, 404, 409, 413, 502, 503), ALLTALK_FAILURE)},
                        body=_form_body(STREAM_FIELDS, ("text",)), params=[ARM])},
        "/audio/{name}": {"get": _op("A generated file", "alltalk",
                                     {**_audio("the file"), **_errors((404, 503))},
                                     params=[_path("name", "as output_file_url names it")])},
        "/audiocache/{name}": {"get": _op("A generated file, cacheable for good", "alltalk",
                                          {**_audio("the file"), **_errors((404, 503))},
                                          params=[_path("name", "as named by the reply")])},
        "/v1/audio/speech": {"post": _op(
            "OpenAI: speech, streamed in the requested format", "openai",
            {**_audio("audio", AUDIO_TYPES),
             **_errors((400, 404, 409, 413, 502, 503), OPENAI_ERROR)},
            body=_json_body({"model": S, "input": S, "voice": S, "response_format": {
                "type": "string", "enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"]},
                "speed": N, "stream_format": S, "instructions": S},
                ("model", "input", "voice")), params=[ARM])},
        "/v1/audio/voices": {"get": _op(
            "OpenAI-style voice list of a model", "openai",
            {**_ok(), **_errors((404, 409, 503), OPENAI_ERROR)}, params=[_query("model", S)])},
        "/v1/audio/models": {"get": _op("Models for Open WebUI", "openai", _ok())},
        "/v1/models": {"get": _op("OpenAI-style model list", "openai", _ok())},
        "/hooks/git": {"post": _op(
            "A forge's signed push event: apply the branch head now", "control",
            {**_ok(status=202, description="accepted or ignored"),
             **_errors((400, 401, 404, 413))},
            body={"required": True, "content": {"application/json": {"schema": OBJECT}}},
            description="GitHub (X-Hub-Signature-256), Gitea/Forgejo (X-Gitea-Signature), "
                        "GitLab (X-Gitlab-Token). 404 when no webhook secret is set.")},
        **_control_paths(),
    }


def _control_paths() -> dict[str, dict[str, Any]]:
    change = _errors((*JSON_CONTROL_ERRORS, 404, 409, 422))
    return {
        "/control/status": {"get": _op("What serves: commits, models, plugins, watch",
                                       "control", {**_ok(), **_errors(CONTROL_ERRORS)},
                                       control=True)},
        "/control/plugins": {"get": _op("Plugins found, with load errors", "control",
                                        {**_ok(), **_errors(CONTROL_ERRORS)}, control=True)},
        "/control/config/commits": {"get": _op(
            "The branch log, marked applied, known-good, failed", "control",
            {**_ok(), **_errors((400, *CONTROL_ERRORS))}, control=True,
            params=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})])},
        "/control/config/effective": {"get": _op(
            "Effective settings with each key's layer, secrets redacted", "control",
            {**_ok(), **_errors((*CONTROL_ERRORS, 503))}, control=True)},
        "/control/config/plan": {"post": _op(
            "What applying a commit would change; changes nothing", "control",
            {**_ok(), **change}, control=True, body=_json_body({"commit": S}, ("commit",)))},
        "/control/config/apply": {"post": _op(
            "Apply a commit, or canary it", "control", {**_ok(), **change}, control=True,
            body=_json_body({"commit": S, "author": AUTHOR, "canary": CANARY}, ("commit",)),
            description="With canary, the commit serves a share of requests beside the "
                        "serving one and is promoted or aborted at the end of its duration "
                        "by what it did (docs/canary.md). 409 canary_in_progress while one "
                        "runs.")},
        "/control/canary": {"get": _op(
            "The canary in progress (arms, counts, rates, time left), or how the last ended",
            "control", {**_ok(), **_errors(CONTROL_ERRORS)}, control=True)},
        "/control/canary/promote": {"post": _op(
            "Promote the canary now: it becomes the applied commit", "control",
            {**_ok(), **_errors((*JSON_CONTROL_ERRORS, 409))}, control=True,
            body=_json_body({"author": AUTHOR}),
            description="409 no_canary when none is in progress.")},
        "/control/canary/abort": {"post": _op(
            "Abort the canary now: its commit is failed, the stable one serves on", "control",
            {**_ok(), **_errors((*JSON_CONTROL_ERRORS, 409))}, control=True,
            body=_json_body({"author": AUTHOR}),
            description="409 no_canary when none is in progress.")},
        "/control/config/reload": {"post": _op(
            "Apply the branch head", "control", {**_ok(), **change}, control=True,
            body=_json_body({"commit_working_tree": B, "message": S, "author": AUTHOR}))},
        "/control/config/rollback": {"post": _op(
            "Back to a commit, by default as a revert commit on the branch", "control",
            {**_ok(), **change}, control=True,
            body=_json_body({"commit": S, "revert": B, "author": AUTHOR}))},
        "/control/models/switch": {"post": _op(
            "Make a model the default: a commit, applied, then on the branch", "control",
            {**_ok(), **change}, control=True,
            body=_json_body({"model": S, "author": AUTHOR}, ("model",)))},
        "/control/models/switch/plan": {"post": _op(
            "What switching the default model would change; changes nothing", "control",
            {**_ok(), **change}, control=True, body=_json_body({"model": S}, ("model",)))},
        "/control/models/{name}/reload": {"post": _op(
            "Load a model again from disk at the serving commit", "control",
            {**_ok(), **change}, control=True, body=_json_body({"author": AUTHOR}),
            params=[_path("name", "a loaded model")])},
        "/control/models/{name}/load": {"post": _op(
            "Load a configured model now, as a request naming it would (not a commit)",
            "control", {**_ok(), **change, **_errors((503,))}, control=True,
            body=_json_body({}), params=[_path("name", "a configured model")])},
        "/control/models/{name}/unload": {"post": _op(
            "Unload a model loaded on demand, after its requests (not a commit)", "control",
            {**_ok(), **change}, control=True, body=_json_body({}),
            params=[_path("name", "a model loaded on demand")])},
        "/control/voices": {
            "get": _op("The voice library of the serving commit", "control",
                       {**_ok(), **_errors((*CONTROL_ERRORS, 503))}, control=True),
            "post": _op("Upload a voice sample: checked, normalised, committed, applied",
                        "control", {**_ok(), **change, **_errors((503,))}, control=True,
                        body=VOICE_UPLOAD)},
        "/control/voices/{name}": {
            "get": _op("One voice of the library", "control",
                       {**_ok(), **_errors((*CONTROL_ERRORS, 404, 503))}, control=True,
                       params=[_path("name", "a voice of the library")]),
            "put": _op("Replace a voice's sample (a commit)", "control",
                       {**_ok(), **change, **_errors((503,))}, control=True, body=VOICE_UPLOAD,
                       params=[_path("name", "a voice of the library")]),
            "patch": _op("Rename a voice or change its fields (a commit)", "control",
                         {**_ok(), **change, **_errors((503,))}, control=True,
                         body=_json_body({"name": S, "model": S, "language": S,
                                          "transcript": S, "source": S, "author": AUTHOR}),
                         params=[_path("name", "a voice of the library")]),
            "delete": _op("Remove a voice from the branch, not from history (a commit)",
                          "control", {**_ok(), **change, **_errors((503,))}, control=True,
                          params=[_path("name", "a voice of the library"),
                                  _query("author", S, "the git author of the commit")])},
        "/control/voices/{name}/sample": {"get": _op(
            "A voice's sample as the serving commit holds it", "control",
            {"200": {"description": "the sample", "content": {
                kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in ("audio/wav", "audio/flac", "audio/mpeg", "audio/ogg",
                             "audio/mp4")}},
             **_errors((*CONTROL_ERRORS, 404, 503))},
            control=True, params=[_path("name", "a voice of the library")])},
        "/control/events": {"get": _op(
            "Live events (Server-Sent Events): phases of changes, models' states", "control",
            {**_ok("text/event-stream"), **_errors((400, *CONTROL_ERRORS))}, control=True,
            params=[_query("after", {"type": "integer", "minimum": 0},
                           "the last event id seen (or the Last-Event-ID header)")])},
        "/metrics": {"get": _op("Prometheus metrics", "control",
                                {**_ok("text/plain"), **_errors((*CONTROL_ERRORS, 404))},
                                control=True)},
        "/api/reload": {"post": _op(
            "AllTalk: switch the model (a commit, then an apply)", "alltalk",
            {**_ok(), **_errors((400, *CONTROL_ERRORS, 409, 422, 503), ALLTALK_FAILURE)},
            control=True, params=[_query("tts_method", S, "a configured model", True)])},
        "/api/reload_config": {"get": _op(
            "AllTalk: apply the branch head", "alltalk",
            {**_ok("text/plain"), **_errors((400, *CONTROL_ERRORS, 503), ALLTALK_FAILURE)},
            control=True)},
        "/api/lowvramsetting": {"post": _op(
            "AllTalk: set the default model's low_vram by a commit", "alltalk",
            {**_ok(), **_errors(CONTROL_ERRORS)}, control=True,
            params=[_query("new_low_vram_value", S, "true or false", True)])},
        "/api/deepspeed": {"post": _op(
            "AllTalk: set the default model's deepspeed by a commit", "alltalk",
            {**_ok(), **_errors(CONTROL_ERRORS)}, control=True,
            params=[_query("new_deepspeed_value", S, "true or false", True)])},
        "/api/stop-generation": {"put": _op(
            "AllTalk: stop the generations in progress", "alltalk",
            {**_ok(), **_errors(CONTROL_ERRORS)}, control=True)},
        "/openapi.json": {"get": _op("This description", "host", _ok())},
        "/docs": {"get": _op("This description, as a page", "host", _ok("text/html"))},
    }


def _components() -> dict[str, Any]:
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": S, "message": S, "details": {}}}}}
    openai_error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": S, "type": S, "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}}}}}
    alltalk = {"description": "AllTalk's shapes: {\"error\": \"field: description\"} for a "
                              "bad field, {\"status\": ..., \"error\"|\"message\": ...} for a "
                              "failure, or the host's error object",
               "anyOf": [{"type": "object", "required": ["error"],
                          "properties": {"error": S}},
                         {"type": "object", "required": ["status"],
                          "properties": {"status": S, "error": S, "message": S}},
                         error]}
    return {"schemas": {"Error": error, "OpenAIError": openai_error, "AllTalkFailure": alltalk},
            "securitySchemes": {"controlToken": {
                "type": "http", "scheme": "bearer",
                "description": "ALLTALK_CONTROL_TOKEN; without one, control routes answer "
                               "loopback clients that no proxy forwarded (HTTP/1.1, no "
                               "proxy header, not behind_proxy)"}}}


def describe() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "alltalk-host", "version": __version__,
                 "description": "A text-to-speech server whose models are plugins and whose "
                                "configuration is a git repository. Errors are "
                                "{\"error\": {\"code\", \"message\", \"details\"?}} unless an "
                                "AllTalk or OpenAI route answers in its own shape."},
        "paths": _paths(),
        "components": _components(),
    }


DESCRIPTION = describe()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(DESCRIPTION)


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    return web.Response(text=_page(DESCRIPTION), content_type="text/html")


def _page(spec: dict[str, Any]) -> str:
    """The description as one plain page: per route, its purpose, inputs and answers."""
    e = html.escape
    rows = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            inputs = [f"{p['name']} ({p['in']}{', required' if p['required'] else ''})"
                      for p in op.get("parameters", [])]
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                fields = ", ".join(content["schema"].get("properties", {}))
                inputs.append(f"{media}: {fields}" if fields else media)
            answers = ", ".join(f"{code} {r['description']}"
                                for code, r in op["responses"].items())
            lock = " &#128274;" if "security" in op else ""
            rows.append(f"<tr><td><code>{method.upper()} {e(path)}</code>{lock}</td>"
                        f"<td>{e(op['summary'])}<br><small>{e(op.get('description', ''))}"
                        f"</small></td><td>{e('; '.join(inputs)) or '-'}</td>"
                        f"<td>{e(answers)}</td></tr>")
    return (f"<!doctype html><html lang=en><meta charset=utf-8><title>alltalk-host API</title>"
            f"<style>body{{font:14px system-ui;margin:2em}}td{{border-top:1px solid #ccc;"
            f"padding:.4em;vertical-align:top}}</style><h1>alltalk-host {e(__version__)}</h1>"
            f"<p>{e(spec['info']['description'])} &#128274; marks control routes (a bearer "
            f"token, or loopback). Machine-readable: <a href=/openapi.json>/openapi.json</a>."
            f"</p><table><tr><th>route<th>what<th>inputs<th>answers</tr>{''.join(rows)}"
            f"</table></html>")
