"""Reports for a grid run: one Markdown file, one self-contained HTML page and the PNG charts, in RUN_DIR/report/.

Everything is read from the run folder's own files (grid.json, data_summary.json, each run's metrics.json and
test_predictions.safetensors), so a report can be rebuilt at any time and every number in it traces back to a file.
The layout follows the thesis (Tables 1, 2, 6, 7, 8 and Figures 1, 2) and adds what a single-run table cannot show:
per-genre F1, training curves, the GMU gate per genre, mean ± std over seeds, and the thesis's published numbers
side by side with an explicit warning whenever the run is not the full benchmark.

The grid folder is read by genrefusion/runs.py (read_grid: every file checked, a bad one named). One module per job:
  aggregate.py  the numbers (Table 8, per genre, shares, curves)
  reference.py  this run next to the thesis       charts.py     the PNG figures (matplotlib)
  blocks.py     what a report is made of          render.py     Markdown, and HTML from it (markdown-it-py)
  sections.py   the sections, in the thesis's order
The thesis's own numbers live in genrefusion/thesis.py.

This package is imported by every `genrefusion` invocation (the CLI registers its subcommand), so only light
modules load here; the rest (scikit-learn through the statistics, matplotlib) load when a report is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...atomic import write_text
from ..runs import Grid, read_grid
from ..thesis import METRICS, THESIS_DATA, THESIS_SPLIT, THESIS_TABLE6, THESIS_TABLE7, THESIS_TABLE8

Run, load_run = Grid, read_grid  # the names this package gave them before runs.py


def __getattr__(name: str):  # the heavier parts, on first use (PEP 562)
    if name == "not_benchmark_reasons":
        from .reference import not_benchmark_reasons  # lazy: keeps evaluation.report free of scipy, sklearn

        return not_benchmark_reasons
    if name == "build_report":
        from .sections import build_report  # lazy: keeps evaluation.report free of scipy, sklearn

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write RUN_DIR/report/{report.md, report.html, fig*.png} (or into `out_dir`). Returns
    {"markdown": path, "html": path, "charts": [paths]}."""
    # lazy: evaluation.report.render, evaluation.report.render imports this module
    from .render import to_html, to_markdown
    from .sections import build_report  # lazy: keeps evaluation.report free of scipy, sklearn

    run = read_grid(run_dir)
    out = Path(out_dir) if out_dir else run.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = build_report(run, out)
    md, page = out / "report.md", out / "report.html"
    write_text(md, to_markdown(rep, out))  # atomic: a report is never half-written
    write_text(page, to_html(rep))
    return {"markdown": md, "html": page, "charts": rep.charts}


__all__ = ["METRICS", "THESIS_DATA", "THESIS_SPLIT", "THESIS_TABLE6", "THESIS_TABLE7", "THESIS_TABLE8", "Grid",
           "Run", "build_report", "load_run", "not_benchmark_reasons", "read_grid",
           "write_report"]
