"""The `genrefusion` command line. Each subcommand is a thin shell over a library function."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..config import CHOICES, load_config, parse_override
from ..data.catalog import ALLOW_OUTSIDE_POSTERS_ENV, ALLOW_OUTSIDE_POSTERS_OPTION, outside_posters_allowed
from ..data.download import DownloadError
from ..data.loader import DataError, DataSpec
from ..data.modalities import SPECS
from ..data.summary import data_summary, format_data_line, format_summary
from ..training.tracking import DEFAULT_EXPERIMENT, TRACKERS, open_tracker, tracked_experiment


def _add_data_options(p: argparse.ArgumentParser, split_default: str = "official") -> None:
    p.add_argument("--split", choices=CHOICES["split"], default=split_default,
                   help="official: split.json; stratified: Arevalo et al.'s sampling (rarest genre first, 0.6/0.1/0.3)")
    p.add_argument("--modalities", choices=CHOICES["modalities"], default="any",
                   help="any: every movie (missing poster/plot masked); both: only movies with a poster and a plot")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("--plot-mode", choices=CHOICES["plot_mode"], default="join",
                   help="join all plot paragraphs, or keep the longest one (Arevalo et al.)")
    p.add_argument("--split-seed", type=int, default=1234, help="seed of the stratified split")


# Every command that reads an MM-IMDb folder or a catalog (besides `data summary`, whose parser is built here): a
# catalog's posters must be inside its folder unless the user passes this (data/catalog.py); main() applies it.
READS_DATA = ("features", "train", "grid", "evaluate", "robustness", "distill", "export", "demo", "predict",
              "calibrate")


def add_outside_posters_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(ALLOW_OUTSIDE_POSTERS_OPTION, action="store_true",
                   help="read a catalog's `poster` paths wherever they lead (by default a poster must be inside the "
                        f"catalog's folder, symlinks resolved, and a row whose poster is not is skipped and named; "
                        f"also ${ALLOW_OUTSIDE_POSTERS_ENV}=1)")


def _data_spec(args) -> DataSpec:
    """The data the options of _add_data_options (and --data) name."""
    return DataSpec(args.data, args.split, args.modalities, args.split_seed, args.strict, args.plot_mode)


def cmd_data_summary(args) -> int:
    ds = _data_spec(args).load()
    summary = data_summary(ds)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_features(args) -> int:
    from ..encoders import check_encoder_use  # lazy: keeps cli.commands free of torch
    from ..features.cache import dataset_features  # lazy: keeps cli.commands free of safetensors, torch
    from ..features.spec import FeatureSpec  # here: it imports torch, which the parser must not

    for name, modality in ((args.text, "text"), (args.image, "image")):  # --sequences from a pooled-only encoder
        if name:
            check_encoder_use(name, modality, sequences=args.sequences)
    features = FeatureSpec(cache_root=args.cache_dir, device=args.device, precision=args.precision,
                           backend=args.backend, num_workers=args.num_workers, batch_size=args.batch_size)
    ds = _data_spec(args).load()
    print(f"{format_data_line(data_summary(ds), args.modalities)}\ncache: {features.cache_root}")
    for modality in SPECS.values():  # --text / --image name the encoders; their options (--pooling) are shared
        name = getattr(args, modality.name)
        if not name:
            continue
        kwargs = {k: getattr(args, k) for k in modality.encoder_options}
        t0 = time.perf_counter()
        encoder = features.create_encoder(name, **kwargs)
        table = dataset_features(ds, encoder, features, sequences=args.sequences)
        dt = time.perf_counter() - t0
        print(f"{encoder.modality:>5} {name}: {int(table.present.sum()):,} movies x {table.dim}, "
              f"{table.encoded_now:,} newly encoded" + (f" ({table.backend}, {table.precision})" if table.backend
                                                        else "") + f", {dt:.1f} s")
    return 0


def _add_track_options(p: argparse.ArgumentParser) -> None:
    """--track and friends (tracking.py; the trackers are the optional extra genrefusion[track])."""
    p.add_argument("--track", choices=TRACKERS, default=None,
                   help="log config, per-epoch curves, final metrics (and with mlflow the model folder) to an "
                        "experiment tracker; needs pip install 'genrefusion[track]'")
    p.add_argument("--track-uri", default=None, metavar="URI",
                   help="mlflow: any tracking URI (default: a SQLite store sqlite:///<out>/mlflow.db); "
                        "tensorboard: the log folder (default: each run folder's tensorboard/)")
    p.add_argument("--track-experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                   help=f"mlflow experiment name (default {DEFAULT_EXPERIMENT})")


class _Noted(argparse.Action):
    """Stores the option's value, as argparse's default action does, and notes that it was given (args.given):
    `grid --cv` refuses a single-split option even when it is given its default value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), option_string}


# The grid's options that say how its single split is made, trained or tracked: with --cv the folds replace them.
CV_REFUSED = ("--split", "--modalities", "--seeds", "--track", "--track-uri")


def _add_grid_parser(sub) -> None:
    """`genrefusion grid`'s options."""
    p = sub.add_parser("grid", help="the thesis grid: 4 unimodal + 5 fusion models, tables 6 and 7")
    p.add_argument("--preset", default="thesis")
    p.add_argument("--data", required=True)
    p.add_argument("--split", choices=CHOICES["split"], default="official", action=_Noted)
    p.add_argument("--modalities", choices=CHOICES["modalities"], default="any", action=_Noted)
    p.add_argument("--cv", default=None, metavar="K[xR]",
                   help="cross-validate the rows instead of training them once on the split: R repeats (default 1) "
                        "of K folds (K >= 2) over every labelled movie with a plot and a poster; prints each row's "
                        "mean and 95%% interval and the paired fusion-minus-text difference, writes crossval.json "
                        f"(no report). Not with {', '.join(CV_REFUSED)} or --fuse auto")
    p.add_argument("--encoders", choices=["offline", "thesis", "clip"], default="offline",
                   help="offline: pretrained stand-ins that ship on PyPI; thesis: BERT/RoBERTa/ResNet50/ViT from the "
                        "hub; clip: CLIP ViT-B/32 text and image towers (hub) as the fused pair")
    p.add_argument("--text-encoder", action="append", default=[], metavar="[SLOT=]NAME",
                   help="fill a text slot (BERT or RoBERTa); a bare NAME fills BERT, the slot the fusions use")
    p.add_argument("--image-encoder", action="append", default=[], metavar="[SLOT=]NAME",
                   help="fill an image slot (ResNet50 or ViT); a bare NAME fills ResNet50, the slot the fusions use")
    p.add_argument("--fuse", default="BERT,ResNet50", metavar="TEXT_SLOT,IMAGE_SLOT",
                   help="the slots the fusion rows combine (the thesis: BERT,ResNet50); slots of one modality joined "
                        "by '+' are read side by side, e.g. RoBERTa,ResNet50+ViT; auto: the text and image slots "
                        "whose unimodal rows score best on validation")
    p.add_argument("--rows", default=None, help="comma-separated subset of rows (names or model names)")
    p.add_argument("--seeds", type=int, default=1, action=_Noted,
                   help="train every model with this many seeds (mean ± std)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None, help="run folder (default runs/grid-<preset>-<time>)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides applied to every model")
    _add_track_options(p)
    p.set_defaults(func=cmd_grid, usage_error=p.error)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrefusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("summary", help="counts per split, modalities, skipped input, per-genre distribution")
    p.add_argument("data", help="MM-IMDb folder (split.json + dataset/) or a CSV/JSONL catalog")
    _add_data_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_outside_posters_option(p)
    p.set_defaults(func=cmd_data_summary)

    p = sub.add_parser("features", help="encode every movie once into the feature cache")
    p.add_argument("--data", required=True)
    p.add_argument("--text", default="minilm-l6", help="text encoder name, HF id or folder ('' to skip)")
    p.add_argument("--image", default="efficientnet-lite0", help="image encoder name, HF id or folder ('' to skip)")
    p.add_argument("--pooling", choices=CHOICES["pooling"], default="cls")
    p.add_argument("--sequences", action="store_true", help="also store fp16 token/patch sequences")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="default: $GENREFUSION_CACHE or ~/.cache/genrefusion")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cuda, cuda:1, cpu")
    p.add_argument("--precision", choices=CHOICES["precision"], default="auto",
                   help="autocast while encoding (auto: bf16 on a GPU; on a CPU fp32 unless the measured evidence shows "
                        "bf16 native, faster and keeping quality, see docs/cpu.md); part of the cache key")
    p.add_argument("--backend", choices=CHOICES["feature_backend"], default="auto",
                   help="what runs the encoders on a CPU: torch, or the same fp32 model in ONNX Runtime (auto: where "
                        "measured faster here and agreeing with torch; the features and cache entry are the same)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="processes preparing batches ahead of the encoder (default: 0 on CPU, up to 12 on GPU)")
    _add_data_options(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("train", help="train and evaluate one model")
    p.add_argument("--config", default=None, help="YAML file of config keys (may name a preset)")
    p.add_argument("--preset", default=None, help="thesis (default) or recommended")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model=gmu lr=1e-3 data=PATH")
    _add_track_options(p)
    p.set_defaults(func=cmd_train)

    _add_grid_parser(sub)

    p = sub.add_parser("compare", help="paired bootstrap CI of the macro/micro-F1 difference of two models on test")
    p.add_argument("run_a", help="run folder, or a grid row folder with seed-*/ subfolders")
    p.add_argument("run_b")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ensemble", action="store_true",
                   help="compare each row's seed ensemble (probabilities averaged over seeds, thresholds re-tuned on "
                        "the averaged validation probabilities) instead of its seed-averaged score")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    _add_plugins(sub)
    return parser


def _add_plugins(sub) -> None:
    """The later layers' subcommands (reports, serving, download, ...), then the option every data reader takes."""
    for module in PLUGIN_MODULES:
        importlib.import_module(module).add_cli(sub)
    for name in READS_DATA:
        if name in sub.choices:
            add_outside_posters_option(sub.choices[name])


# Each of these modules defines `add_cli(subparsers)` and imports its heavy dependencies inside its commands, so
# `genrefusion --help` stays fast.
PLUGIN_MODULES: tuple[str, ...] = ("genrefusion.cli.report", "genrefusion.cli.predict", "genrefusion.serving",
                                   "genrefusion.cli.explain", "genrefusion.cli.download", "genrefusion.cli.robustness",
                                   "genrefusion.cli.distill", "genrefusion.cli.export", "genrefusion.cli.evaluate",
                                   "genrefusion.cli.demo", "genrefusion.cli.calibrate")


def cmd_train(args) -> int:
    from ..distributed import is_main  # lazy: keeps cli.commands free of torch

    cfg = load_config(args.config, args.preset, args.overrides)
    if not cfg.data:
        raise SystemExit("error: no data: set `data:` in the config or pass data=PATH")
    run_dir = Path(cfg.out) / (cfg.name or f"{cfg.model}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    # before any training: a tracker that cannot be used stops here (rank 0 alone tracks under torchrun)
    tracker = open_tracker(args.track, args.track_uri, args.track_experiment, cfg.out) if is_main() else None
    m = tracked_experiment(tracker, cfg, run_dir)
    t = m["test"]
    print(f"test: hamming acc {t['hamming_accuracy']:.4f}  F1 macro {t['f1_macro']:.4f}  micro {t['f1_micro']:.4f}"
          f"  weighted {t['f1_weighted']:.4f}  samples {t['f1_samples']:.4f}")
    print(f"results: {run_dir}")
    return 0


def cmd_compare(args) -> int:
    from ..evaluation.compare import compare, format_comparison  # lazy: keeps cli.commands free of scipy, sklearn

    result = compare(args.run_a, args.run_b, n_boot=args.n_boot, seed=args.seed, ensemble=args.ensemble)
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0


def _slot_items(values: list[str], default_slot: str) -> list[str]:
    return [v if "=" in v else f"{default_slot}={v}" for v in values]


def grid_data(args) -> tuple[DataSpec, list[str]]:
    """A grid's (or the demo's) DataSpec, and the key=value overrides left for its models: --data, --split and
    --modalities, with the data keys among the overrides (split_seed=7, strict=true, plot_mode=longest) read
    into it as a config reads them."""
    mine = [o for o in args.overrides if parse_override(o)[0] in DataSpec.CONFIG_KEYS]
    cfg = load_config(overrides=mine).replace(data=args.data, split=args.split, modalities=args.modalities)
    return DataSpec.from_config(cfg), [o for o in args.overrides if o not in mine]


def _grid_spec(args):
    """The GridSpec the grid's options name."""
    from ..training.grid import GridSpec  # here: the grid imports torch, which the parser must not

    data, overrides = grid_data(args)
    slots = _slot_items(args.text_encoder, "BERT") + _slot_items(args.image_encoder, "ResNet50")
    return GridSpec(data, preset=args.preset, config_overrides=overrides, cache_dir=args.cache_dir,
                    encoders=args.encoders, slot_overrides=slots, fuse=tuple(args.fuse.split(",")),
                    rows=args.rows.split(",") if args.rows else None,
                    seeds=args.seeds, out=args.out, report=not args.no_report, track=args.track,
                    track_uri=args.track_uri, track_experiment=args.track_experiment)


def cmd_grid(args) -> int:
    if args.cv is not None:
        return _cmd_grid_cv(args)
    from ..training.grid import run_grid  # here: the grid imports torch, which the parser must not

    run_grid(_grid_spec(args))
    return 0


def _cmd_grid_cv(args) -> int:
    """`grid --cv K[xR]`: the grid's rows cross-validated (training.crossval.run_grid_crossval). An option that
    only means something for a single split is refused as argparse refuses a bad option (usage, exit status 2)."""
    given = {*getattr(args, "given", ()), *(o for o, v in (("--track", args.track), ("--track-uri", args.track_uri))
                                              if v is not None)}  # the tracking options default to None
    refused = [o for o in CV_REFUSED if o in given] + (["--fuse auto"] if args.fuse == "auto" else [])
    refused += [o for o in args.overrides if parse_override(o)[0] in ("split", "modalities", "split_seed")]
    if refused:
        args.usage_error(f"{', '.join(refused)}: not with --cv (its folds replace the single split: every labelled "
                         "movie with a plot and a poster, repeat r's heads seeded seed + r; it is not tracked)")
    from ..training.crossval import parse_cv, run_grid_crossval  # here: crossval imports torch, as the grid does

    try:
        folds, repeats = parse_cv(args.cv)
    except ValueError as exc:
        args.usage_error(f"argument --cv: {exc}")
    run_grid_crossval(_grid_spec(args), folds, repeats)
    return 0


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message comes (not the one at creation, which a test
    harness or a redirect may have closed since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_library_messages() -> None:
    """genrefusion's warnings, and the one INFO line a calibration leaves (features/calibrate.py), on stderr."""
    log = logging.getLogger("genrefusion")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    logging.getLogger("genrefusion.features.calibrate").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_library_messages()
    # Under torchrun (WORLD_SIZE > 1): join the process group; every rank runs the command, only rank 0 prints
    # (errors still show). Otherwise torch is not imported here: not for --help, not for an exported model.
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from ..distributed import init_from_env, is_main  # lazy: keeps cli.commands free of torch

        if init_from_env() and not is_main():
            sys.stdout = open(os.devnull, "w")
    try:
        if getattr(args, "allow_outside_posters", False):  # for whichever function reads the catalog

            with outside_posters_allowed(True):
                return args.func(args)
        return args.func(args)
    except BrokenPipeError:  # `genrefusion ... | head`: the reader left; say nothing more (Python's own advice)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (DataError, ValueError, OSError, DownloadError) as exc:  # OSError: FileNotFoundError, PermissionError,
        print(f"error: {exc}", file=sys.stderr)                     # a full disk ... named by their message
        return 2


if __name__ == "__main__":
    sys.exit(main())
