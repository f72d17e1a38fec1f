"""This run next to the thesis: why a run is not a reproduction of the thesis's benchmark, and the section that
sets its scores beside the thesis's published ones (thesis.py holds those numbers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..thesis import (METRICS, ROWS, SLOTS, THESIS_DATA, THESIS_SPLIT, THESIS_TABLE6, THESIS_TABLE7,
                      THESIS_TABLE8)
from .blocks import ACC_NOTE, HEADERS, Figure, Report, Table, Text, encoder_training, fmt, fmt_pct
from .charts import chart_vs_thesis
from ..runs import Grid


def not_benchmark_reasons(run: Grid) -> list[str]:
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


def thesis_section(run: Grid, rep: Report, avgs: dict[str, Any] | None, out: Path) -> None:
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
