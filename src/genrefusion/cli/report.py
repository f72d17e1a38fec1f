"""`genrefusion report`: the parser and handler over evaluation/report (Markdown + HTML + charts of a grid run)."""
from __future__ import annotations

from ..evaluation.report import write_report


def cmd_report(args) -> int:
    paths = write_report(args.run_dir, args.out)
    print(f"markdown: {paths['markdown']}\nhtml:     {paths['html']}")
    for p in paths["charts"]:
        print(f"chart:    {p}")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("report", help="Markdown + self-contained HTML report with charts for a grid run")
    p.add_argument("run_dir", help="a `genrefusion grid` output folder (holds grid.json)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")
    p.set_defaults(func=cmd_report)
