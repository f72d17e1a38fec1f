"""`genrefusion calibrate`: runs or shows the speed calibration `auto` uses on this CPU (features/calibrate.py)."""
from __future__ import annotations

DEFAULT_DATA = "../shared/data/mmimdb-sample"


def cmd_calibrate(args) -> int:
    from ..data.loader import DataSpec  # lazy: the loader imports torch, which genrefusion --help must not
    from ..features.calibrate import calibrate_on, record_path, recorded  # lazy: they import torch
    from ..features.spec import FeatureSpec  # lazy: it imports torch

    features = FeatureSpec(cache_root=args.cache_dir, device="cpu", progress=False)
    names = args.encoders.split(",") if args.encoders else default_encoders()
    encoders = [features.create_encoder(name) for name in names]  # an unknown name stops before any work
    dataset = DataSpec(args.data).load()
    print(f"cache: {features.cache_root}; {len(dataset.movies):,} movies in {args.data}")
    for encoder in encoders:
        measured_now = args.again or recorded(encoder, features.cache_root) is None
        record = calibrate_on(dataset, encoder, features, again=args.again, min_work=0)  # asked for: any size
        if record is None:
            print(f"{encoder.name}: nothing to calibrate (no {encoder.modality} item in the data, or the encoder "
                  "does not run in torch on the CPU)")
            continue
        path = record_path(features.cache_root, encoder, record["key"])
        print(f"\n{'measured now' if measured_now else 'recorded ' + record['measured']} "
              f"({path})\n{record['why']}")
        print(format_candidates(record))
    return 0


def default_encoders() -> list[str]:
    """The offline encoders of the default grid (its four stand-ins)."""
    from ..training.grid import resolve_slots  # lazy: the grid imports torch

    return sorted(set(resolve_slots("offline").values()))


def format_candidates(record: dict) -> str:
    lines = [f"  {'candidate':<18} {'items/s':>8} {'vs fp32':>8} {'worst cos':>9}  verdict"]
    for r in record["candidates"]:
        speed = f"{r['items_per_s']:8.2f} {'x' + format(r['speedup'], '.2f'):>8}" if "items_per_s" in r else \
            f"{'-':>8} {'-':>8}"
        cosine = f"{r['min_cosine']:9.5f}" if "min_cosine" in r else f"{'-':>9}"
        lines.append(f"  {r['backend'] + ' ' + r['precision']:<18} {speed} {cosine}  {r['verdict']}")
    return "\n".join(lines) + f"\n  ({record['items']} items, {record['load']})"


def add_cli(sub) -> None:
    p = sub.add_parser("calibrate", help="time torch fp32 / bf16 / ONNX Runtime for each encoder on this CPU and "
                                         "record what --precision auto and --backend auto use (or show the record)")
    p.add_argument("--encoders", default=None,
                   help="comma-separated encoder names, HF ids or folders (default: the grid's offline stand-ins)")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help=f"MM-IMDb folder or catalog whose first items are timed (default {DEFAULT_DATA})")
    p.add_argument("--cache-dir", default=None, help="default: $GENREFUSION_CACHE or ~/.cache/genrefusion")
    p.add_argument("--again", action="store_true", help="measure again even where a record exists")
    p.set_defaults(func=cmd_calibrate)
