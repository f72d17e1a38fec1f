"""The routes, as FastAPI routers; app.create_app includes them. Each reaches the loaded model through the
`Service` at app.state.service (the `service` dependency).

- `public`: GET /health and the page (/), which need no API key;
- `api`: GET /model and POST /predict; `explainer`: POST /explain (left out of an exported model's schema);
- `batch_router(body)`: POST /predict/batch, whose body type is made for the loaded model (models.batch_request).

Inference runs in the threadpool, serialised by the predictor's lock; /health and /model are answered on the event
loop itself, so they answer at once however many predictions are waiting. What a route's schema says about the
loaded model (the form fields /predict and /explain take, the genres /explain knows, the API key) is added to the
OpenAPI document by schema.for_model.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import time
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from ..inference.inputs import InputError
from . import schema
from .errors import ServiceError, short
from .models import BatchResponse, Explanation, Health, ModelInfo, Prediction
from .service import Service

WEB_DIR = Path(__file__).resolve().parent / "web"
ERROR = schema.error_model()


def service(request: Request) -> Service:
    return request.app.state.service


def errors_for(heavy: bool) -> dict:
    """The error statuses a route answers with (the API key's 401 is added where the app has one: create_app)."""
    return schema.responses(schema.route_statuses(heavy, False), ERROR)


def query_params(*allowed: str):
    """A dependency refusing query parameters a route does not declare (a typo such as ?genere=Horror would
    otherwise be ignored without a word)."""
    def check(request: Request) -> None:
        for key in request.query_params.keys():
            if key not in allowed:
                takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
                raise InputError(f"{short(key)}: unknown query parameter ({takes})", field=short(key))
    return Depends(check)


public = APIRouter()
api = APIRouter()
explainer = APIRouter()


@public.get("/health", response_model=Health, responses=errors_for(False), dependencies=[query_params()])
async def health(svc: Service = Depends(service)):
    return {"status": "ok", "fusion": svc.predictor.fusion}


@public.get("/", include_in_schema=False)
async def index():
    return FileResponse(WEB_DIR / "index.html")


@api.get("/model", response_model=ModelInfo, responses=errors_for(False), dependencies=[query_params()])
async def model(svc: Service = Depends(service)):
    return svc.info


@api.post("/predict", response_model=Prediction, responses=errors_for(True), dependencies=[query_params()])
async def predict(request: Request, svc: Service = Depends(service)):
    form = await svc.read_form(request)

    def run():
        return svc.predictor.predict_one(*svc.prepare(form))

    return await run_in_threadpool(run)


@explainer.post("/explain", response_model=Explanation, responses=errors_for(True),
                dependencies=[query_params("genre", "steps")])
async def explain_movie(request: Request, svc: Service = Depends(service),
                        genre: str | None = Query(None, description="genre to explain (default: the most probable "
                                                                     "predicted genre)"),
                        steps: int = Query(16, ge=1, le=64, description="integrated-gradients steps (plot)")):
    if svc.exported:
        raise ServiceError(501, "explanations need the torch model: this server runs an exported (ONNX) model; "
                                "serve the model folder it was exported from to explain")
    from ..inference.explain import explain  # torch: an exported model's server never imports it

    predictor = svc.predictor
    if genre is not None and genre not in predictor.genres:
        raise InputError(f"genre: unknown genre {genre[:100]!r}; the model's genres are "
                         f"{', '.join(predictor.genres)}", field="genre")
    form = await svc.read_form(request)

    def run():
        image, plot = svc.prepare(form)
        t0 = time.perf_counter()
        result = explain(predictor, image, plot, genre, steps)
        result["seconds"] = time.perf_counter() - t0
        return result

    return await run_in_threadpool(run)


def batch_router(body_model) -> APIRouter:
    """POST /predict/batch with its body validated as `body_model`. FastAPI takes a body's type from the endpoint's
    signature when the route is added, and this one is made for the loaded model, so the route is added per app."""
    router = APIRouter()

    @router.post("/predict/batch", response_model=BatchResponse, responses=errors_for(True),
                 dependencies=[query_params()])
    async def predict_batch(body: body_model, svc: Service = Depends(service)):
        return await run_in_threadpool(svc.predict_batch, body)

    return router
