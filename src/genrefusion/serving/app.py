"""The FastAPI app around a loaded `Predictor`: routes, request parsing and the response models.

Inference runs in the threadpool, serialised by the predictor's lock; /health and /model are answered on the event
loop itself, so they answer at once however many predictions are waiting.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime, and the types they
# name (the pydantic models) are local to create_app so that importing this module stays cheap.
import base64
import binascii
import time
from pathlib import Path
from typing import Annotated, Any

from .limits import Limits

WEB_DIR = Path(__file__).resolve().parent / "web"
TRAINING_KEYS = ("model", "mode", "split", "modalities", "plot_mode", "pooling", "cross_attention", "late_weights",
                 "modality_dropout", "loss", "threshold_mode", "epochs", "seed")  # settings, never paths


def encoder_label(name: str) -> str:
    """What /model shows for an encoder: a registered name or Hub id as it is, a local folder by its name only
    (its path on the server's disk is nobody's business)."""
    def one(part: str) -> str:
        p = Path(part).expanduser()
        local = p.is_absolute() or part.startswith((".", "~")) or p.exists()
        return p.name if local else part

    return "+".join(one(part.strip()) for part in name.split("+"))  # joined encoders: encoders/concat.py


def create_app(predictor, limits: Limits | None = None, *, api_key: str | None = None, **overrides):
    """The ASGI app (FastAPI behind the guard middleware) serving `predictor`. `limits` (or keyword overrides of
    its fields, e.g. max_body_bytes=...) bound what it accepts; `api_key` turns on the bearer key."""
    import dataclasses

    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

    from ..version import __version__
    from ..inference.inputs import InputError, check_plot, decode_poster, poster_decode_pixels
    from ..data.languages import scripts_of
    from . import schema
    from .errors import ServiceError, install_handlers, short
    from .limits import Guard, PixelBudget

    limits = dataclasses.replace(limits or Limits(), **overrides)
    budget = PixelBudget(limits.decode_pixels)
    mods, all_required = schema.required_fields(predictor)
    error = schema.error_model()
    authenticated = api_key is not None

    def errors_for(heavy: bool, auth: bool = authenticated):
        return schema.responses(schema.route_statuses(heavy, auth), error)

    class GenreScore(BaseModel):
        genre: str
        probability: float
        threshold: float
        predicted: bool

    class FusionWeights(BaseModel):
        kind: str = Field(description="gmu_gate (mean gate), attention_weights or late_alpha")
        text: float
        image: float

    class InputWarning(BaseModel):
        code: str = Field(description="unreadable_script: the plot is mostly in a script the model's text encoder "
                                      "was not trained for (GET /model lists its languages and scripts)")
        message: str = Field(description="what is wrong, in words")
        field: str | None = Field(description="the input it concerns, e.g. plot")

    class Prediction(BaseModel):
        predicted: list[str] = Field(description="genres at or above their threshold, most probable first")
        genres: list[GenreScore] = Field(description="every genre, most probable first")
        probabilities: dict[str, float]
        used: dict[str, bool] = Field(description="which modalities this movie had")
        contribution: dict[str, float] = Field(
            description="share of the prediction change when each modality is replaced by the model's stand-in")
        without: dict[str, dict[str, float]] = Field(description="probabilities with each modality removed")
        fusion: FusionWeights | None = Field(description="the fusion's own modality weights, where it has them")
        warnings: list[InputWarning] = Field(description=(
            "what the prediction should be read with, e.g. a plot in a script the text encoder cannot read (its "
            "genres are then unreliable); empty when there is nothing to say"))

    batch_fields: dict[str, Any] = {"id": (str | None, Field(None, max_length=256, description=(
        "any text, echoed back with this movie's result (results keep the request's order; ids need not be "
        "unique)")))}
    if "text" in mods:
        plot = schema.plot_schema(limits)
        batch_fields["plot"] = (str | None, Field(None, min_length=1, max_length=limits.max_plot_chars,
                                                  pattern=schema.NOT_BLANK_PATTERN, description=plot["description"]))
    if "image" in mods:
        b64 = Annotated[str, Field(json_schema_extra={"format": "byte", "contentEncoding": "base64"})]  # checked when decoded
        batch_fields["poster_base64"] = (b64 | None, Field(
            None, description="the poster file's bytes, base64-encoded; " + schema.poster_description(limits)))
    names = [{"text": "plot", "image": "poster_base64"}[m] for m in mods]

    def needs_input(movie):
        missing = [n for n in names if getattr(movie, n) is None]
        if (all_required and missing) or len(missing) == len(names):
            what = " and ".join(missing) if all_required else " or ".join(names)
            raise ValueError(f"this {predictor.fusion} model needs {what}")
        return movie

    BatchMovie = create_model(  # noqa: N806 - a class
        "BatchMovie", __config__=ConfigDict(extra="forbid", json_schema_extra=schema.requirement(
            names, all_required, non_null=True)),
        __validators__={"needs_input": model_validator(mode="after")(needs_input)}, **batch_fields)

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        movies: list[BatchMovie] = Field(min_length=1, max_length=limits.max_batch)

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
        plot: dict[str, Any] | None = Field(description=(
            "{method, words: [{word, start, end, score}], text, truncated}: integrated-gradients words, or for a "
            "text encoder without gradients sentence-occlusion sentences (in `words`)"))
        warnings: list[InputWarning] = Field(description="as in /predict")
        seconds: float

    class Health(BaseModel):
        status: str
        fusion: str

    class ModelInfo(BaseModel):
        version: str
        fusion: str
        modalities: list[str]
        encoders: dict[str, str] = Field(description="registered name or Hub id; a local folder by its name only")
        genres: list[str]
        thresholds: dict[str, float]
        missing_modality_ok: dict[str, bool]
        sequences: bool
        languages: dict[str, list[str] | None] = Field(description=(
            "per text input, the languages (ISO 639-1) its encoder was trained for; null: not declared"))
        scripts: dict[str, list[str] | None] = Field(description=(
            "per text input, the writing systems those languages use (Unicode script names); a plot mostly in "
            "another script gets an unreadable_script warning"))
        training: dict[str, Any] = Field(description="the settings the model was trained with (no paths)")
        limits: dict[str, Any] = Field(description="what the server refuses: see the limits table of docs/serving.md")
        api_key_required: bool
        runtime: str = Field(description="torch, or onnxruntime for an exported model (no /explain)")

    info = predictor.info()
    cfg = info.get("config", {})
    model_info = {
        "version": __version__, "fusion": info["fusion"], "modalities": info["modalities"],
        "encoders": {m: encoder_label(n) for m, n in info["encoders"].items()}, "genres": info["genres"],
        "thresholds": info["thresholds"], "missing_modality_ok": info["missing_modality_ok"],
        "sequences": info["sequences"], "training": {k: cfg[k] for k in TRAINING_KEYS if k in cfg},
        "languages": {"text": info["languages"]} if "text" in info["modalities"] else {},
        "scripts": ({"text": None if info["languages"] is None else scripts_of(info["languages"])}
                    if "text" in info["modalities"] else {}),
        "limits": limits.public(), "api_key_required": authenticated,
        "runtime": "onnxruntime" if getattr(predictor, "exported", False) else "torch"}

    # No /docs or /redoc: FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN, and nothing this
    # service shows may come from the internet. The schema itself is at /openapi.json.
    app = FastAPI(title="genrefusion", version=__version__, docs_url=None, redoc_url=None,
                  description=f"Movie genres from a poster and a plot. Model: {predictor.fusion} over "
                              f"{', '.join(model_info['encoders'].values())}. Every error has the body "
                              "{code, message, field}.")
    app.state.predictor, app.state.limits, app.state.pixel_budget = predictor, limits, budget
    install_handlers(app)

    # -- reading a movie ------------------------------------------------------------------------------------
    def decode(data: bytes, name: str, field: str):
        """Decode within the server's pixel budget (waits for it; 503 when it does not come in time)."""
        cost = poster_decode_pixels(data)
        cost = cost if cost <= limits.max_image_pixels else 0  # over the limit: refused before decoding
        with budget.hold(cost, limits.queue_timeout_s, limits.retry_after_s):
            return decode_poster(data, name, limits.max_image_pixels, field=field)

    def check(poster, plot, movie: str = "", poster_field: str = "poster"):
        """predictor.check, with the field at fault: the one missing input the model needs, else the movie."""
        try:
            predictor.check(poster, plot)
        except InputError as e:
            given = {"text": (plot, "plot"), "image": (poster, poster_field)}
            missing = [given[m][1] for m in mods if given[m][0] is None]
            field = (f"{movie}." if movie else "") + missing[0] if len(missing) == 1 else (movie or None)
            raise InputError(f"{movie}: {e}" if movie else str(e), field=field) from None

    async def read_form(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        """The form's fields, each given at most once and each of the right kind; unknown fields are errors."""
        form = await request.form(max_files=4, max_fields=16, max_part_size=limits.max_body_bytes)
        try:
            out: dict[str, Any] = {}
            for key in form.keys():
                if key not in allowed:
                    raise InputError(f"{short(key)}: unknown field (this endpoint takes {', '.join(allowed)})",
                                     field=key)
                values = form.getlist(key)
                if len(values) > 1:
                    raise InputError(f"{key}: given {len(values)} times", field=key)
                value = values[0]
                is_file = not isinstance(value, str)
                if key == "poster":
                    if not is_file:
                        raise InputError("poster: expected a file upload, got a text field", field="poster")
                    out[key] = (await value.read(), value.filename)
                elif is_file:
                    raise InputError(f"{key}: expected a text field, got a file", field=key)  # key is allowed: short
                else:
                    out[key] = value
            return out
        finally:
            await form.close()

    def prepare(form: dict[str, Any]):
        """(poster image or None, plot or None) with every check that gives a 4xx."""
        if isinstance(form.get("plot"), str) and schema.form_literal(form["plot"]):
            raise InputError(f"plot: {form['plot'][:40]!r} is not a plot but what a client sends for a missing or "
                             "non-text value (e.g. FormData.append('plot', null)); leave the field out instead",
                             field="plot")
        plot = check_plot(form.get("plot"), limits.max_plot_chars)
        poster = None
        if "poster" in form:
            data, filename = form["poster"]
            poster = decode(data, f"poster {str(filename or '')[:100]!r}", "poster")
        check(poster, plot)
        return poster, plot

    predict_fields = tuple(schema.FIELD[m] for m in ("image", "text") if m in mods)

    def query_params(*allowed: str):
        """A dependency refusing query parameters a route does not declare (a typo such as ?genere=Horror would
        otherwise be ignored without a word)."""
        def check(request: Request) -> None:
            for key in request.query_params.keys():
                if key not in allowed:
                    takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
                    raise InputError(f"{short(key)}: unknown query parameter ({takes})", field=short(key))
        return Depends(check)

    # -- routes -----------------------------------------------------------------------------------------------
    @app.get("/health", response_model=Health, responses=errors_for(False, auth=False),
             dependencies=[query_params()])
    async def health():
        return {"status": "ok", "fusion": predictor.fusion}

    @app.get("/model", response_model=ModelInfo, responses=errors_for(False), dependencies=[query_params()])
    async def model():
        return model_info

    @app.post("/predict", response_model=Prediction, responses=errors_for(True), dependencies=[query_params()],
              openapi_extra={"requestBody": schema.form_body(predictor, limits)})
    async def predict(request: Request):
        form = await read_form(request, predict_fields)

        def run():
            return predictor.predict_one(*prepare(form))

        return await run_in_threadpool(run)

    @app.post("/predict/batch", response_model=BatchResponse, responses=errors_for(True),
              dependencies=[query_params()])
    async def predict_batch(body: BatchRequest):
        def run() -> dict:
            posters, plots = [], []
            for i, m in enumerate(body.movies):
                name = f"movies[{i}]"
                plot = check_plot(getattr(m, "plot", None), limits.max_plot_chars, f"{name}.plot")
                poster = None
                b64 = getattr(m, "poster_base64", None)
                if b64 is not None:
                    try:
                        data = base64.b64decode(b64, validate=True)
                    except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII text
                        raise InputError(f"{name}.poster_base64: not valid base64 ({e})",
                                         field=f"{name}.poster_base64") from None
                    poster = decode(data, f"{name}.poster_base64", f"{name}.poster_base64")
                check(poster, plot, name, "poster_base64")
                posters.append(poster)
                plots.append(plot)
            results = predictor.predict(posters, plots)
            return {"results": [{"id": m.id, **r} for m, r in zip(body.movies, results)]}

        return await run_in_threadpool(run)

    genre_query = Query(None, description="genre to explain (default: the most probable predicted genre)")
    GenreName = Annotated[str, Field(json_schema_extra={"enum": list(predictor.genres)})]  # noqa: N806

    # An exported (ONNX) model has no gradients to explain with: /explain is left out of its schema and answers 501
    # with the error body, which the page shows in place of the heat map.
    exported = bool(getattr(predictor, "exported", False))

    @app.post("/explain", response_model=Explanation, responses=errors_for(True), include_in_schema=not exported,
              dependencies=[query_params("genre", "steps")], openapi_extra={"requestBody": schema.form_body(predictor, limits)})
    async def explain_movie(request: Request, genre: GenreName | None = genre_query,
                            steps: int = Query(16, ge=1, le=64, description="integrated-gradients steps (plot)")):
        if exported:
            raise ServiceError(501, "explanations need the torch model: this server runs an exported (ONNX) model; "
                                    "serve the model folder it was exported from to explain")
        from ..inference.explain import explain

        if genre is not None and genre not in predictor.genres:
            raise InputError(f"genre: unknown genre {genre[:100]!r}; the model's genres are "
                             f"{', '.join(predictor.genres)}", field="genre")
        form = await read_form(request, predict_fields)

        def run():
            image, plot = prepare(form)
            t0 = time.perf_counter()
            result = explain(predictor, image, plot, genre, steps)
            result["seconds"] = time.perf_counter() - t0
            return result

        return await run_in_threadpool(run)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    schema.add_security(app, authenticated)
    return Guard(app, limits, api_key)
