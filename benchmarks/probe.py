"""How much genre signal each registered offline encoder brings, before any head is trained: a linear probe and a
cosine kNN probe of its cached features, cross-validated (5 folds), macro average precision against chance
(genrefusion.evaluation.probe says exactly what is computed).

By default every encoder is probed over the same movies, the labelled movies of the data that have a plot and a
poster (so the chance column is the same for every row); `--modalities any` probes each encoder over every labelled
movie that has its modality. An encoder whose package is not installed is skipped, and named and counted below the
table. Features go through the feature cache, so a second run (or the grid afterwards) encodes nothing again.

    .venv/bin/python benchmarks/probe.py --data ../shared/data/mmimdb-sample
    .venv/bin/python benchmarks/probe.py --data ../shared/data/mmimdb-sample --limit 300 \\
        --encoders minilm-l6,efficientnet-lite0
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path

from genrefusion.data.loader import load_dataset
from genrefusion.data.modalities import MODALITIES
from genrefusion.encoders import list_encoders
from genrefusion.encoders.offline_weights import OfflineWeightsError
from genrefusion.evaluation import probe
from genrefusion.features.spec import FeatureSpec

# What building an encoder raises when the package carrying its weights or code is not installed: the import, the
# distribution's metadata (the multilingual encoders read their version), or offline_weights' own error naming it.
MISSING_PACKAGE = (ImportError, importlib.metadata.PackageNotFoundError, OfflineWeightsError)


def probe_all(dataset, names: list[str], movies_of, run=probe.probe_encoder, log=print, **kw):
    """run(dataset, name, movies_of(name), **kw) for each encoder; (results, skipped), skipped as (name, why) for
    each encoder whose package is missing (named in the log as it happens, and below the table)."""
    results, skipped = [], []
    for name in names:
        try:
            results.append(run(dataset, name, movies_of(name), **kw))
        except MISSING_PACKAGE as e:  # not silent: counted, named and printed with the table
            skipped.append((name, f"{type(e).__name__}: {e}"))
            log(f"skipped {name}: its package is missing ({e})")
            continue
        r = results[-1]
        log(f"{name}: linear {r['linear']:.4f}  kNN {r['knn']:.4f}  chance {r['chance']:.4f}  "
            f"({r['n']} movies, {r['seconds_features']:.1f} s for the features)")
    return results, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MM-IMDb folder or catalog")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--encoders", default=None, help="comma-separated offline encoders (default: every one)")
    ap.add_argument("--modalities", choices=("both", "any"), default="both",
                    help="both: every encoder over the movies with a plot and a poster; any: each over its own")
    ap.add_argument("--limit", type=int, default=None, help="probe a random LIMIT of those movies (seeded)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the folds and the --limit draw")
    ap.add_argument("--folds", type=int, default=probe.FOLDS)
    ap.add_argument("--min-positives", type=int, default=probe.MIN_POSITIVES)
    ap.add_argument("--c", type=float, default=probe.C, help="inverse L2 strength of the logistic regression")
    ap.add_argument("--k", type=int, default=probe.K, help="neighbours of the kNN probe")
    ap.add_argument("--json", default=None, help="also write every result (per genre too) to this JSON file")
    args = ap.parse_args(argv)

    offline = [s for s in list_encoders() if s.offline]
    names = args.encoders.split(",") if args.encoders else [s.name for s in offline]
    unknown = sorted(set(names) - {s.name for s in offline})
    if unknown:
        raise SystemExit(f"not registered offline encoders: {unknown}; offline: {[s.name for s in offline]}")
    modality = {s.name: s.modality for s in offline}
    dataset = load_dataset(args.data, "stratified", "any")  # the split is not used: the probe makes its folds
    shared = probe.probe_movies(dataset, MODALITIES, args.limit, args.seed) if args.modalities == "both" else None
    own = {m: probe.probe_movies(dataset, (m,), args.limit, args.seed) for m in MODALITIES}
    t = time.perf_counter()
    results, skipped = probe_all(dataset, names, lambda n: shared if shared is not None else own[modality[n]],
                                 features=FeatureSpec(cache_root=args.cache_dir), folds=args.folds, seed=args.seed,
                                 min_positives=args.min_positives, c=args.c, k=args.k)
    command = "benchmarks/probe.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"\nProbe of the offline encoders ({date.today().isoformat()}; {args.folds}-fold, macro-AP over the genres "
          f"with >= {args.min_positives} positives; chance = the genres' base rates)")
    print(f"  {command}")
    print(probe.format_probe_table(results))
    print(f"skipped: {len(skipped)}" + "".join(f"\n  {n}: {why}" for n, why in skipped))
    print(f"[{time.perf_counter() - t:.1f} s]")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": date.today().isoformat(), "command": command,
                                               "results": results, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
