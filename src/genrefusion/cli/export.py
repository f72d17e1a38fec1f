"""`genrefusion export`: the parser and handler over inference/export (a saved model as ONNX graphs)."""
from __future__ import annotations

import sys

from ..inference.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, export_onnx


def cmd_export(args) -> int:
    if args.format != "onnx":
        raise SystemExit(f"error: unsupported format {args.format!r}")
    export_onnx(args.model, args.out, opset=args.opset, tolerance=args.tolerance, check_data=args.check_data,
                check_movies=args.check_movies, log=lambda s: print(s, file=sys.stderr))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("export", help="write a saved model as ONNX graphs that serve and predict run without torch",
                       description="Export a saved model folder for onnxruntime; `serve --model OUT` and "
                                   "`predict --model OUT` then run it without torch (explanations stay torch-only).")
    p.add_argument("--model", required=True, help="saved model folder (a run's model/)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest probability difference from the torch model (fp32) accepted on the check movies")
    p.add_argument("--check-data", default=None,
                   help="MM-IMDb folder or catalog whose first movies check the export (default: built-in probes)")
    p.add_argument("--check-movies", type=int, default=32, help="how many movies of --check-data")
    p.set_defaults(func=cmd_export)
