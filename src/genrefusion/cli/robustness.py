"""`genrefusion robustness`: the parser and handler over evaluation/robustness (saved models scored under
corrupted plots and posters)."""
from __future__ import annotations

from ..config import CHOICES
from ..evaluation.robustness import CORRUPTIONS, DEFAULT_LEVELS, run_robustness


def cmd_robustness(args) -> int:
    from ..features.spec import FeatureSpec  # lazy: it imports torch, which genrefusion --help must not

    features = FeatureSpec(cache_root=args.cache_dir, progress=False)  # the clean inputs': no bar of their own
    paths = run_robustness(args.model, args.data, args.out, split=args.score_split, modalities=args.modalities,
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
    # not --split: everywhere else (grid, train, features, --split-mode here) that is the split *mode*
    p.add_argument("--score-split", choices=("test", "dev", "train", "all"), default="test",
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
