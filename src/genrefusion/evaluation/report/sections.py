"""The report's sections, in the thesis's order (data, results, the thesis side by side, beyond the thesis), as
blocks built from the run's files: every number printed comes from aggregate.py or straight from a file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..stats import seed_summary
from ..thesis import METRICS
from .aggregate import group_averages, modality_shares, per_genre_f1
from .blocks import ACC_NOTE, HEADERS, Callout, Figure, Report, Table, Text, fmt, fmt_pct
from .charts import chart_all_models, chart_curves, chart_group_averages, chart_per_genre, chart_shares
from ..runs import Grid
from .reference import not_benchmark_reasons, thesis_section

SPLIT_TEXT = {"train": "model training", "dev": "validation: early stopping, threshold tuning when enabled",
              "test": "final evaluation (every score in this report)", "all": "every movie (no split)"}


def results_table(run: Grid, kind: str, title: str) -> Table | None:
    rows = [r for r in run.rows if r["kind"] == kind]
    if not rows:
        return None
    return Table(title, ["Model", *(HEADERS[m] for m in METRICS)],
                 [[r["label"], *(fmt(r["test"].get(m)) for m in METRICS)] for r in rows], ACC_NOTE)


def data_section(run: Grid, rep: Report) -> None:
    s = run.summary
    splits = s["splits"]
    total = splits["total"]["movies"] or 1
    rep.add(Text("h2", "1. Data"),
            Text("p", f"Source `{s['source']}`, {s['split_mode']} split, modalities={run.grid.get('modalities')}. "
                 "Counts from `data_summary.json`."),
            Table("Table 1. Dataset split", ["Split", "Samples", "%", "With poster", "With plot", "Description"],
                  [[name, f"{row['movies']:,}", f"{100 * row['movies'] / total:.1f}%", f"{row['with_poster']:,}",
                    f"{row['with_plot']:,}", SPLIT_TEXT.get(name, "all movies used")]
                   for name, row in splits.items()]))
    skipped = sum(s["skipped"].values())
    dropped = s["dropped_genres"]
    rep.add(Text("p", f"Skipped movies (bad input): {skipped:,}"
                 + (" (" + ", ".join(f"{k}: {v:,}" for k, v in s["skipped"].items()) + ")" if skipped else "")
                 + f". Non-benchmark genre labels dropped: {sum(dropped.values()):,}"
                 + (" (" + ", ".join(f"{g}: {n:,}" for g, n in dropped.items()) + ")" if dropped else "")
                 + f". Movies left with no benchmark genre (excluded): {s['excluded_no_label']:,}."))
    names = [k for k in splits if k != "total"]
    rep.add(Table("Table 2. Movies per genre and split", ["Genre", *(n.capitalize() for n in names), "Total"],
                  [[g, *(f"{c[n]:,}" for n in names), f"{c['total']:,}"] for g, c in s["genres"].items()],
                  "A movie carries one or more genres, so a column sums to more than its split's movie count."))


def results_section(run: Grid, rep: Report, out: Path) -> dict[str, Any] | None:
    rep.add(Text("h2", "2. Results on the test split"))
    if run.n_seeds > 1:
        rep.add(Text("p", f"Every cell is mean ± std (sample std) over {run.n_seeds} seeds; error bars show ± std."))
    for kind, title in (("unimodal", "Table 6. Unimodal models"), ("fusion", "Table 7. Multimodal fusion models")):
        t = results_table(run, kind, title + " (test)")
        if t:
            rep.add(t)
    avgs = group_averages(run)
    if avgs is None:
        rep.add(Text("p", "Table 8 and Figure 1 need at least one unimodal and one fusion row; this run has not both."))
    else:
        rep.add(Table("Table 8. Unimodal vs multimodal averages", ["Model type", *(HEADERS[m] for m in METRICS)],
                      [["Unimodal (mean of rows)", *(fmt(avgs["unimodal"][m]) for m in METRICS)],
                       ["Multimodal (mean of rows)", *(fmt(avgs["fusion"][m]) for m in METRICS)],
                       ["Improvement (%)", *(fmt_pct(avgs["improvement_pct"][m]) for m in METRICS)]],
                      "Improvement = (multimodal − unimodal) / unimodal × 100, from the two averages"
                      + (" (±: std of the per-seed improvements, in percentage points)." if run.n_seeds > 1 else ".")))
        rep.add(Figure(chart_group_averages(run, avgs, out / "fig1-unimodal-vs-multimodal.png"),
                       "Figure 1. Unimodal vs multimodal averages per metric (test)."))
    rep.add(Figure(chart_all_models(run, out / "fig2-all-models.png"),
                   "Figure 2. Every model on every metric, grouped by type (test)."))
    return avgs


def beyond_section(run: Grid, rep: Report, shares: dict[str, dict[str, Any]], out: Path) -> None:
    rep.add(Text("h2", "4. Beyond the thesis"))
    f1 = per_genre_f1(run)
    genres = list(next(iter(f1.values())))
    test_n = {g: run.summary["genres"].get(g, {}).get("test") for g in genres}
    rep.add(Table("Table 9. Per-genre F1 on test", ["Genre", "Test movies", *(r["row"] for r in run.rows)],
                  [[g, "-" if test_n[g] is None else f"{test_n[g]:,}", *(fmt(f1[r["row"]][g], 3) for r in run.rows)]
                   for g in genres],
                  "A genre with no positive test movie scores 0 (sklearn's zero_division=0). Models per column: "
                  + "; ".join(f"{r['row']} = {' + '.join(r['encoders'].values())}" for r in run.rows) + "."),
            Figure(chart_per_genre(run, f1, test_n, out / "fig4-per-genre-f1.png"),
                   "Figure 4. Per-genre F1 (test), models × genres"
                   + (f"; right panel: std over {run.n_seeds} seeds." if run.n_seeds > 1 else ".")))

    def stat(values: list[float], digits: int) -> str:  # several seeds: mean ± std with one decimal
        return fmt(seed_summary(values), 1) if len(values) > 1 else f"{values[0]:.{digits}f}"

    rep.add(Table("Table 10. Training", ["Model", "Epochs run", "Best epoch (lowest val loss)", "Train time (s)"],
                  [[r["label"], stat([len(m["history"]) for m in ms], 0), stat([m["best_epoch"] for m in ms], 0),
                    stat([m["timings"]["train_s"] for m in ms], 1)]
                   for r in run.rows for ms in [run.metrics[r["row"]]]]),
            Figure(chart_curves(run, out / "fig5-training-curves.png"),
                   "Figure 5. Training curves: train and validation loss (left axis), validation macro-F1 at 0.5 "
                   "(right axis), per epoch" + (" (band: ± std over seeds)." if run.n_seeds > 1 else ".")))

    if not shares:
        rep.add(Text("p", "No GMU or attention-fusion row in this run: no modality-share analysis."))
        return
    models = list(shares)
    genres = list(shares[models[0]]["genre"])
    rep.add(Text("p", "How much each fusion leans on the poster: the GMU gate z is the image's share of each hidden "
                 "unit (h = z·h_image + (1 − z)·h_text), averaged over units and over the test movies carrying a "
                 "genre; attention fusion's softmax weight of the image is shown beside it. 0.5 = equal shares."),
            Table("Table 11. Image share per genre (test)",
                  ["Genre", "Test movies", *(shares[m]["title"] for m in models)],
                  [[g, f"{shares[models[0]]['n'][g]:,}", *(fmt(shares[m]["genre"][g], 3) for m in models)]
                   for g in genres]
                  + [["All test movies", f"{shares[models[0]]['n_all']:,}", *(fmt(shares[m]["all"], 3) for m in models)]]),
            Figure(chart_shares(run, shares, out / "fig6-image-share-per-genre.png"),
                   "Figure 6. Mean image share per genre on test: " + "; ".join(shares[m]["title"] for m in models)
                   + (f" (error bars: ± std over {run.n_seeds} seeds)." if run.n_seeds > 1 else ".")))


def build_report(run: Grid, out: Path) -> Report:
    shares = modality_shares(run)  # reads the prediction files first, so a broken one fails before any drawing
    rep = Report()
    g = run.grid
    rep.add(Text("h1", f"genrefusion grid report: {run.dir.name}"),
            Text("p", f"Preset `{g.get('preset')}`, {run.n_seeds} seed(s), data `{g['data']}` "
                 f"({g['split']} split, modalities={g.get('modalities')}, n train/dev/test = "
                 f"{g['n'].get('train', 0):,} / {g['n'].get('dev', 0):,} / {g['n'].get('test', 0):,}), "
                 f"data fingerprint `{str(g.get('data_fingerprint', '-'))[:16]}`."))
    reasons = not_benchmark_reasons(run)
    if reasons:
        rep.add(Callout("**Not a reproduction of the thesis.** This run differs from the thesis's benchmark "
                        "setting (full MM-IMDb, official split, fine-tuned BERT / RoBERTa / ResNet50 / ViT); compare "
                        "its numbers with the thesis's as a sanity check, never as a replication:", reasons))
    rel = g.get("related")
    if isinstance(rel, dict) and isinstance(rel.get("path"), str):
        # the report sits in <grid>/report/, the other grid's in <other>/report/
        rep.add(Text("p", f"See also: [the {rel.get('label', 'related')} grid's report]"
                          f"(../{rel['path']}/report/report.html) ([Markdown](../{rel['path']}/report/report.md))."))
    choice = g.get("fuse_choice")
    if isinstance(choice, dict):
        rep.add(Text("p", f"The fusion rows fuse **{choice.get('text')} + {choice.get('image')}**, the best text and "
                          f"image rows by {choice.get('by')}."))
    data_section(run, rep)
    avgs = results_section(run, rep, out)
    thesis_section(run, rep, avgs, out)
    beyond_section(run, rep, shares, out)
    timings = g.get("timings", {})
    if timings:
        names = {"features_s": "features", "train_eval_s": "training + evaluation", "total_s": "total"}
        rep.add(Text("p", "Wall time of the grid run: " + ", ".join(f"{names.get(k, k)} {v:.1f} s"
                                                                    for k, v in timings.items()) + "."))
    rep.charts = [b.path for b in rep.blocks if isinstance(b, Figure)]
    return rep
