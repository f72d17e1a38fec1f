"""One error body for everything the service refuses: `{"code": ..., "message": ..., "field": ...}`.

`code` is one of `CODES` (stable, for programs), `message` says what is wrong in words (for people: the page shows
it), `field` names the input at fault ("plot", "movies[2].poster_base64", "Authorization") or is null. Nothing a
client sent is echoed back beyond a short, truncated name, so an error for a 10 MB request stays a few hundred bytes.

The same body comes from FastAPI's validation (its own `{"detail": [...]}` 422 is replaced), from starlette's
HTTP errors (404, 405 with Allow, a body that does not parse), from the guard middleware (401, 413, 415, 503) and
from the connection layer (400 for broken HTTP, 408 for slow headers or body, 503 for too many connections), which
writes it raw with `raw_response`.

A prediction whose outputs are not finite numbers (a model whose weights overflow on that input: NaN or inf logits)
is answered 500 (`internal_error`, the message says so, the server logs it), never 200 with null probabilities.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from ..inference.base import NonFiniteOutputError
from ..inference.inputs import InputError

CODES = {  # status -> the code its body carries unless a more specific one is given
    400: "invalid_request",         # the body or the HTTP itself does not parse (not JSON, broken multipart)
    401: "unauthorized",            # missing or wrong API key
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",         # headers or body arrived too slowly
    413: "too_large",               # body over the limit, or a poster declaring too many pixels
    415: "unsupported_media_type",  # wrong Content-Type, or a poster file that is not an image
    422: "invalid_input",           # a field that breaks the schema or cannot be used (corrupt poster, empty plot)
    500: "internal_error",
    501: "not_implemented",         # /explain on an exported (ONNX) model: explanations need the torch model
    503: "busy",                    # the server is at its limit: retry after Retry-After seconds
}
MAX_ECHO = 120  # characters of a client-sent name (a field, an id) an error message may repeat


def short(text: Any, limit: int = MAX_ECHO) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def error_body(status: int, message: str, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    return {"code": code or CODES.get(status, "error"), "message": message,
            "field": None if field is None else short(field)}


def error_response(status: int, message: str, code: str | None = None, field: str | None = None,
                   headers: dict[str, str] | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(status, message, code, field), status_code=status, headers=headers)


def raw_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, for the connection layer, which answers
    before (or instead of) the application: too many connections, headers or body too slow, broken HTTP."""
    body = json.dumps(error_body(status, message)).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ServiceError(StarletteHTTPException):
    """An error answered with the error body. A starlette HTTPException, so FastAPI passes it through unchanged
    when it is raised while the body is read (it turns any other exception there into a 400)."""

    def __init__(self, status: int, message: str, code: str | None = None, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.code, self.field, self.message = code, field, message


def field_name(loc: tuple | list) -> str | None:
    """A pydantic error location as the field a person would name: ("body", "movies", 3, "plot") ->
    "movies[3].plot"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    name = ""
    for p in parts:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else str(p))
    return name or None


def validation_error(errors: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """FastAPI's/pydantic's error list -> (status, error body): the first problem, with how many more there are.
    The errors' `input` (which can be the whole request) is never repeated."""
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        return 400, error_body(400, f"body: not valid JSON ({short(reason)})")
    field = field_name(first.get("loc", ()))
    msg = str(first.get("msg", "invalid"))
    if kind == "value_error":  # our own model validators: their message is already a sentence
        msg = msg.removeprefix("Value error, ")
    elif kind == "string_pattern_mismatch" and field and field.endswith("poster_base64"):
        msg = "not valid base64 (only A-Z, a-z, 0-9, '+', '/' in groups of 4, '=' padding at the end)"
    elif kind in ("string_pattern_mismatch", "string_too_short") and field and field.endswith(".plot"):
        msg = "is empty"  # empty or blank: what check_plot says of a form's plot, not the pattern spelled out
    elif kind == "string_too_short" and field and field.endswith("poster_base64"):
        msg = "empty: a poster file has at least one byte, 4 characters in base64"
    message = f"{short(field)}: {short(msg, 400)}" if field else short(msg, 400)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return 422, error_body(422, message, field=field)


def install_handlers(app) -> None:
    """Every error the app itself raises -> the error body."""
    from fastapi.exceptions import RequestValidationError
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        if isinstance(exc, ServiceError):
            return error_response(exc.status_code, exc.message, exc.code, exc.field, exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else CODES.get(exc.status_code, "error")
        if exc.status_code == 404:
            message = f"no such endpoint: {short(request.url.path)} (see /openapi.json)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed here; allowed: {(exc.headers or {}).get('Allow', '?')}"
        elif exc.status_code == 400:  # starlette's multipart parser: "Missing boundary in multipart." and co.
            message = f"body: {message}"
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        from starlette.responses import JSONResponse

        status, body = validation_error(list(exc.errors()))
        return JSONResponse(body, status_code=status)

    @app.exception_handler(InputError)
    async def _input(request, exc: InputError):
        return error_response(exc.status, str(exc), exc.code, exc.field)

    @app.exception_handler(NonFiniteOutputError)
    async def _non_finite(request, exc: NonFiniteOutputError):
        logging.getLogger(__name__).error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(500, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc: ClientDisconnect):
        return Response(status_code=400)  # nobody is listening; answering quietly keeps tracebacks out of the log

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        # A bug, not bad input: starlette re-raises it after this answer, so uvicorn logs the traceback; the client
        # gets the error body without it.
        return error_response(500, "internal error (logged on the server)")
