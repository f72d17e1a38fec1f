"""The app factory: FastAPI around a loaded `Predictor`, with the routes of routes.py, the bodies of models.py, the
error handlers of errors.py, the OpenAPI document completed for the model (schema.for_model), all behind the guard
middleware (limits.Guard)."""
from __future__ import annotations

import dataclasses

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..version import __version__
from . import routes, schema
from .errors import install_handlers
from .limits import Guard, Limits
from .models import batch_request
from .service import Service


def create_app(predictor, limits: Limits | None = None, *, api_key: str | None = None, **overrides):
    """The ASGI app (FastAPI behind the guard middleware) serving `predictor`. `limits` (or keyword overrides of
    its fields, e.g. max_body_bytes=...) bound what it accepts; `api_key` turns on the bearer key."""
    limits = dataclasses.replace(limits or Limits(), **overrides)
    authenticated = api_key is not None
    service = Service(predictor, limits, authenticated)
    encoders = service.info["encoders"].values()
    # No /docs or /redoc: FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN, and nothing this
    # service shows may come from the internet. The schema itself is at /openapi.json.
    app = FastAPI(title="genrefusion", version=__version__, docs_url=None, redoc_url=None,
                  description=f"Movie genres from a poster and a plot. Model: {predictor.fusion} over "
                              f"{', '.join(encoders)}. Every error has the body {{code, message, field}}.")
    app.state.service = service
    app.state.predictor, app.state.limits, app.state.pixel_budget = predictor, limits, service.budget
    install_handlers(app)

    keyed = schema.responses([401], routes.ERROR) if authenticated else None  # every route but /health
    app.include_router(routes.public)
    app.include_router(routes.api, responses=keyed)
    app.include_router(routes.batch_router(batch_request(predictor, limits)), responses=keyed)
    app.include_router(routes.explainer, responses=keyed, include_in_schema=not service.exported)
    app.mount("/static", StaticFiles(directory=routes.WEB_DIR), name="static")
    schema.for_model(app, predictor, limits, authenticated)
    return Guard(app, limits, api_key)
