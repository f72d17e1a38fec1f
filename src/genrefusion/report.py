"""Reports for a grid run: one Markdown file, one self-contained HTML page and the PNG charts, in RUN_DIR/report/.

Everything is read from the run folder's own files (grid.json, data_summary.json, each run's metrics.json and
test_predictions.safetensors), so a report can be rebuilt at any time and every number in it traces back to a file.
The layout follows the thesis (Tables 1, 2, 6, 7, 8 and Figures 1, 2) and adds what a single-run table cannot show:
per-genre F1, training curves, the GMU gate per genre, mean ± std over seeds, and the thesis's published numbers
side by side with an explicit warning whenever the run is not the full benchmark.

The report is built once as a list of blocks (headings, paragraphs, tables, figures); the Markdown and HTML
renderers both walk that list, so the two files cannot disagree.
"""
from __future__ import annotations

import base64
import html
import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The thesis's five columns: metrics.THESIS_COLUMNS, spelled out because importing metrics pulls in scikit-learn and
# this module is imported by every `genrefusion` invocation (the CLI registers its subcommand).
METRICS = ("hamming_accuracy", "f1_macro", "f1_micro", "f1_weighted", "f1_samples")

HEADERS = {"hamming_accuracy": "Hamming Acc.", "f1_macro": "F1-Macro", "f1_micro": "F1-Micro",
           "f1_weighted": "F1-Weighted", "f1_samples": "F1-Samples"}

# ---------------------------------------------------------------------------------------------------------------
# The thesis's published numbers: the one place they live. Test split of the full MM-IMDb, official split, models
# fine-tuned end to end; fusions fuse BERT (text) + ResNet50 (image). Columns in METRICS order: Accuracy (Hamming),
# F1-Macro, F1-Micro, F1-Weighted, F1-Samples.
THESIS_TABLE6 = {  # <표 6> unimodal models
    "ResNet50": (0.9042, 0.1107, 0.3798, 0.2814, 0.3773),
    "ViT": (0.9082, 0.1759, 0.4158, 0.3466, 0.3996),
    "BERT": (0.9215, 0.3163, 0.5419, 0.4975, 0.5375),
    "RoBERTa": (0.8963, 0.0302, 0.2988, 0.1519, 0.3135),
}
THESIS_TABLE7 = {  # <표 7> multimodal fusion models
    "Early Fusion": (0.9240, 0.3323, 0.5714, 0.5223, 0.5706),
    "Late Fusion": (0.9217, 0.2962, 0.5377, 0.4824, 0.5309),
    "Attention Fusion": (0.9173, 0.2423, 0.4941, 0.4279, 0.4958),
    "GMU": (0.9278, 0.3947, 0.6041, 0.5665, 0.6060),
    "Cross-Attention": (0.9290, 0.4696, 0.6207, 0.5987, 0.6220),
}
# <표 8> as printed. Its multimodal row differs from the mean of Table 7 by up to 0.0004 (the thesis presumably
# averaged unrounded scores), so it is quoted, not recomputed.
THESIS_TABLE8 = {
    "unimodal": (0.9076, 0.1583, 0.4091, 0.3194, 0.4069),
    "fusion": (0.9239, 0.3472, 0.5656, 0.5192, 0.5649),
    "improvement_pct": ("+1.80%", "+119.3%", "+38.3%", "+62.7%", "+38.8%"),  # as printed
}
THESIS_SPLIT = {"train": 15552, "dev": 2608, "test": 7799}  # <표 1>, 25,959 movies in all
THESIS_DATA = "full MM-IMDb (25,959 movies), official split"
# ---------------------------------------------------------------------------------------------------------------

SPLIT_TEXT = {"train": "model training", "dev": "validation: early stopping, threshold tuning when enabled",
              "test": "final evaluation (every score in this report)", "all": "every movie (no split)"}
KIND_TITLE = {"unimodal": "Unimodal", "fusion": "Multimodal fusion"}
KIND_COLOR = {"unimodal": "#4C72B0", "fusion": "#DD8452"}
THESIS_COLOR = "#9a9a9a"
ACC_NOTE = ("Hamming Acc. = 1 − Hamming loss, the per-(movie, genre) accuracy that the thesis calls “Accuracy”; "
            "F1 uses sklearn's macro / micro / weighted / samples averaging with zero_division=0.")


# --- the run's files --------------------------------------------------------------------------------------------

@dataclass
class Run:
    dir: Path
    grid: dict[str, Any]
    summary: dict[str, Any]
    metrics: dict[str, list[dict[str, Any]]]  # row name -> metrics.json of each seed, in grid order

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.grid["rows"]

    @property
    def n_seeds(self) -> int:
        return len(self.rows[0]["runs"])


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (is this a complete `genrefusion grid` run folder?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    grid = _read_json(run_dir / "grid.json")
    for key in ("rows", "n", "split", "data", "slots"):
        if key not in grid:
            raise ValueError(f"{run_dir / 'grid.json'}: no {key!r} entry; not a grid run")
    if not grid["rows"]:
        raise ValueError(f"{run_dir / 'grid.json'}: no rows")
    if len({len(r["runs"]) for r in grid["rows"]}) != 1:
        raise ValueError(f"{run_dir / 'grid.json'}: rows have different numbers of seeds")
    summary = _read_json(run_dir / "data_summary.json")
    metrics = {r["row"]: [_read_json(run_dir / d / "metrics.json") for d in r["runs"]] for r in grid["rows"]}
    return Run(run_dir, grid, summary, metrics)


def load_predictions(run: Run, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each seed's test_predictions.safetensors as {tensor name: array, 'genres': [names]}."""
    from safetensors import safe_open

    out = []
    for d in row["runs"]:
        path = run.dir / d / "test_predictions.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing")
        with safe_open(str(path), "np") as f:
            item = {k: f.get_tensor(k) for k in f.keys()}
            item["genres"] = json.loads(f.metadata()["genres"])
        out.append(item)
    return out


# --- numbers ----------------------------------------------------------------------------------------------------

def agg(values: Sequence[float]) -> float | dict[str, float]:
    """One seed: the value. Several: {"mean", "std"} with the sample std, as stats.mean_std does."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 1:
        return float(v[0])
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1))}


def mean_of(value: float | Mapping | None) -> float | None:
    return value["mean"] if isinstance(value, Mapping) else value


def std_of(value: float | Mapping | None) -> float | None:
    return value["std"] if isinstance(value, Mapping) else None


def fmt(value: float | Mapping | None, digits: int = 4) -> str:
    """Scores print with 4 decimals (the thesis's precision); several seeds print as "mean ± std"."""
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    return f"{value:.{digits}f}"


def fmt_pct(value: float | Mapping | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return f"{value['mean']:+.2f}% ± {value['std']:.2f}"
    return f"{value:+.2f}%"


def group_averages(run: Run) -> dict[str, dict[str, Any]] | None:
    """Table 8: per seed, the mean over the unimodal rows and over the fusion rows of each metric; then mean ± std
    over seeds. Improvement = (fusion - unimodal) / unimodal * 100 from those means (the thesis's definition);
    with several seeds its ± is the std of the per-seed improvements."""
    kinds = {k: [r["row"] for r in run.rows if r["kind"] == k] for k in ("unimodal", "fusion")}
    if not all(kinds.values()):
        return None
    per_seed = {k: np.array([[np.mean([run.metrics[name][s]["test"][m] for name in names]) for m in METRICS]
                             for s in range(run.n_seeds)]) for k, names in kinds.items()}  # (seeds, metrics)
    out: dict[str, dict[str, Any]] = {k: {m: agg(v[:, j]) for j, m in enumerate(METRICS)} for k, v in per_seed.items()}
    uni, fus = per_seed["unimodal"].mean(0), per_seed["fusion"].mean(0)
    seed_impr = (per_seed["fusion"] - per_seed["unimodal"]) / per_seed["unimodal"] * 100
    out["improvement_pct"] = {}
    for j, m in enumerate(METRICS):
        point = float((fus[j] - uni[j]) / uni[j] * 100)
        out["improvement_pct"][m] = point if run.n_seeds == 1 else \
            {"mean": point, "std": float(seed_impr[:, j].std(ddof=1))}
    return out


def per_genre_f1(run: Run) -> dict[str, dict[str, Any]]:
    """row name -> genre -> F1 on test (mean ± std over seeds)."""
    return {name: {g: agg([m["test"]["per_genre"][g]["f1"] for m in ms]) for g in ms[0]["test"]["per_genre"]}
            for name, ms in run.metrics.items()}


# Analysis tensors that hold an image share per test movie: GMU's gate z (B, H), image share of each hidden unit,
# averaged over units; attention fusion's softmax weights (B, 2) = (text, image).
SHARES = {"gmu": ("gate", "GMU gate (image share)", lambda t: t.mean(axis=1)),
          "attention": ("modality_weights", "Attention weight (image)", lambda t: t[:, 1])}


def modality_shares(run: Run) -> dict[str, dict[str, Any]]:
    """model -> {"title", "n": {genre: test movies}, "genre": {genre: mean share or None}, "all": overall mean}.
    Per seed: the per-movie image share averaged over the test movies carrying each genre; then over seeds."""
    out = {}
    for model, (key, title, per_movie) in SHARES.items():
        row = next((r for r in run.rows if r["model"] == model), None)
        if row is None:
            continue
        preds = load_predictions(run, row)
        missing = [run.dir / d / "test_predictions.safetensors" for d, p in zip(row["runs"], preds) if key not in p]
        if missing:
            raise ValueError(f"{missing[0]}: no {key!r} tensor (the {row['row']} run did not save its analysis)")
        genres = preds[0]["genres"]
        labels = preds[0]["labels"] > 0.5
        shares = [per_movie(p[key]) for p in preds]
        n = {g: int(labels[:, j].sum()) for j, g in enumerate(genres)}
        out[model] = {
            "title": title, "row": row["row"], "n": n, "n_all": int(labels.shape[0]),
            "genre": {g: agg([float(s[labels[:, j]].mean()) for s in shares]) if n[g] else None
                      for j, g in enumerate(genres)},
            "all": agg([float(s.mean()) for s in shares]),
        }
    return out


def curves(histories: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """epochs, mean, std over the seeds that reached each epoch (early stopping can end seeds at different epochs)."""
    longest = max(len(h) for h in histories)
    epochs, mean, std = [], [], []
    for e in range(longest):
        vals = [h[e][key] for h in histories if len(h) > e]
        epochs.append(e + 1)
        mean.append(np.mean(vals))
        std.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
    return np.array(epochs), np.array(mean), np.array(std)


def encoder_training(cfg: Mapping[str, Any]) -> str:
    if cfg.get("mode", "features") == "features":
        return "frozen (cached features)"
    return "fine-tuned end to end" if cfg.get("finetune") else "frozen (end to end)"


def not_benchmark_reasons(run: Run) -> list[str]:
    from .grid import SLOTS

    g, reasons = run.grid, []
    if g["split"] != "official":
        reasons.append(f"split is **{g['split']}**, not the official MM-IMDb split")
    for s, n in THESIS_SPLIT.items():
        if g["n"].get(s) != n:
            reasons.append(f"{s} has **{g['n'].get(s, 0):,}** movies, the benchmark {n:,}")
    if g.get("modalities", "any") != "any":
        reasons.append(f"modalities={g['modalities']} keeps only movies with a poster and a plot")
    swapped = [f"{slot} → {name}" for slot, name in g["slots"].items() if slot not in SLOTS or name != SLOTS[slot][2]]
    if swapped:
        reasons.append("encoders differ from the thesis's: " + ", ".join(swapped))
    if not g.get("config", {}).get("finetune"):
        reasons.append(f"encoders are {encoder_training(g.get('config', {}))}; the thesis text reports fine-tuning "
                       "(its code trained heads over frozen encoders, as this run does)")
    return reasons


# --- blocks -----------------------------------------------------------------------------------------------------

@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Text:
    kind: str  # h1 | h2 | h3 | p
    text: str


@dataclass
class Callout:  # the not-a-reproduction warning: a lead sentence and one item per reason
    text: str
    items: list[str]


@dataclass
class Report:
    blocks: list[Any] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(blocks)


def short_label(row: dict[str, Any], width: int = 22) -> str:
    """Chart label: row name, then the encoders on a wrapped second line (folder paths shortened to their name)."""
    names = " + ".join(Path(n).name or n for n in row["encoders"].values())
    lines = textwrap.wrap(f"[{names}]", width, break_on_hyphens=False, break_long_words=False)  # whole names only
    return "\n".join([row["row"], *lines])


def results_table(run: Run, kind: str, title: str) -> Table | None:
    rows = [r for r in run.rows if r["kind"] == kind]
    if not rows:
        return None
    return Table(title, ["Model", *(HEADERS[m] for m in METRICS)],
                 [[r["label"], *(fmt(r["test"].get(m)) for m in METRICS)] for r in rows], ACC_NOTE)


def data_section(run: Run, rep: Report) -> None:
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


def results_section(run: Run, rep: Report, out: Path) -> dict[str, Any] | None:
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


def thesis_section(run: Run, rep: Report, avgs: dict[str, Any] | None, out: Path) -> None:
    g = run.grid
    thesis = {**THESIS_TABLE6, **THESIS_TABLE7}
    rep.add(Text("h2", "3. This run next to the thesis"),
            Text("p", "The thesis's numbers are quoted from its Tables 6–8; they were measured on different data "
                 "with different encoders (see the table below), so they are a reference, not a target this run "
                 "reproduces unless the warning at the top is absent."),
            Table("What each used", ["", "This run", "Thesis"],
                  [["Data", f"`{g['data']}`", THESIS_DATA],
                   ["Split", str(g["split"]), "official"],
                   ["Modalities", str(g.get("modalities")), "any (all movies)"],
                   *([f"{s.capitalize()} movies", f"{g['n'].get(s, 0):,}", f"{n:,}"] for s, n in THESIS_SPLIT.items()),
                   *([f"Slot {slot}", f"`{name}`", slot] for slot, name in g["slots"].items()),
                   ["Encoders", encoder_training(g.get("config", {})),
                    "fine-tuned per the thesis text (frozen in its code)"],
                   ["Seeds", str(run.n_seeds), "1"]]))
    from .grid import ROWS

    # the thesis's own encoders per row (its fusions always read BERT + ResNet50, whatever this run fused)
    thesis_slots = {row.name: " + ".join(s for s in (row.text_slot, row.image_slot) if s) for row in ROWS}
    body = []
    for r in run.rows:
        ref = thesis.get(r["row"])
        body.append([r["row"], "this run", " + ".join(f"`{v}`" for v in r["encoders"].values()),
                     *(fmt(r["test"].get(m)) for m in METRICS)])
        body.append(["", "thesis", thesis_slots.get(r["row"], " + ".join(r["encoders"])),
                     *((fmt(v) for v in ref) if ref else ["-"] * len(METRICS))])
    rep.add(Table("Tables 6/7 side by side: this run vs the thesis (test)",
                  ["Model", "Source", "Encoders", *(HEADERS[m] for m in METRICS)], body, ACC_NOTE))
    if avgs is not None:
        body = []
        for key, name in (("unimodal", "Unimodal"), ("fusion", "Multimodal")):
            body.append([f"{name} (run)", *(fmt(avgs[key][m]) for m in METRICS)])
            body.append([f"{name} (thesis)", *(fmt(v) for v in THESIS_TABLE8[key])])
        body.append(["Improvement % (run)", *(fmt_pct(avgs["improvement_pct"][m]) for m in METRICS)])
        body.append(["Improvement % (thesis)", *THESIS_TABLE8["improvement_pct"]])
        rep.add(Table("Table 8 side by side: this run vs the thesis", ["", *(HEADERS[m] for m in METRICS)], body))
    rep.add(Figure(chart_vs_thesis(run, out / "fig3-run-vs-thesis.png"),
                   "Figure 3. F1-Macro and F1-Micro per model: this run (colour) next to the thesis (grey, hatched; "
                   "full MM-IMDb, fine-tuned BERT/RoBERTa/ResNet50/ViT)."))


def beyond_section(run: Run, rep: Report, shares: dict[str, dict[str, Any]], out: Path) -> None:
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
        return fmt(agg(values), 1) if len(values) > 1 else f"{values[0]:.{digits}f}"

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


def build_report(run: Run, out: Path) -> Report:
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


# --- charts (matplotlib's object API on the Agg canvas: no pyplot, no global backend switch) ------------------

def _figure(**kw):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(layout="constrained", **kw)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, facecolor="white")
    return path


def _err(values: Sequence[Any]) -> np.ndarray | None:
    stds = [std_of(v) for v in values]
    return None if all(s is None for s in stds) else np.array([s or 0.0 for s in stds])


def chart_group_averages(run: Run, avgs: dict[str, Any], path: Path) -> Path:
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


def chart_all_models(run: Run, path: Path) -> Path:
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


def chart_vs_thesis(run: Run, path: Path) -> Path:
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


def chart_per_genre(run: Run, f1: dict[str, dict[str, Any]], test_n: dict[str, int | None], path: Path) -> Path:
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


def chart_curves(run: Run, path: Path) -> Path:
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


def chart_shares(run: Run, shares: dict[str, dict[str, Any]], path: Path) -> Path:
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


# --- rendering --------------------------------------------------------------------------------------------------

_NUMERIC = re.compile(r"^(-|[+\-−]?[\d,]*\.?\d+%?( ± [\d.]+%?)?)$")


def _numeric_columns(t: Table) -> list[bool]:
    """Columns whose every cell is a number (right-aligned); the rest are text (left-aligned)."""
    return [i > 0 and all(_NUMERIC.match(r[i]) for r in t.rows) for i in range(len(t.header))]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(rep: Report, out: Path) -> str:
    lines: list[str] = []
    for b in rep.blocks:
        if isinstance(b, Callout):
            lines += [f"> ⚠️ {b.text}", ">", *(f"> - {item}" for item in b.items), ""]
        elif isinstance(b, Text):
            lines += [{"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[b.kind] + b.text, ""]
        elif isinstance(b, Table):
            lines += [f"**{b.title}**", "",
                      "| " + " | ".join(map(_md_cell, b.header)) + " |",
                      "|" + "|".join("---:" if num else ":---" for num in _numeric_columns(b)) + "|",
                      *("| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows), ""]
            if b.note:
                lines += [f"*{b.note}*", ""]
        elif isinstance(b, Figure):
            lines += [f"![{b.caption}]({b.path.relative_to(out).as_posix()})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """The little Markdown the blocks use (**bold**, *italic*, `code`) as HTML, after escaping."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", t)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; max-width: 1240px;
       margin: 2em auto; padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.warn { background: #fff3cd; border: 2px solid #d9534f; border-radius: 6px; padding: .8em 1em; }
.scroll { overflow-x: auto; margin: .6em 0 .2em; }
table { border-collapse: collapse; font-size: .86em; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: .3em 0; }
th, td { border: 1px solid #d0d0d0; padding: .25em .55em; }
th { background: #f0f2f5; } td.n { text-align: right; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
.note { font-size: .85em; color: #555; margin-top: .2em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { font-size: .9em; color: #444; }
code { background: #f4f4f4; padding: 0 .25em; border-radius: 3px; word-break: break-all; }
"""


def to_html(rep: Report) -> str:
    parts, title = [], "genrefusion report"
    for b in rep.blocks:
        if isinstance(b, Callout):
            items = "".join(f"<li>{_inline(item)}</li>" for item in b.items)
            parts.append(f'<div class="warn" role="alert">&#9888; {_inline(b.text)}<ul>{items}</ul></div>')
        elif isinstance(b, Text):
            title = b.text if b.kind == "h1" else title
            parts.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            num = _numeric_columns(b)
            body = "".join("<tr>" + "".join(f'<td{" class=n" if n else ""}>{_inline(c)}</td>' for c, n in zip(r, num))
                           + "</tr>" for r in b.rows)
            parts.append(f'<div class="scroll"><table><caption>{_inline(b.title)}</caption><thead><tr>{head}</tr>'
                         f"</thead><tbody>{body}</tbody></table></div>")
            if b.note:
                parts.append(f'<p class="note">{_inline(b.note)}</p>')
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write RUN_DIR/report/{report.md, report.html, fig*.png} (or into `out_dir`). Returns
    {"markdown": path, "html": path, "charts": [paths]}."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir else run.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = build_report(run, out)
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(rep, out), encoding="utf-8")
    page.write_text(to_html(rep), encoding="utf-8")
    return {"markdown": md, "html": page, "charts": rep.charts}


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
