"""The thesis grid: four unimodal rows and five fusion rows, trained and evaluated with one call.

The thesis used BERT, RoBERTa, ResNet50 and ViT, and fused BERT + ResNet50. Each of those is an encoder *slot*
here; by default every slot holds an offline pretrained stand-in of the same family (no hub download is possible
on an offline machine), and every table names the encoder that actually filled the slot.
"""
from __future__ import annotations

import dataclasses
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..evaluation import runs
from . import tracking, workers
from ..config import Config, load_config
from ..data.loader import load_dataset
from ..distributed import is_main, resolve_device
from ..encoders.concat import SEPARATOR
from ..features.spec import FeatureSpec
from .experiment import build_model, check_encoders, load_features, reads_sequences
from ..evaluation.metrics import format_table
from ..data.modalities import spec
from ..evaluation.report import write_report
from ..evaluation.stats import mean_std
from ..evaluation.thesis import FUSION_IMAGE_SLOT, FUSION_TEXT_SLOT, ROWS, SLOTS, Row

AUTO = "auto"  # fuse=("auto",): fuse the slots validation chooses

# Named encoder sets: offline stand-ins (default), the thesis's hub models, and CLIP's two towers as the fused pair
# (hub weights, for GPU users; the other two rows keep the thesis's models).
ENCODER_SETS: dict[str, dict[str, str]] = {
    "offline": {s: offline for s, (_, offline, _) in SLOTS.items()},
    "thesis": {s: hub for s, (_, _, hub) in SLOTS.items()},
    "clip": {**{s: hub for s, (_, _, hub) in SLOTS.items()},
             FUSION_TEXT_SLOT: "clip-vit-b32-text", FUSION_IMAGE_SLOT: "clip-vit-b32-vision"},
}


def resolve_slots(encoders: str = "offline", overrides: list[str] | None = None) -> dict[str, str]:
    """Slot -> encoder name. `encoders`: a named set (offline, thesis, clip). `overrides`: 'SLOT=NAME' items."""
    if encoders not in ENCODER_SETS:
        raise ValueError(f"encoders must be one of {sorted(ENCODER_SETS)}, not {encoders!r}")
    slots = dict(ENCODER_SETS[encoders])
    for item in overrides or []:
        slot, _, name = item.partition("=")
        if not name:
            raise ValueError(f"encoder override {item!r}: expected SLOT=NAME with SLOT in {list(SLOTS)}")
        if slot not in SLOTS:
            raise ValueError(f"encoder override {item!r}: unknown slot {slot!r}; slots: {list(SLOTS)}")
        slots[slot] = name
    return slots


def slot_modality(slot: str) -> str | None:
    """'text' / 'image' for a slot, or for slots joined by '+' ("ResNet50+ViT": both image encoders read side by
    side, see encoders/concat.py) when all parts share one modality; None for anything else."""
    kinds = {SLOTS[p][0] if p in SLOTS else None for p in slot.split(SEPARATOR)}
    return kinds.pop() if len(kinds) == 1 else None


def slot_encoder(slot: str, slots: dict[str, str]) -> str:
    """The encoder name filling `slot` (from resolve_slots); a joined slot joins its parts' encoder names."""
    return SEPARATOR.join(slots[p] for p in slot.split(SEPARATOR))


def row_label(row: Row, slots: dict[str, str]) -> str:
    used = [slots[s] for s in (row.text_slot, row.image_slot) if s]
    return f"{row.name} [{' + '.join(used)}]"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_grid(data: str, preset: str = "thesis", split: str = "official", modalities: str = "any",
             encoders: str = "offline", slot_overrides: list[str] | None = None, seeds: int = 1,
             cache_dir: str | None = None, out: str | Path | None = None, rows: list[str] | None = None,
             config_overrides: list[str] | None = None, log: Callable[[str], None] = print,
             report: bool = True, fuse: tuple[str, ...] = (FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT),
             track: str | None = None, track_uri: str | None = None,
             track_experiment: str = tracking.DEFAULT_EXPERIMENT,
             related: dict[str, str] | None = None) -> dict[str, Any]:
    """Train and evaluate the grid's rows. `fuse`: the (text, image) slots the fusion rows combine; the thesis
    fused BERT + ResNet50, its best text model with an image model. fuse=("auto",): the text and the image slot
    whose unimodal rows score best on VALIDATION (validation_score), chosen once those rows are trained (the test
    split never enters the choice; grid.json records it under `fuse_choice`). `track` ('mlflow', 'tensorboard'):
    one parent run for the grid with a child run per row and seed (tracking.py). `related`: {"label", "path"} of
    another grid folder (path relative to this one) that the report links to."""
    t_start = time.perf_counter()
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r}: expected a whole number >= 1")
    slots = resolve_slots(encoders, slot_overrides)
    auto = tuple(fuse) == (AUTO,)
    if auto and not is_main():  # the choice reads the runs' files, which only rank 0 writes
        raise ValueError("fuse=auto runs in one process only (not under torchrun)")
    if auto:
        fuse = (FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT)  # replaced once the unimodal rows are scored
    if len(fuse) != 2 or slot_modality(fuse[0]) != "text" or slot_modality(fuse[1]) != "image":
        raise ValueError(f"fuse={fuse}: expected a text slot and an image slot from {list(SLOTS)} "
                         "(or slots of one modality joined by '+', e.g. ResNet50+ViT)")
    for slot in fuse:  # a joined slot reads its parts' encoders side by side
        slots[slot] = slot_encoder(slot, slots)
    base = load_config(preset=preset, overrides=config_overrides)
    base = base.replace(data=str(data), split=split, modalities=modalities, cache_dir=cache_dir)
    grid_rows = [dataclasses.replace(r, text_slot=fuse[0], image_slot=fuse[1]) if r.kind == "fusion" else r
                 for r in ROWS]
    selected = [r for r in grid_rows if rows is None or r.name in rows or r.model in rows]
    if not selected:
        raise ValueError(f"no grid rows match {rows}; rows: {[r.name for r in ROWS]}")
    for r in selected:  # an encoder that cannot do what a row asks (a sequence, gradients) fails before any work
        check_encoders(base.replace(model=r.model, text_encoder=slots.get(r.text_slot, base.text_encoder),
                                    image_encoder=slots.get(r.image_slot, base.image_encoder)),
                       tuple(m for m, s in (("text", r.text_slot), ("image", r.image_slot)) if s),
                       reads_sequences(base.replace(model=r.model)))
    if auto and not {"text", "image"} <= {slot_modality(r.text_slot or r.image_slot) for r in selected
                                          if r.kind == "unimodal"}:
        raise ValueError("fuse=auto chooses the fused slots from the unimodal rows: select a text and an image row")
    out = Path(out) if out else Path(base.out) / f"grid-{preset}-{datetime.now():%Y%m%d-%H%M%S}"
    # Opened before any work, so that a store that cannot be used stops the grid at once; rank 0 alone tracks.
    tracker = tracking.open_tracker(track, track_uri, track_experiment, default_dir=out.parent) if is_main() else None
    if is_main():
        out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    dataset = load_dataset(data, split, modalities, base.strict, base.plot_mode, base.split_seed)
    from ..data.summary import data_summary, format_data_line

    summary = data_summary(dataset)
    if is_main():  # under torchrun every rank runs the grid; rank 0 alone writes its files
        runs.write_data_summary(out, summary)
    log(f"{format_data_line(summary, modalities)}  [{time.perf_counter() - t:.1f} s]")

    # Encode each slot's encoder once; every row that uses the slot shares the table.
    t = time.perf_counter()
    features = FeatureSpec.from_config(base)  # how every slot's features are made, worked out once
    tables: dict[str, Any] = {}
    for slot in dict.fromkeys(s for r in selected if not (auto and r.kind == "fusion")
                              for s in (r.text_slot, r.image_slot) if s):
        modality = slot_modality(slot)
        cfg = base.replace(**{spec(modality).encoder_config: slots[slot]})
        t_slot = time.perf_counter()
        # Token/patch sequences only for slots that a sequence-reading model (cross_attention=sequence) reads.
        sequences = any(slot in (r.text_slot, r.image_slot) and reads_sequences(base.replace(model=r.model))
                        for r in selected)
        feats, _ = load_features(cfg, dataset, (modality,), features, sequences=sequences)
        tables[slot] = feats[modality]
        log(f"features {slot:<8} <- {slots[slot]:<20} {tables[slot].dim:>5}-d  "
            f"{tables[slot].encoded_now:,} newly encoded"
            + (f" ({tables[slot].backend})" if tables[slot].backend else "")
            + f"  [{time.perf_counter() - t_slot:.1f} s]")
    features_s = time.perf_counter() - t

    grid_params = {"grid": out.name, "preset": preset, "rows": [r.name for r in selected], "seeds": seeds,
                   "slots": slots, "fuse": list(fuse), **base.to_dict()}
    with tracking.maybe_run(tracker, out.name, grid_params, out) as parent:
        t = time.perf_counter()
        results: list[dict[str, Any]] = []
        fuse_choice = None
        # Rows train phase by phase: with fuse=auto the fusion rows wait for the unimodal rows' scores.
        phases = ([[r for r in selected if r.kind != "fusion"], [r for r in selected if r.kind == "fusion"]]
                  if auto else [selected])
        for phase in filter(None, phases):
            if auto and phase[0].kind == "fusion":
                fuse_choice = choose_fusion_slots(results, out)
                fuse = (fuse_choice["text"], fuse_choice["image"])
                log(f"fusing {fuse[0]} + {fuse[1]}: the best text and image rows by validation macro-F1 "
                    "(thresholds cross-fitted within validation)")
                phase = [dataclasses.replace(r, text_slot=fuse[0], image_slot=fuse[1]) for r in phase]
            results += _train_rows(phase, seeds, base, slots, tables, dataset, out, tracker, parent, log)
        train_s = time.perf_counter() - t

        tables_txt = format_grid_tables(results)
        grid = {
            "preset": preset, "data": str(data), "split": split, "modalities": modalities, "seeds": seeds,
            "encoders": encoders, "slots": slots, "fuse": list(fuse), "data_fingerprint": dataset.fingerprint(),
            "n": {s: len(ix) for s, ix in dataset.splits.items()}, "rows": results,
            "timings": {"features_s": features_s, "train_eval_s": train_s, "total_s": time.perf_counter() - t_start},
            "config": base.to_dict(),
        }
        if fuse_choice is not None:
            grid["fuse_choice"] = fuse_choice
        if related:
            grid["related"] = dict(related)
        if not is_main():
            grid["out"] = str(out)
            return grid
        runs.write_grid(out, base, grid, tables_txt)
        if parent:  # the grid's own numbers: every row's test macro/micro-F1, and grid.json + tables.txt
            parent.log_grid(results, out)
        log("")
        log(tables_txt)
        if report:
            paths = write_report(out)
            log(f"report: {paths['markdown']}  {paths['html']}")
        log(f"\nresults: {out}  (features {features_s:.1f} s, training+evaluation {train_s:.1f} s, "
            f"total {time.perf_counter() - t_start:.1f} s)")
        grid["out"] = str(out)
        return grid


def _row_seed_task(job: tuple, task: tuple) -> dict[str, Any]:
    """One (row, seed) of the grid, in this process or a worker (workers.py; inheriting the features, never
    tracked there): the tracked run_experiment over the grid's feature tables."""
    dataset, tables, tracker, parent = job
    cfg, run_dir, row_slots, extra = task
    return tracking.tracked_experiment(tracker, cfg, run_dir, parent, dataset=dataset,
                                       features={slot_modality(k): tables[k] for k in row_slots}, log=None,
                                       extra=extra)


def row_workers(base: Config, tasks: int, tracking_on: bool) -> int:
    """How many worker processes train a grid's (row, seed) runs side by side (workers.plan, under the config's
    fold_workers): on a CPU, over cached features, untracked, and only when the rows have no fold heads of their own
    (threshold_source=oof's fold heads already train side by side within each row)."""
    if tracking_on or base.mode != "features" or base.uses_fold_heads():
        return 1
    return workers.plan(base.fold_workers, tasks, resolve_device(base.device))


def _train_rows(phase: list[Row], seeds: int, base: Config, slots: dict[str, str], tables: dict[str, Any],
                dataset, out: Path, tracker, parent, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train every row of `phase` for every seed; the grid.json entry of each row, in order. Each run's line is
    logged as soon as it and the runs before it are done."""
    tasks, labels = [], []  # one (config, run folder, slots, extra) per row and seed, row by row
    for row in phase:
        row_slots = [s for s in (row.text_slot, row.image_slot) if s]
        label = row_label(row, slots)
        for s in range(seeds):
            cfg = base.replace(model=row.model, seed=base.seed + s, name=f"{_slug(row.name)}/seed-{base.seed + s}",
                               **{spec(slot_modality(k)).encoder_config: slots[k] for k in row_slots})
            run_dir = out / _slug(row.name) / f"seed-{base.seed + s}"
            extra = {"grid_row": row.name, "row_kind": row.kind, "row_label": label,
                     "slots": {k: slots[k] for k in row_slots}}
            tasks.append((cfg, run_dir, row_slots, extra))
            labels.append(label)

    def line(i: int, m: dict[str, Any]) -> None:
        log(f"{labels[i]:<48} seed {m['seed']}: acc {m['test']['hamming_accuracy']:.4f}  "
            f"F1 macro {m['test']['f1_macro']:.4f}  micro {m['test']['f1_micro']:.4f}  "
            f"(best epoch {m['best_epoch']}, {m['timings']['train_s']:.1f} s)")

    n_workers = row_workers(base, len(tasks), tracker is not None)
    order = None
    if n_workers > 1:
        # Largest heads first (their parameter count stands for their training time), so that the grid does not
        # end with its slowest row (cross-attention, last in the thesis's order) training alone.
        size = [sum(p.numel() for p in build_model(cfg, {slot_modality(k): tables[k].dim for k in row_slots})
                    .parameters()) for cfg, _, row_slots, _ in tasks]
        order = sorted(range(len(tasks)), key=lambda i: -size[i])
    metrics = workers.run(_row_seed_task, (dataset, tables, tracker, parent), tasks, n_workers, each=line,
                          start_order=order)
    results = []
    for r, row in enumerate(phase):  # the row's seeds are tasks r * seeds ... r * seeds + seeds - 1
        mine = range(r * seeds, (r + 1) * seeds)
        row_slots = tasks[mine[0]][2]
        run_dirs = [str(tasks[i][1].relative_to(out)) for i in mine]
        seed_metrics = [metrics[i]["test"] for i in mine]
        results.append({"row": row.name, "kind": row.kind, "model": row.model, "label": labels[mine[0]],
                        "encoders": {k: slots[k] for k in row_slots}, "slots": row_slots,
                        "runs": run_dirs, "test": seed_metrics[0] if seeds == 1 else mean_std(seed_metrics),
                        "val_score": float(np.mean([validation_score(out / d) for d in run_dirs]))
                        if is_main() else None})
    return results


def validation_score(run_dir: str | Path) -> float:
    """A run's macro-F1 on VALIDATION, honest for tuned thresholds: they are cross-fitted (tuned on one half of
    the validation movies, scored on the other, both ways: metrics.cross_fitted_f1), since thresholds tuned on
    all of validation would flatter the models whose thresholds are tuned over those whose are fixed."""
    from ..evaluation.metrics import cross_fitted_f1

    val = runs.read_predictions(run_dir, "val")
    mode = runs.metric(runs.read_metrics(run_dir), "threshold_mode", run_dir)
    return float(cross_fitted_f1(val.labels, val.probs, mode)["f1_macro"])


def choose_fusion_slots(results: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """The text and the image slot of the unimodal rows with the best validation score (fuse=auto)."""
    scores: dict[str, dict[str, float]] = {"text": {}, "image": {}}
    for r in results:
        if r["kind"] == "unimodal":
            (slot,) = r["slots"]
            scores[slot_modality(slot)][slot] = r["val_score"]
    # a tie goes to the slot the thesis fused (identical scores say nothing against its choice)
    best = {m: max(s, key=lambda k: (s[k], k in (FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT), k)) for m, s in scores.items()}
    return {**best, "by": "validation macro-F1, thresholds cross-fitted within validation", "scores": scores}


def format_grid_tables(results: list[dict]) -> str:
    parts = []
    for kind, title in (("unimodal", "Table 6. Unimodal models (test)"), ("fusion", "Table 7. Multimodal fusion models (test)")):
        rows = {r["label"]: r["test"] for r in results if r["kind"] == kind}
        if rows:
            parts.append(f"{title}\n{format_table(rows)}")
    return "\n\n".join(parts)
