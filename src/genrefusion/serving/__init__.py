"""The HTTP service and web page for a saved model (FastAPI, served by uvicorn).

    genrefusion serve --model runs/gmu/model --port 8000     # page at /, OpenAPI schema at /openapi.json

    POST /predict         multipart: `poster` (image file) and/or `plot` (text) -> genre probabilities
    POST /predict/batch   JSON {"movies": [{"id", "plot", "poster_base64"}, ...]} -> one result per movie
    POST /explain         multipart like /predict (?genre=...&steps=... optional) -> Grad-CAM grid, word attributions
    GET  /health, GET /model (encoders, fusion, genres, thresholds, limits)

Every error is answered with one body, `{"code", "message", "field"}` (errors.py), and the server keeps serving.
Modules: app (the app factory, which wires the rest), routes (the routers), models (the request and response
bodies), service (what the routes share for one model: reading a movie, /model's body), schema (the OpenAPI
document, generated for the loaded model), errors, limits (what is refused, the guard middleware, the decode
budget), protocol (header/body timeouts and the connection limit on uvicorn's h11 protocol), cli (`genrefusion
serve`, the API key). Importing this package is cheap: the CLI parser imports it for `add_cli`.
"""
from __future__ import annotations

from .cli import add_cli, cmd_serve, read_api_key, serve
from .limits import Limits


def create_app(predictor, limits: Limits | None = None, **kwargs):
    """The ASGI app serving `predictor` (see app.create_app)."""
    from .app import create_app as create  # FastAPI: importing this package stays cheap (see above)

    return create(predictor, limits, **kwargs)


__all__ = ["Limits", "add_cli", "cmd_serve", "create_app", "read_api_key", "serve"]
