"""The OpenAPI document, generated for the loaded model and the server's limits, so that it is the truth.

What a schema can express is expressed: which fields this model needs (a text-only model requires `plot`, a
fusion model trained with missing modalities takes a plot or a poster: JSON Schema's anyOf/required), a plot's
length and that it is not blank, the batch size, the genre names `/explain` knows, and every
status each route can answer with, all with the one error body (errors.py). What it cannot express is said in the
descriptions: a poster must be an image file PIL can decode, of at most `max_image_pixels` declared pixels.
"""
from __future__ import annotations

import re
from typing import Any

from ..data.modalities import SPECS
from ..data.visible import not_blank_pattern
from .errors import CODES
from .limits import Limits

FIELD = {m: s.display for m, s in SPECS.items()}  # each modality's form field: "plot", "poster"
POSTER_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp"
# "Not blank": at least one visible character, by the server's own rule (check_plot: whitespace and invisible
# characters such as U+200B are blank), spelled out so that every regex engine, the schema's readers' and
# pydantic's, agrees with it on what blank means (data/visible.py).
NOT_BLANK_PATTERN = not_blank_pattern()

DESCRIPTIONS = {
    400: "The body does not parse (not JSON, broken multipart) or the HTTP request itself is malformed.",
    401: "No API key, or a wrong one: send `Authorization: Bearer <key>`.",
    408: "The request's headers or body arrived too slowly (see the limits in GET /model); the connection is "
         "closed.",
    413: "The body is over `max_body_bytes`, or a poster declares more than `max_image_pixels` pixels.",
    415: "Wrong Content-Type, or a poster file that is not an image (JPEG, PNG, WebP, GIF or BMP).",
    422: "A field breaks the schema or cannot be used: corrupt or truncated poster, blank or over-long plot, "
         "unknown field, or a movie without the input this model needs.",
    500: "A bug (logged on the server). Never bad input.",
    503: "The server is at its limit (connections, predictions in progress, or posters being decoded): retry "
         "after `Retry-After` seconds.",
}


def error_model():
    from typing import Literal

    from pydantic import BaseModel, Field

    class Error(BaseModel):
        """The body of every error."""

        code: Literal[tuple(sorted(set(CODES.values())))] = Field(  # type: ignore[valid-type]
            description="machine-readable kind of error")
        message: str = Field(description="what is wrong, in words (a few hundred characters at most)")
        field: str | None = Field(description="the input at fault, e.g. plot or movies[2].poster_base64")

    return Error


def responses(statuses: list[int], error) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for status in statuses:
        r: dict[str, Any] = {"model": error, "description": DESCRIPTIONS[status]}
        if status == 503:
            r["headers"] = {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                                            "schema": {"type": "integer", "minimum": 0}}}
        if status == 401:
            r["headers"] = {"WWW-Authenticate": {"description": "Bearer", "required": True,
                                                 "schema": {"type": "string"}}}
        out[status] = r
    return out


def route_statuses(heavy: bool, authenticated: bool) -> list[int]:
    """What a route can answer with besides 200. 400/408/413/503 come from the connection layer and the body limit,
    which stand in front of every route; 422 also answers an unknown query parameter."""
    statuses = [400, 408, 413, 422, 500, 503]
    if authenticated:
        statuses.append(401)
    if heavy:
        statuses.append(415)
    return sorted(statuses)


def required_fields(predictor) -> tuple[list[str], bool]:
    """(modalities, all_required): a fusion model that learned stand-ins takes any one of its modalities; otherwise
    every modality it reads is required."""
    mods = list(predictor.modalities)
    return mods, any(not predictor.can_miss(m) for m in mods)


def requirement(names: list[str], all_required: bool, non_null: bool = False) -> dict[str, Any]:
    """What an object must hold of `names`: all of them, or any one; `non_null`: given as a string, not null. It
    adds to the object's schema (`allOf`, `anyOf`), never replaces its `properties` (where the fields' own
    constraints are, and its other fields)."""
    if all_required or len(names) == 1:
        out: dict[str, Any] = {"required": names}
        if non_null:
            out["allOf"] = [{"properties": {n: {"type": "string"} for n in names}}]
        return out
    branches = [{"required": [n], **({"properties": {n: {"type": "string"}}} if non_null else {})} for n in names]
    return {"anyOf": branches}


def plot_schema(limits: Limits) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": limits.max_plot_chars, "pattern": NOT_BLANK_PATTERN,
            "description": f"plot text: not blank, at most {limits.max_plot_chars:,} characters"}


# A form field has no types: JavaScript's FormData.append("plot", null) sends the text "null" (undefined
# "undefined", a number its digits), and so do fuzzers that turn a field into null or a number. Such texts are
# refused in forms, so a client bug gets a 422 instead of a prediction for the word "null" (JSON bodies have real
# types and are not affected). NUMBER_TEXT is anchored and ASCII-only, so Python's re and ECMA-262 regexes (what
# schema readers use) agree on it; the server checks it with re.fullmatch.
FORM_LITERALS = ("null", "undefined", "true", "false", "NaN")
NUMBER_TEXT = r"^[-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$"


def form_literal(value: str) -> bool:
    """Whether a form's plot is one of the texts a client sends for a missing or non-text value."""
    return value in FORM_LITERALS or re.fullmatch(NUMBER_TEXT[1:-1], value) is not None


def form_plot_schema(limits: Limits) -> dict[str, Any]:
    out = plot_schema(limits)
    out["not"] = {"anyOf": [{"enum": list(FORM_LITERALS)}, {"pattern": NUMBER_TEXT}]}
    out["description"] += ("; not a bare number nor the text " + ", ".join(map(repr, FORM_LITERALS))
                           + " (what a client sends for a missing or non-text value)")
    return out


def poster_description(limits: Limits) -> str:
    return (f"the poster file: JPEG, PNG, WebP, GIF or BMP, not empty, at most {limits.max_image_pixels:,} pixels "
            "declared in its header (checked before decoding), complete and not corrupt; other bytes get 415")


def form_body(predictor, limits: Limits) -> dict[str, Any]:
    """The request body of /predict and /explain: multipart/form-data (urlencoded too, when a plot alone will do).
    "A plot or a poster" is `minProperties: 1` over exactly those two properties rather than anyOf/required:
    the same set of bodies, and one that fuzzers can negate correctly even with a binary field in it."""
    mods, all_required = required_fields(predictor)
    props: dict[str, Any] = {}
    if "image" in mods:
        props["poster"] = {"type": "string", "format": "binary", "minLength": 1,
                           "description": poster_description(limits)}
    if "text" in mods:
        props["plot"] = form_plot_schema(limits)
    need = {"required": list(props)} if all_required or len(props) == 1 else {"minProperties": 1}
    content = {"multipart/form-data": {
        "schema": {"type": "object", "properties": props, "additionalProperties": False, **need},
        **({"encoding": {"poster": {"contentType": POSTER_TYPES}}} if "poster" in props else {})}}
    if "text" in mods and not (all_required and "image" in mods):  # a plot alone is enough: a plain form works
        content["application/x-www-form-urlencoded"] = {"schema": {
            "type": "object", "properties": {"plot": props["plot"]}, "additionalProperties": False,
            "required": ["plot"]}}
    what = " and ".join(props) if all_required else " and/or ".join(props)
    return {"required": True, "description": f"This model needs {what}.", "content": content}


def for_model(app, predictor, limits: Limits, authenticated: bool) -> None:
    """Complete the routes' schema with what depends on the loaded model: the form /predict and /explain take
    (form_body), the genres /explain knows, and the bearer key (FastAPI only declares that for its own security
    dependencies)."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.openapi.models import OpenAPI

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            schema = generate()
            for path in ("/predict", "/explain"):
                if path in schema["paths"]:
                    schema["paths"][path]["post"]["requestBody"] = form_body(predictor, limits)
            for param in schema["paths"].get("/explain", {}).get("post", {}).get("parameters", []):
                if param["name"] == "genre":
                    param["schema"]["anyOf"][0]["enum"] = list(predictor.genres)
            for item in schema["paths"].values():
                for op in item.values():  # in status order, the API key's 401 (create_app) included
                    op["responses"] = dict(sorted(op["responses"].items()))
            schema = jsonable_encoder(OpenAPI(**schema), by_alias=True, exclude_none=True)  # as FastAPI orders it
            if authenticated:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "apiKey": {"type": "http", "scheme": "bearer", "description": "the key given to `serve`"}}
                for path, item in schema["paths"].items():
                    for op in item.values():
                        op["security"] = [] if path == "/health" else [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
