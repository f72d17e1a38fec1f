"""`genrefusion predict`: one movie, or a whole catalog, through a saved model.

The Predictor lives in predictor.py and the input checks in inputs.py; they are re-exported here, where they were
before (`from genrefusion.cli.predict import load_model, InputError` keeps working).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..data.loader import load_catalog
from ..inference.catalog import predict_catalog
from ..inference.inputs import (  # noqa: F401
    MAX_IMAGE_PIXELS,
    MAX_PLOT_CHARS,
    InputError,
    InputTooLarge,
    UnsupportedInput,
    check_plot,
    decode_poster,
    poster_decode_pixels,
)
from ..inference.predictor import Predictor, load_model

__all__ = ["MAX_IMAGE_PIXELS", "MAX_PLOT_CHARS", "InputError", "InputTooLarge", "Predictor", "UnsupportedInput",
           "add_cli", "check_plot", "cmd_predict", "decode_poster", "load_model", "poster_decode_pixels"]


def _read_plot(args) -> str | None:
    if args.plot_file:
        return Path(args.plot_file).read_text(encoding="utf-8")
    return args.plot


def cmd_predict(args) -> int:
    from ..data.posters import load_poster  # PIL only: an exported model runs without torch

    predictor = load_model(args.model)
    if args.input:
        return _predict_catalog(predictor, args)
    if args.poster is None and args.plot is None and args.plot_file is None:
        raise SystemExit("error: give --poster and/or --plot (or --input CATALOG)")
    poster = load_poster(args.poster) if args.poster else None
    result = predictor.predict_one(poster, check_plot(_read_plot(args)))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    shown = [r for r in result["genres"] if r["predicted"]] or result["genres"][:1]
    if not result["predicted"]:
        print("no genre reaches its threshold; the most probable one:")
    for r in shown:
        print(f"{r['genre']:<12} {r['probability']:.3f}  (threshold {r['threshold']:.2f})")
    c = result["contribution"]
    print("contribution: " + ", ".join(f"{m} {v:.0%}" for m, v in c.items()))
    for w in result["warnings"]:
        print(f"warning: {w['message']}", file=sys.stderr)
    return 0


def _predict_catalog(predictor: Predictor, args) -> int:
    """A CSV/JSONL catalog (data.load_catalog's format; labels optional) -> one prediction per movie, through
    inference.catalog.predict_catalog: resumable with --output, shared between the ranks under torchrun."""
    ds = load_catalog(args.input, strict=args.strict, require_labels=False)  # --allow-outside-posters: main
    if args.batch_size is not None:
        predictor.batch_sizes = {m: args.batch_size for m in predictor.modalities}
    run = predict_catalog(predictor, ds, args.output, chunk=args.chunk, batch_size=args.batch_size)
    for line in run.lines() if run.main else ():  # rank 0 speaks for all
        print(line, file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_cli(sub) -> None:
    p = sub.add_parser("predict", help="predict genres with a saved model (one movie or a whole catalog)")
    p.add_argument("--model", required=True,
                   help="saved model folder (a run's model/), or one written by `genrefusion export` (no torch)")
    p.add_argument("--poster", default=None, help="poster image file")
    p.add_argument("--plot", default=None, help="plot text")
    p.add_argument("--plot-file", default=None, help="read the plot from this UTF-8 text file")
    p.add_argument("--input", default=None, help="CSV/JSONL catalog (id, plot, poster) to predict as a whole")
    p.add_argument("--output", default=None,
                   help="catalog predictions file: .csv or .jsonl (default: JSONL to stdout). Resumable: killed and run "
                        "again, it continues from the chunks done in OUT.parts/; movies without a prediction are "
                        "listed in OUT.skipped.jsonl. Under torchrun the ranks share the chunks (OUT's folder must be "
                        "one they all see)")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help="items per encoder call (default: the encoder's CPU batch, 128 on a GPU)")
    p.add_argument("--chunk", type=_positive, default=256,
                   help="catalog movies handed to the model at a time (their posters decoded while the previous "
                        "chunk is encoded)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad catalog row instead of skipping it")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=cmd_predict)
