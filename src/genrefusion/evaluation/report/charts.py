"""The report's charts: matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), each
drawn from the numbers of aggregate.py and saved as a PNG beside the report."""
from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...atomic import write_bytes
from ..thesis import METRICS, THESIS_DATA, THESIS_SPLIT, THESIS_TABLE6, THESIS_TABLE7
from .aggregate import curves, mean_of, std_of
from .blocks import HEADERS, KIND_TITLE, encoder_training
from ..runs import Grid

KIND_COLOR = {"unimodal": "#4C72B0", "fusion": "#DD8452"}
THESIS_COLOR = "#9a9a9a"


def short_label(row: dict[str, Any], width: int = 22) -> str:
    """Chart label: row name, then the encoders on a wrapped second line (folder paths shortened to their name)."""
    names = " + ".join(Path(n).name or n for n in row["encoders"].values())
    lines = textwrap.wrap(f"[{names}]", width, break_on_hyphens=False, break_long_words=False)  # whole names only
    return "\n".join([row["row"], *lines])


def _figure(**kw):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(layout="constrained", **kw)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    return write_bytes(path, buf.getvalue())  # atomic: a chart is never half-written


def _err(values: Sequence[Any]) -> np.ndarray | None:
    stds = [std_of(v) for v in values]
    return None if all(s is None for s in stds) else np.array([s or 0.0 for s in stds])


def chart_group_averages(run: Grid, avgs: dict[str, Any], path: Path) -> Path:
    fig = _figure(figsize=(10, 5.2))
    ax = fig.add_subplot()
    x, w = np.arange(len(METRICS)), 0.38
    tops = np.zeros(len(METRICS))
    for i, (key, name) in enumerate((("unimodal", "Unimodal (mean of rows)"), ("fusion", "Multimodal (mean of rows)"))):
        vals = [avgs[key][m] for m in METRICS]
        means = np.array([mean_of(v) for v in vals])
        err = _err(vals)
        bars = ax.bar(x + (i - 0.5) * w, means, w, yerr=err, capsize=4, label=name,
                      color=KIND_COLOR[key], edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in means], padding=2 if err is None else 8, fontsize=8)
        tops = np.maximum(tops, means + (err if err is not None else 0))
    for j, m in enumerate(METRICS):
        ax.text(x[j], tops[j] + 0.07, f"{mean_of(avgs['improvement_pct'][m]):+.1f}%", ha="center",
                fontsize=9, fontweight="bold", color="#333333")
    ax.set_xticks(x, [HEADERS[m] for m in METRICS])
    ax.set_ylabel("score on test")
    ax.set_ylim(0, min(1.25, max(tops) + 0.2))
    ax.set_title("Unimodal vs multimodal average (bold: improvement of multimodal over unimodal)")
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def chart_all_models(run: Grid, path: Path) -> Path:
    """One panel per metric in a 2 x 3 grid (the sixth cell holds the legend), so labels stay legible at page width."""
    from matplotlib.patches import Patch

    rows = run.rows  # grid order already puts unimodal rows before fusion rows
    fig = _figure(figsize=(14, 2 * (0.42 * len(rows) + 1.3)))
    axes = fig.subplots(2, 3, sharey=True).ravel()
    y = np.arange(len(rows))[::-1]
    n_uni = sum(r["kind"] == "unimodal" for r in rows)
    for ax, m in zip(axes, METRICS):
        vals = [r["test"].get(m) for r in rows]
        means, err = np.array([mean_of(v) for v in vals]), _err(vals)
        ax.barh(y, means, xerr=err, capsize=3, color=[KIND_COLOR[r["kind"]] for r in rows],
                edgecolor="black", linewidth=0.5)
        ends = means + (err if err is not None else 0)  # labels start right of the error bar, never on it
        for yi, v, end in zip(y, means, ends):
            ax.text(end + 0.015, yi, f"{v:.3f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.15)
        ax.set_title(HEADERS[m])
        ax.set_xlabel("score on test")
        ax.grid(axis="x", alpha=0.3)
        if 0 < n_uni < len(rows):
            ax.axhline(y[n_uni - 1] - 0.5, color="black", linewidth=0.8, linestyle=":")
        ax.set_yticks(y, [short_label(r) for r in rows], fontsize=8)
    axes[-1].axis("off")
    kinds = dict.fromkeys(r["kind"] for r in rows)
    axes[-1].legend(handles=[Patch(color=KIND_COLOR[k], label=KIND_TITLE[k]) for k in kinds], loc="center",
                    frameon=False, title="model type" + (f"\n(error bars: ± std over {run.n_seeds} seeds)"
                                                         if run.n_seeds > 1 else ""))
    fig.suptitle("Every model on the test split, grouped by type")
    return _save(fig, path)


def chart_vs_thesis(run: Grid, path: Path) -> Path:
    thesis = {**THESIS_TABLE6, **THESIS_TABLE7}
    rows = run.rows
    fig = _figure(figsize=(14, 0.6 * len(rows) + 2.4))
    axes = fig.subplots(1, 2, sharey=True)
    y, h = np.arange(len(rows))[::-1], 0.38
    for ax, m in zip(axes, ("f1_macro", "f1_micro")):
        j = METRICS.index(m)
        vals = [r["test"].get(m) for r in rows]
        ax.barh(y + h / 2, [mean_of(v) for v in vals], h, xerr=_err(vals), capsize=3, label="this run",
                color=[KIND_COLOR[r["kind"]] for r in rows], edgecolor="black", linewidth=0.5)
        ref = [thesis[r["row"]][j] if r["row"] in thesis else np.nan for r in rows]
        ax.barh(y - h / 2, ref, h, color=THESIS_COLOR, hatch="//", edgecolor="black", linewidth=0.5,
                label="thesis (full MM-IMDb, fine-tuned)")
        ax.set_title(HEADERS[m])
        ax.set_xlabel("score on test")
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [short_label(r) for r in rows], fontsize=8)
    from matplotlib.patches import Patch

    handles = [Patch(color=KIND_COLOR[k], label=f"this run: {KIND_TITLE[k].lower()}")
               for k in dict.fromkeys(r["kind"] for r in rows)]
    handles.append(Patch(facecolor=THESIS_COLOR, hatch="//", edgecolor="black", label="thesis (full MM-IMDb, fine-tuned)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    g = run.grid
    fig.suptitle(f"This run: {Path(g['data']).name}, {g['split']} split, n_test={g['n'].get('test', 0):,}, "
                 f"encoders {encoder_training(g.get('config', {}))}\n"
                 f"Thesis: {THESIS_DATA}, n_test={THESIS_SPLIT['test']:,}, encoders fine-tuned")
    return _save(fig, path)


def chart_per_genre(run: Grid, f1: dict[str, dict[str, Any]], test_n: dict[str, int | None], path: Path) -> Path:
    """Genres down, models across (23 rows read better than 23 rotated columns); with several seeds a second panel
    shows the std over seeds."""
    rows = run.rows
    genres = list(next(iter(f1.values())))
    means = np.array([[mean_of(f1[r["row"]][g]) for r in rows] for g in genres])
    panels = [("F1 (mean over seeds)" if run.n_seeds > 1 else "F1", means, "viridis", 1.0)]
    if run.n_seeds > 1:
        stds = np.array([[std_of(f1[r["row"]][g]) for r in rows] for g in genres])
        panels.append(("std of F1 over seeds", stds, "magma", max(float(stds.max()), 1e-6)))
    fig = _figure(figsize=(0.72 * len(rows) * len(panels) + 2.4 * len(panels) + 0.4, 0.34 * len(genres) + 2.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for k, (ax, (title, data, cmap, vmax)) in enumerate(zip(axes, panels)):
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] < 0.6 * vmax else "black")
        ax.set_xticks(range(len(rows)), [short_label(r, 18) for r in rows], rotation=40, ha="right",
                      rotation_mode="anchor", fontsize=7)
        ax.set_yticks(range(len(genres)),
                      [f"{g} (n={test_n[g] if test_n[g] is not None else '?'})" for g in genres] if k == 0 else [],
                      fontsize=8)
        ax.set_xlabel("model")
        if k == 0:
            ax.set_ylabel("genre (n = test movies carrying it)")
        ax.set_title(f"Per-genre {title} on test", fontsize=10)
        fig.colorbar(im, ax=ax, label=title, fraction=0.05, pad=0.02)
    return _save(fig, path)


def chart_curves(run: Grid, path: Path) -> Path:
    """Small multiples, one per model: losses on the left axis, validation macro-F1 on the right."""
    rows = run.rows
    ncols = 3
    nrows = -(-len(rows) // ncols)
    fig = _figure(figsize=(15, 3.3 * nrows + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    series = (("train_loss", "train loss", "#4C72B0", "-"), ("val_loss", "validation loss", "#DD8452", "-"))
    for ax, r in zip(axes, rows):
        runs = run.metrics[r["row"]]
        hist = [m["history"] for m in runs]
        handles = []
        for key, name, color, ls in series:
            e, mu, sd = curves(hist, key)
            handles += ax.plot(e, mu, ls, color=color, marker="o", markersize=3, label=name)
            if run.n_seeds > 1:
                ax.fill_between(e, mu - sd, mu + sd, color=color, alpha=0.2)
        for m in runs:  # the epoch whose weights each seed kept
            best = ax.axvline(m["best_epoch"], color="grey", linestyle=":", linewidth=1.2,
                              label="best epoch (lowest validation loss)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"loss ({runs[0]['config'].get('loss', '?')})")
        ax.set_xticks(e if len(e) <= 12 else e[:: -(-len(e) // 12)])
        ax.set_title(short_label(r, 60).replace("\n", " "), fontsize=9)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        e, mu, sd = curves(hist, "val_f1_macro")
        handles += ax2.plot(e, mu, "--", color="#55A868", marker="s", markersize=3, label="validation macro-F1")
        if run.n_seeds > 1:
            ax2.fill_between(e, mu - sd, mu + sd, color="#55A868", alpha=0.2)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("macro-F1 (threshold 0.5)")
        handles.append(best)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    fig.suptitle("Training curves per model" + (f" (mean ± std over {run.n_seeds} seeds)" if run.n_seeds > 1 else ""))
    return _save(fig, path)


def chart_shares(run: Grid, shares: dict[str, dict[str, Any]], path: Path) -> Path:
    """One panel per fusion model (their scales differ widely). Bars start at 0.5 (equal shares) and run towards the
    modality the model leans on, so each panel can zoom on its own spread without a truncated-axis bar."""
    models = list(shares)
    genres = list(shares[models[0]]["genre"])
    fig = _figure(figsize=(6.5 * len(models) + 1.5, 0.3 * len(genres) + 2.2))
    axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
    y = np.arange(len(genres))[::-1]
    colors = {"gmu": "#8172B3", "attention": "#937860"}
    for ax, m in zip(axes, models):
        vals = [shares[m]["genre"][g] for g in genres]
        means = np.array([np.nan if v is None else mean_of(v) for v in vals])
        err = _err(vals)
        overall = mean_of(shares[m]["all"])
        ax.barh(y, means - 0.5, 0.7, left=0.5, xerr=err, capsize=2, color=colors[m], edgecolor="black",
                linewidth=0.4)
        ax.axvline(0.5, color="black", linewidth=1)
        ax.axvline(overall, color="black", linestyle="--", linewidth=1)
        lo = np.nanmin(np.append(means - (err if err is not None else 0), [0.5, overall]))
        hi = np.nanmax(np.append(means + (err if err is not None else 0), [0.5, overall]))
        pad = max(0.01, 0.12 * (hi - lo))
        ax.set_xlim(max(0.0, lo - pad), min(1.0, hi + pad))
        ax.set_title(f"{shares[m]['title']}, {shares[m]['row']} row\n(dashed: all test movies, {overall:.3f})",
                     fontsize=10)
        ax.set_xlabel("mean image share on test\n(← plot · 0.5 = equal · poster →)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{g} (n={shares[models[0]]['n'][g]:,})" for g in genres], fontsize=8)
    axes[0].set_ylim(-0.7, len(genres) - 0.3)
    fig.suptitle("How much each fusion uses the poster, per genre"
                 + (f" (error bars: ± std over {run.n_seeds} seeds)" if run.n_seeds > 1 else ""))
    return _save(fig, path)
