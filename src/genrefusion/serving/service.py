"""What the routes share for one loaded model (`Service`, at app.state.service): the predictor, the limits, the
pixel budget, what /model shows, and the steps of reading a movie, each raising the 4xx that says what is wrong."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from ..version import __version__
from ..data.languages import scripts_of
from ..inference.inputs import InputError, check_plot, decode_poster, poster_decode_pixels
from . import schema
from .errors import short
from .limits import Limits, PixelBudget

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


def model_info(predictor, limits: Limits, authenticated: bool) -> dict[str, Any]:
    """The body of GET /model."""
    info = predictor.info()
    cfg = info.get("config", {})
    return {
        "version": __version__, "fusion": info["fusion"], "modalities": info["modalities"],
        "encoders": {m: encoder_label(n) for m, n in info["encoders"].items()}, "genres": info["genres"],
        "thresholds": info["thresholds"], "missing_modality_ok": info["missing_modality_ok"],
        "sequences": info["sequences"], "training": {k: cfg[k] for k in TRAINING_KEYS if k in cfg},
        "languages": {"text": info["languages"]} if "text" in info["modalities"] else {},
        "scripts": ({"text": None if info["languages"] is None else scripts_of(info["languages"])}
                    if "text" in info["modalities"] else {}),
        "limits": limits.public(), "api_key_required": authenticated,
        "runtime": "onnxruntime" if getattr(predictor, "exported", False) else "torch"}


class Service:
    def __init__(self, predictor, limits: Limits, authenticated: bool):
        self.predictor, self.limits = predictor, limits
        self.budget = PixelBudget(limits.decode_pixels)
        self.mods, self.all_required = schema.required_fields(predictor)
        self.form_fields = tuple(schema.FIELD[m] for m in ("image", "text") if m in self.mods)
        # An exported (ONNX) model has no gradients to explain with: /explain is left out of its schema and answers
        # 501 with the error body, which the page shows in place of the heat map.
        self.exported = bool(getattr(predictor, "exported", False))
        self.info = model_info(predictor, limits, authenticated)

    # -- reading a movie ------------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str, field: str):
        """Decode within the server's pixel budget (waits for it; 503 when it does not come in time)."""
        limits = self.limits
        cost = poster_decode_pixels(data)
        cost = cost if cost <= limits.max_image_pixels else 0  # over the limit: refused before decoding
        with self.budget.hold(cost, limits.queue_timeout_s, limits.retry_after_s):
            return decode_poster(data, name, limits.max_image_pixels, field=field)

    def check(self, poster, plot, movie: str = "", poster_field: str = "poster") -> None:
        """predictor.check, with the field at fault: the one missing input the model needs, else the movie."""
        try:
            self.predictor.check(poster, plot)
        except InputError as e:
            given = {"text": (plot, "plot"), "image": (poster, poster_field)}
            missing = [given[m][1] for m in self.mods if given[m][0] is None]
            field = (f"{movie}." if movie else "") + missing[0] if len(missing) == 1 else (movie or None)
            raise InputError(f"{movie}: {e}" if movie else str(e), field=field) from None

    async def read_form(self, request) -> dict[str, Any]:
        """The form's fields, each given at most once and each of the right kind; unknown fields are errors."""
        allowed = self.form_fields
        form = await request.form(max_files=4, max_fields=16, max_part_size=self.limits.max_body_bytes)
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

    def prepare(self, form: dict[str, Any]):
        """(poster image or None, plot or None) with every check that gives a 4xx."""
        if isinstance(form.get("plot"), str) and schema.form_literal(form["plot"]):
            raise InputError(f"plot: {form['plot'][:40]!r} is not a plot but what a client sends for a missing or "
                             "non-text value (e.g. FormData.append('plot', null)); leave the field out instead",
                             field="plot")
        plot = check_plot(form.get("plot"), self.limits.max_plot_chars)
        poster = None
        if "poster" in form:
            data, filename = form["poster"]
            poster = self.decode(data, f"poster {str(filename or '')[:100]!r}", "poster")
        self.check(poster, plot)
        return poster, plot

    def predict_batch(self, body) -> dict:
        """The /predict/batch answer for a validated body (runs in the threadpool)."""
        posters, plots = [], []
        for i, m in enumerate(body.movies):
            name = f"movies[{i}]"
            plot = check_plot(getattr(m, "plot", None), self.limits.max_plot_chars, f"{name}.plot")
            poster = None
            b64 = getattr(m, "poster_base64", None)
            if b64 is not None:
                try:
                    data = base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII text
                    raise InputError(f"{name}.poster_base64: not valid base64 ({e})",
                                     field=f"{name}.poster_base64") from None
                poster = self.decode(data, f"{name}.poster_base64", f"{name}.poster_base64")
            self.check(poster, plot, name, "poster_base64")
            posters.append(poster)
            plots.append(plot)
        results = self.predictor.predict(posters, plots)
        return {"results": [{"id": m.id, **r} for m, r in zip(body.movies, results)]}
