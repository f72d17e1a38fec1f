"""The HTTP service and web page for a saved model (FastAPI, served by uvicorn).

    genrefusion serve --model runs/gmu/model --port 8000     # page at /, OpenAPI schema at /openapi.json

    POST /predict         multipart: `poster` (image file) and/or `plot` (text) -> genre probabilities
    POST /predict/batch   JSON {"movies": [{"id", "plot", "poster_base64"}, ...]} -> one result per movie
    POST /explain         multipart like /predict (+ optional `genre`) -> Grad-CAM grid, word attributions
    GET  /health, GET /model (encoders, fusion, genres, thresholds)

Bad input is answered with a 4xx and a message that says what is wrong ({"detail": "..."}) and the server keeps
serving: 413 for a body, image or plot over its limit (bodies are cut off while they stream in, images are
checked against their declared size before decoding), 415 for a wrong content type or a file that is not an image,
422 for a corrupt image, an empty plot or missing fields. Inference runs in the threadpool, serialised by the
predictor's lock, so the event loop keeps answering /health while a prediction runs.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime, and the types they
# name (UploadFile, the pydantic models) are local to create_app so that importing this module stays cheap.
import base64
import binascii
import time
from pathlib import Path
from typing import Any

WEB_DIR = Path(__file__).parent / "web"
MAX_BODY_BYTES = 10 * 1024 * 1024  # a poster is ~50 KB; generous for a large PNG, small enough to never hurt
MAX_BATCH = 32


def create_app(predictor, *, max_body_bytes: int = MAX_BODY_BYTES, max_plot_chars: int | None = None,
               max_pixels: int | None = None, max_batch: int = MAX_BATCH):
    """The FastAPI app around a loaded `Predictor` (see predict.py)."""
    from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field

    from . import __version__
    from .predict import MAX_IMAGE_PIXELS, MAX_PLOT_CHARS, InputError, check_plot, decode_poster

    max_plot_chars = max_plot_chars or MAX_PLOT_CHARS
    max_pixels = max_pixels or MAX_IMAGE_PIXELS

    class GenreScore(BaseModel):
        genre: str
        probability: float
        threshold: float
        predicted: bool

    class FusionWeights(BaseModel):
        kind: str = Field(description="gmu_gate (mean gate), attention_weights or late_alpha")
        text: float
        image: float

    class Prediction(BaseModel):
        predicted: list[str] = Field(description="genres at or above their threshold, most probable first")
        genres: list[GenreScore] = Field(description="every genre, most probable first")
        probabilities: dict[str, float]
        used: dict[str, bool] = Field(description="which modalities this movie had")
        contribution: dict[str, float] = Field(
            description="share of the prediction change when each modality is replaced by the model's stand-in")
        without: dict[str, dict[str, float]] = Field(description="probabilities with each modality removed")
        fusion: FusionWeights | None = Field(description="the fusion's own modality weights, where it has them")

    class BatchMovie(BaseModel):
        id: str | None = None
        plot: str | None = None
        poster_base64: str | None = Field(None, description="the poster file's bytes, base64-encoded")

    class BatchRequest(BaseModel):
        movies: list[BatchMovie] = Field(min_length=1, max_length=max_batch)

    class BatchResult(Prediction):
        id: str | None = None

    class BatchResponse(BaseModel):
        results: list[BatchResult]

    class Explanation(BaseModel):
        genre: str = Field(description="the genre explained")
        probability: float
        contribution: dict[str, float]
        fusion: FusionWeights | None
        poster: dict[str, Any] | None = Field(description="Grad-CAM: {method, grid (rows x cols in [0, 1])}")
        plot: dict[str, Any] | None = Field(description="{method, words: [{word, score}], truncated}")
        seconds: float

    # No /docs or /redoc: FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN, and nothing this
    # service shows may come from the internet. The schema itself is at /openapi.json.
    app = FastAPI(title="genrefusion", version=__version__, docs_url=None, redoc_url=None,
                  description="Movie genres from a poster and a plot. Model: "
                              f"{predictor.fusion} over {', '.join(predictor.info()['encoders'].values())}.")
    app.state.predictor = predictor

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def form_content(request: Request) -> None:
        ct = request.headers.get("content-type", "")
        if not ct.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise HTTPException(415, f"expected multipart/form-data with a 'poster' file and/or a 'plot' text field, "
                                     f"got content type {ct or '(none)'!r}")

    async def read_movie(request: Request, poster: UploadFile | None, plot: str | None):
        """(poster image or None, plot or None) from the parsed form, with every check that gives a 4xx."""
        form = await request.form()  # already parsed by FastAPI (cached): tells an absent plot from an empty one
        if plot is None and "plot" in form:
            raise InputError("plot: is empty (leave the field out to predict from the poster alone)")
        plot = check_plot(plot, max_plot_chars)
        image = None
        if poster is not None:
            data = await poster.read()
            image = await run_in_threadpool(decode_poster, data, f"poster {poster.filename!r}", max_pixels)
        return image, plot

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "fusion": predictor.fusion}

    @app.get("/model")
    def model_info() -> dict[str, Any]:
        info = predictor.info()
        info["limits"] = {"max_body_bytes": max_body_bytes, "max_plot_chars": max_plot_chars,
                          "max_image_pixels": max_pixels, "max_batch": max_batch}
        return info

    @app.post("/predict", response_model=Prediction, dependencies=[Depends(form_content)])
    async def predict(request: Request, poster: UploadFile | None = File(None, description="poster image"),
                      plot: str | None = Form(None, description="plot text")):
        image, plot = await read_movie(request, poster, plot)
        return await run_in_threadpool(predictor.predict_one, image, plot)

    def json_content(request: Request) -> None:
        ct = request.headers.get("content-type", "")
        if not ct.startswith("application/json"):
            raise HTTPException(415, "expected application/json: {\"movies\": [{\"id\": ..., \"plot\": ..., "
                                     f"\"poster_base64\": ...}}, ...]}}, got content type {ct or '(none)'!r}")

    @app.post("/predict/batch", response_model=BatchResponse, dependencies=[Depends(json_content)])
    async def predict_batch(body: BatchRequest):
        def run() -> dict:
            posters, plots = [], []
            for i, m in enumerate(body.movies):
                name = f"movies[{i}]" + (f" (id {m.id})" if m.id else "")
                plots.append(check_plot(m.plot, max_plot_chars, f"{name}.plot"))
                poster = None
                if m.poster_base64 is not None:
                    try:
                        data = base64.b64decode(m.poster_base64, validate=True)
                    except binascii.Error as e:
                        raise InputError(f"{name}.poster_base64: not valid base64 ({e})") from None
                    poster = decode_poster(data, f"{name}.poster", max_pixels)
                posters.append(poster)
                try:
                    predictor.check(poster, plots[-1])
                except InputError as e:
                    raise InputError(f"{name}: {e}") from None
            results = predictor.predict(posters, plots)
            return {"results": [{"id": m.id, **r} for m, r in zip(body.movies, results)]}

        return await run_in_threadpool(run)

    @app.post("/explain", response_model=Explanation, dependencies=[Depends(form_content)])
    async def explain_movie(request: Request, poster: UploadFile | None = File(None, description="poster image"),
                            plot: str | None = Form(None, description="plot text"),
                            genre: str | None = Form(None, description="genre to explain (default: top predicted)"),
                            steps: int = Form(16, ge=1, le=64, description="integrated-gradients steps")):
        from .explain import explain

        image, plot = await read_movie(request, poster, plot)
        t0 = time.perf_counter()
        result = await run_in_threadpool(explain, predictor, image, plot, genre, steps)
        result["seconds"] = time.perf_counter() - t0
        return result

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return BodyLimit(app, max_body_bytes)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, whether it declares its length or streams it.
    Wraps the app rather than using @app.middleware so the body is never buffered before the check."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def __getattr__(self, name):  # the wrapped FastAPI app's attributes (state, openapi, routes) stay reachable
        return getattr(self.app, name)

    def _message(self) -> str:
        return f"request body over the limit of {self.max_bytes:,} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI passes an HTTPException from body parsing through unchanged
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)


# --- command line -------------------------------------------------------------------------------------------------
def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_body_bytes: int = MAX_BODY_BYTES, log_level: str = "info") -> None:
    """Load a saved model and serve it until interrupted."""
    import uvicorn

    from .predict import load_model

    predictor = load_model(model, device=device)
    app = create_app(predictor, max_body_bytes=max_body_bytes)
    print(f"genrefusion: {predictor.fusion} model from {model} at http://{host}:{port}/ "
          "(OpenAPI schema: /openapi.json)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def cmd_serve(args) -> int:
    serve(args.model, args.host, args.port, args.device, args.max_body_mb * 1024 * 1024, args.log_level)
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page for a saved model")
    p.add_argument("--model", required=True, help="saved model folder (a run's model/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-body-mb", type=int, default=MAX_BODY_BYTES // (1024 * 1024),
                   help="largest request accepted (poster upload or batch)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
