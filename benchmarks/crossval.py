"""An honest yardstick for the grid's rows: repeated cross-validation over every labelled movie with a plot and a
poster (genrefusion.training.crossval), each row's mean and 95% interval over folds x repeats, and the paired
fusion-minus-text difference with its interval.

Rows are the thesis grid's (names or model names), their encoders the grid's slots (offline stand-ins by default,
`--text-encoder SLOT=NAME` / `--image-encoder SLOT=NAME` as for `genrefusion grid`); fusion rows fuse `--fuse`.
Thresholds are tuned inside the training folds only (as the preset says: on the inner validation split, or with
threshold_source=oof on out-of-fold predictions over the training folds). `genrefusion grid --cv KxR` runs the same
(training.crossval.run_grid_crossval); this script adds --seed, --val-fraction and --limit, and its defaults are
the recommended preset and three rows.

    .venv/bin/python benchmarks/crossval.py --data ../shared/data/mmimdb-sample --cv 5x5 --preset recommended \\
        --rows BERT,RoBERTa,ResNet50,GMU --fuse RoBERTa,ResNet50
    .venv/bin/python benchmarks/crossval.py --data ../shared/data/mmimdb-sample --cv 3x1 --limit 300 \\
        --rows BERT,ResNet50,GMU epochs=3     # a quick check that it runs
"""
from __future__ import annotations

import argparse
import sys

from genrefusion.cli.commands import grid_data
from genrefusion.data.loader import DataSpec
from genrefusion.training import crossval
from genrefusion.training.grid import GridSpec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MM-IMDb folder or catalog")
    ap.add_argument("--cv", default="5x5", help="K or KxR: K folds, R repeats (default 5x5)")
    ap.add_argument("--rows", default=",".join(crossval.DEFAULT_ROWS), help="comma-separated thesis rows")
    ap.add_argument("--fuse", default="BERT,ResNet50", help="the text and the image slot the fusion rows fuse")
    ap.add_argument("--encoders", default="offline", help="named encoder set: offline, thesis, clip")
    ap.add_argument("--text-encoder", action="append", default=[], metavar="SLOT=NAME")
    ap.add_argument("--image-encoder", action="append", default=[], metavar="SLOT=NAME")
    ap.add_argument("--preset", default="recommended")
    ap.add_argument("--seed", type=int, default=0, help="seeds the folds (repeat r: seed + r) and --limit")
    ap.add_argument("--val-fraction", type=float, default=0.15,
                    help="share of the training folds held out for early stopping and thresholds")
    ap.add_argument("--limit", type=int, default=None, help="a random LIMIT of the movies (a quick run)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="output folder (default runs/crossval-<preset>-<time>)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every row")
    # what grid_data reads besides --data and the overrides (their data keys, e.g. strict=true, go to the DataSpec)
    ap.set_defaults(split=DataSpec.split, modalities=DataSpec.modalities)
    args = ap.parse_args(argv)

    folds, repeats = crossval.parse_cv(args.cv)
    data, overrides = grid_data(args)
    spec = GridSpec(data, preset=args.preset, config_overrides=overrides, cache_dir=args.cache_dir,
                    encoders=args.encoders, slot_overrides=args.text_encoder + args.image_encoder,
                    fuse=tuple(args.fuse.split(",")), rows=args.rows.split(","), out=args.out, report=False)
    crossval.run_grid_crossval(spec, folds, repeats, seed=args.seed, val_fraction=args.val_fraction,
                               limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
