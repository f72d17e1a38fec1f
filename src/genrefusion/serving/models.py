"""The service's bodies (pydantic): what /predict, /predict/batch, /explain, /health and /model answer with, and the
batch request, whose fields follow the loaded model and the limits (`batch_request`)."""
# No `from __future__ import annotations`: pydantic and FastAPI read these annotations at runtime.
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from . import schema
from .limits import Limits


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
    limits: dict[str, Any] = Field(description="what the server refuses: see docs/limits.md")
    api_key_required: bool
    runtime: str = Field(description="torch, or onnxruntime for an exported model (no /explain)")


class _BatchMovie(BaseModel):
    """The base of a model's BatchMovie (no fields): the check that a movie has the inputs the model needs."""

    names: ClassVar[tuple[str, ...]] = ()  # the movie's input fields: plot and/or poster_base64
    all_required: ClassVar[bool] = False
    fusion: ClassVar[str] = ""

    @model_validator(mode="after")
    def needs_input(self):
        names = type(self).names
        missing = [n for n in names if getattr(self, n) is None]
        if (self.all_required and missing) or len(missing) == len(names):
            what = " and ".join(missing) if self.all_required else " or ".join(names)
            raise ValueError(f"this {self.fusion} model needs {what}")
        return self


def batch_request(predictor, limits: Limits) -> type[BaseModel]:
    """The body of /predict/batch for this model: a movie has the fields of the modalities the model reads, and
    needs all of them or any one (schema.required_fields); at most `limits.max_batch` movies."""
    mods, all_required = schema.required_fields(predictor)
    fields: dict[str, Any] = {"id": (str | None, Field(None, max_length=256, description=(
        "any text, echoed back with this movie's result (results keep the request's order; ids need not be "
        "unique)")))}
    if "text" in mods:
        plot = schema.plot_schema(limits)
        fields["plot"] = (str | None, Field(None, min_length=1, max_length=limits.max_plot_chars,
                                            pattern=schema.NOT_BLANK_PATTERN, description=plot["description"]))
    if "image" in mods:
        b64 = Annotated[str, Field(min_length=4, json_schema_extra={  # the shortest base64 of a byte: 4 characters
            "format": "byte", "contentEncoding": "base64"})]  # checked when decoded
        fields["poster_base64"] = (b64 | None, Field(
            None, description="the poster file's bytes, base64-encoded; " + schema.poster_description(limits)))
    names = [{"text": "plot", "image": "poster_base64"}[m] for m in mods]
    movie = create_model("BatchMovie", __base__=_BatchMovie, __cls_kwargs__={
        "extra": "forbid", "json_schema_extra": schema.requirement(names, all_required, non_null=True)}, **fields)
    movie.names, movie.all_required, movie.fusion = tuple(names), all_required, predictor.fusion
    return create_model("BatchRequest", __config__=ConfigDict(extra="forbid"),
                        movies=(list[movie], Field(min_length=1, max_length=limits.max_batch)))
