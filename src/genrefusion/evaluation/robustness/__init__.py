"""`genrefusion robustness`: saved models scored under increasingly corrupted plots and posters, as MultiBench
measures robustness for MM-IMDb, drawn as curves of macro-F1 (and micro-F1) against the corruption level.

    genrefusion robustness --model runs/grid/bert/seed-42/model --model runs/grid/gmu/seed-42/model \\
        --data ../shared/data/mmimdb-sample --out runs/robustness

  corruptions.py  the corruptions: pure functions of (item, level in [0, 1], rng), the identity at level 0
  measure.py      the scores: every model on the same movies, clean features from the cache, corrupted items
                  encoded by the models' own encoders (once per encoder)
  page.py         robustness.json, one PNG per corruption, robustness.md and robustness.html

Imported by the CLI parser: only the corruption table (PIL) loads here; torch and the rest load in the command.
"""
from __future__ import annotations

import time
from pathlib import Path

from ...config import CHOICES
from .corruptions import CORRUPTIONS, DEFAULT_LEVELS

__all__ = ["CORRUPTIONS", "DEFAULT_LEVELS", "add_cli", "cmd_robustness", "run_robustness"]


def run_robustness(model_dirs, data, out=None, **kwargs) -> dict:
    """measure.measure, then the page: returns {"result": ..., "json", "markdown", "html", "charts"}."""
    from .measure import measure
    from .page import write_page

    result = measure(model_dirs, data, **kwargs)
    out = Path(out) if out else Path("runs") / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"
    return {"result": result, **write_page(result, out)}


def cmd_robustness(args) -> int:
    from ...features.spec import FeatureSpec  # here: the CLI parser imports this module, and it imports torch

    features = FeatureSpec(cache_root=args.cache_dir, progress=False)  # the clean inputs': no bar of their own
    paths = run_robustness(args.model, args.data, args.out, split=args.scored_split, modalities=args.modalities,
                           corruptions=args.corruptions, levels=args.levels, seed=args.seed, limit=args.limit,
                           split_mode=args.split_mode, features=features, use_cache=not args.no_cache,
                           batch_size=args.batch_size, progress=not args.quiet)
    print(f"markdown: {paths['markdown']}\nhtml:     {paths['html']}\njson:     {paths['json']}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("robustness", help="score saved models under corrupted plots and posters (MultiBench-style "
                                          "robustness curves: PNG + Markdown + HTML)")
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="a saved model folder (a run's model/); repeat to put several models on one chart")
    p.add_argument("--data", required=True, help="MM-IMDb folder or a labelled CSV/JSONL catalog")
    # dest is not "split": that config key is the split *mode* (--split-mode here), with its own choices
    p.add_argument("--split", dest="scored_split", choices=("test", "dev", "train", "all"), default="test",
                   help="the part of the data scored (default test; all: every movie)")
    p.add_argument("--modalities", choices=CHOICES["modalities"], default="both",
                   help="both (default): only movies with a plot and a poster, so every corruption changes every "
                        "movie; any: every movie all the models can score")
    p.add_argument("--corruptions", default=None, metavar="A,B",
                   help=f"comma-separated subset of: {', '.join(CORRUPTIONS)} (default: all)")
    p.add_argument("--levels", default=None, metavar="L1,L2",
                   help="corruption levels in [0, 1] (0, the clean input, is always added; default "
                        f"{','.join(f'{x:g}' for x in DEFAULT_LEVELS)})")
    p.add_argument("--seed", type=int, default=0, help="seed of every corruption (the curves are reproducible)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score a seeded random sample of N movies of the split (quicker on a CPU)")
    p.add_argument("--split-mode", choices=CHOICES["split"], default=None,
                   help="how the data is split (default: as the models were trained)")
    p.add_argument("--batch-size", type=int, default=None, help="encoding batch (default: the modality's CPU batch)")
    p.add_argument("--cache-dir", default=None, help="feature cache for the clean inputs (default: $GENREFUSION_CACHE)")
    p.add_argument("--no-cache", action="store_true",
                   help="encode the clean inputs too instead of reading (and filling) the feature cache")
    p.add_argument("--out", default=None, help="output folder (default runs/robustness-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_robustness)
