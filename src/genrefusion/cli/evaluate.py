"""`genrefusion evaluate`: the parser and handler over evaluation/evaluate (a saved model scored on labelled
movies)."""
from __future__ import annotations

import argparse

from ..atomic import write_json
from ..config import CHOICES
from ..evaluation.evaluate import SPLITS, evaluate, format_evaluation


def cmd_evaluate(args) -> int:
    from ..features.spec import FeatureSpec  # lazy: it imports torch, which genrefusion --help must not

    r = evaluate(args.model, args.data, split=args.score_split, modalities=args.modalities, n_boot=args.bootstrap,
                 seed=args.seed, compare_with=args.compare, split_mode=args.split_mode,
                 features=FeatureSpec(cache_root=args.cache_dir, progress=not args.quiet))
    print(format_evaluation(r))
    if args.json:
        write_json(args.json, r)
        print(f"\nwritten: {args.json}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a saved model on labelled movies: every metric, per genre, "
                                        "bootstrap intervals; --compare pairs a second model")
    p.add_argument("--model", required=True, help="a saved model folder (or a run folder holding model/)")
    p.add_argument("--data", required=True, help="MM-IMDb folder or CSV/JSONL catalog with genres")
    # not --split: everywhere else (grid, train, features, --split-mode here) that is the split *mode*
    p.add_argument("--score-split", choices=SPLITS, default="test",
                   help="which movies are scored (all: every labelled movie)")
    p.add_argument("--modalities", choices=CHOICES["modalities"], default=None,
                   help="keep every movie (any) or only those with a poster and a plot (both); default: the "
                        "model's training setting")
    p.add_argument("--split-mode", dest="split_mode", choices=CHOICES["split"], default=None,
                   help="how the data is split (default: as the model was trained: its split mode and seed)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--compare", default=None, metavar="DIR2", help="a second model, scored on the same movies")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the full result as JSON")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $GENREFUSION_CACHE or "
                                                     "~/.cache/genrefusion)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
