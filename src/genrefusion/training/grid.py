"""The thesis grid: four unimodal rows and five fusion rows, trained and evaluated with one call.

The thesis used BERT, RoBERTa, ResNet50 and ViT, and fused BERT + ResNet50. Each of those is an encoder *slot*
here; by default every slot holds an offline pretrained stand-in of the same family (no hub download is possible
on an offline machine), and every table names the encoder that actually filled the slot.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import atomic
from ..config import Config, load_config, parse_override
from ..data.loader import DataSpec
from ..data.modalities import spec
from ..data.summary import data_summary, format_data_line
from ..distributed import is_main, resolve_device
from ..encoders.concat import SEPARATOR
from ..evaluation import runs
from ..evaluation.metrics import cross_fitted_f1, format_table
from ..evaluation.report import write_report
from ..evaluation.stats import mean_std
from ..evaluation.thesis import FUSION_IMAGE_SLOT, FUSION_TEXT_SLOT, ROWS, SLOTS, Row
from ..features.spec import FeatureSpec
from . import tracking, workers
from .experiment import build_model, check_encoders, load_features, reads_sequences

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


def check_fuse(fuse: Sequence[str]) -> tuple[str, str]:
    """The (text, image) slots a fusion row fuses, refused unless `fuse` names a text slot and an image slot (or
    slots of one modality joined by '+')."""
    fuse = tuple(fuse)
    if len(fuse) != 2 or slot_modality(fuse[0]) != "text" or slot_modality(fuse[1]) != "image":
        raise ValueError(f"fuse={fuse}: expected a text slot and an image slot from {list(SLOTS)} "
                         "(or slots of one modality joined by '+', e.g. ResNet50+ViT)")
    return fuse


def slot_encoder(slot: str, slots: dict[str, str]) -> str:
    """The encoder name filling `slot` (from resolve_slots); a joined slot joins its parts' encoder names."""
    return SEPARATOR.join(slots[p] for p in slot.split(SEPARATOR))


def row_label(row: Row, slots: dict[str, str]) -> str:
    used = [slots[s] for s in (row.text_slot, row.image_slot) if s]
    return f"{row.name} [{' + '.join(used)}]"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass(frozen=True)
class GridSpec:
    """One grid, as one value: `run_grid(GridSpec(DataSpec(path, "stratified", "both"), preset="recommended"))`.

    data:             what data is read and how it is split (every row trains and is scored on it)
    preset:           the recipe every model starts from (config.PRESETS)
    config_overrides: key=value items (or a mapping) applied to every model's config after the preset; the data
                      keys (DataSpec.CONFIG_KEYS) are refused here, they are `data`'s
    cache_dir:        the feature cache root (the config key cache_dir; None: the overrides' or paths.cache_root())
    encoders:         the named set filling the slots (offline, thesis, clip), `slot_overrides` 'SLOT=NAME' items
                      changing single slots
    fuse:             the (text, image) slots the fusion rows combine; the thesis fused BERT + ResNet50, its best
                      text model with an image model. ("auto",): the text and the image slot whose unimodal rows
                      score best on VALIDATION (validation_score), chosen once those rows are trained (the test
                      split never enters the choice; grid.json records it under `fuse_choice`)
    rows:             the rows to train (names or model names; None: all nine), `seeds` seeds each (mean ± std)
    out:              the grid folder (None: <config out>/grid-<preset>-<time>); `report` writes its report there
    track:            'mlflow' or 'tensorboard': one parent run for the grid with a child run per row and seed
                      (tracking.py), at `track_uri` in experiment `track_experiment`
    related:          {"label", "path"} of another grid folder (path relative to this one) the report links to
    """

    data: DataSpec
    preset: str = "thesis"
    config_overrides: Sequence[str] | Mapping[str, Any] = ()
    cache_dir: str | Path | None = None
    encoders: str = "offline"
    slot_overrides: Sequence[str] = ()
    fuse: tuple[str, ...] = (FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT)
    rows: Sequence[str] | None = None
    seeds: int = 1
    out: str | Path | None = None
    report: bool = True
    track: str | None = None
    track_uri: str | None = None
    track_experiment: str = tracking.DEFAULT_EXPERIMENT
    related: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds={self.seeds!r}: expected a whole number >= 1")
        if not isinstance(self.data, DataSpec):
            raise TypeError(f"GridSpec.data must be a DataSpec (what data and how it is split), got "
                            f"{type(self.data).__name__}")
        keys = (self.config_overrides if isinstance(self.config_overrides, Mapping)
                else [parse_override(o)[0] for o in self.config_overrides])
        data_keys = sorted(set(keys) & set(DataSpec.CONFIG_KEYS))
        if data_keys:
            raise ValueError(f"grid: {', '.join(data_keys)} say what data is read and how it is split: set them on "
                             "the grid's DataSpec, not as config overrides")

    def base_config(self) -> Config:
        """Every model's config before its row and seed: the preset, the overrides, the data and the cache."""
        overrides = (dict(self.config_overrides) if isinstance(self.config_overrides, Mapping)
                     else list(self.config_overrides))
        base = load_config(preset=self.preset, overrides=overrides).replace(**self.data.config_values())
        return base if self.cache_dir is None else base.replace(cache_dir=str(self.cache_dir))


@dataclass
class _Plan:
    """What run_grid works out from its GridSpec before any work: the slots, the fused pair, the base config, the
    rows and the grid folder."""

    spec: GridSpec
    slots: dict[str, str]
    auto: bool  # fuse=("auto",): the fused slots are chosen once the unimodal rows are scored
    fuse: tuple[str, str]
    base: Config
    rows: list[Row]
    out: Path


def run_grid(spec: GridSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate the grid's rows (see GridSpec); returns what grid.json holds, and its folder under
    "out". Every slot's encoder encodes the data once (features made as the base config says: FeatureSpec), and
    the rows read those tables."""
    t_start = time.perf_counter()
    plan = _plan_grid(spec)
    # Before any work: an output folder that cannot be written, or that another grid is writing into, stops here
    # (rank 0 writes the folder, so rank 0 holds its lock; the lock dies with the process).
    with atomic.exclusive(plan.out, "grid") if is_main() else contextlib.nullcontext():
        return _run_planned(spec, plan, t_start, log)


def _run_planned(spec: GridSpec, plan: _Plan, t_start: float, log: Callable[[str], None]) -> dict[str, Any]:
    """run_grid's work once the grid's folder is its own: data, features, the rows' training, grid.json."""
    # Opened before any work, so that a store that cannot be used stops the grid at once; rank 0 alone tracks.
    tracker = (tracking.open_tracker(spec.track, spec.track_uri, spec.track_experiment, default_dir=plan.out.parent)
               if is_main() else None)
    if is_main():
        plan.out.mkdir(parents=True, exist_ok=True)
    dataset = _load_data(plan, log)
    t = time.perf_counter()
    tables = _encode_slots(plan, dataset, log)
    features_s = time.perf_counter() - t
    grid_params = {"grid": plan.out.name, "preset": spec.preset, "rows": [r.name for r in plan.rows],
                   "seeds": spec.seeds, "slots": plan.slots, "fuse": list(plan.fuse), **plan.base.to_dict()}
    with tracking.maybe_run(tracker, plan.out.name, grid_params, plan.out) as parent:
        t = time.perf_counter()
        results, fuse_choice = _train_phases(plan, tables, dataset, tracker, parent, log)
        train_s = time.perf_counter() - t
        grid = {
            "preset": spec.preset, "data": str(spec.data.path), "split": spec.data.split,
            "modalities": spec.data.modalities, "seeds": spec.seeds, "encoders": spec.encoders, "slots": plan.slots,
            "fuse": list(plan.fuse), "data_fingerprint": dataset.fingerprint(),
            "n": {s: len(ix) for s, ix in dataset.splits.items()}, "rows": results,
            "timings": {"features_s": features_s, "train_eval_s": train_s, "total_s": time.perf_counter() - t_start},
            "config": plan.base.to_dict(),
        }
        if fuse_choice is not None:
            grid["fuse_choice"] = fuse_choice
        if spec.related:
            grid["related"] = dict(spec.related)
        if is_main():
            _write_grid(plan, grid, parent, log)
            log(f"\nresults: {plan.out}  (features {features_s:.1f} s, training+evaluation {train_s:.1f} s, "
                f"total {time.perf_counter() - t_start:.1f} s)")
        grid["out"] = str(plan.out)
        return grid


def _plan_grid(spec: GridSpec) -> _Plan:
    """The grid's plan, with everything that can be refused refused before any work: the slots and the fused
    pair, the rows, and an encoder that cannot do what a row asks of it (a sequence, gradients)."""
    slots = resolve_slots(spec.encoders, list(spec.slot_overrides))
    auto = tuple(spec.fuse) == (AUTO,)
    if auto and not is_main():  # the choice reads the runs' files, which only rank 0 writes
        raise ValueError("fuse=auto runs in one process only (not under torchrun)")
    fuse = check_fuse((FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT) if auto else spec.fuse)  # auto: replaced once scored
    for slot in fuse:  # a joined slot reads its parts' encoders side by side
        slots[slot] = slot_encoder(slot, slots)
    base = spec.base_config()
    grid_rows = [dataclasses.replace(r, text_slot=fuse[0], image_slot=fuse[1]) if r.kind == "fusion" else r
                 for r in ROWS]
    selected = [r for r in grid_rows if spec.rows is None or r.name in spec.rows or r.model in spec.rows]
    if not selected:
        raise ValueError(f"no grid rows match {spec.rows}; rows: {[r.name for r in ROWS]}")
    for r in selected:
        check_encoders(base.replace(model=r.model, text_encoder=slots.get(r.text_slot, base.text_encoder),
                                    image_encoder=slots.get(r.image_slot, base.image_encoder)),
                       tuple(m for m, s in (("text", r.text_slot), ("image", r.image_slot)) if s),
                       reads_sequences(base.replace(model=r.model)))
    if auto and not {"text", "image"} <= {slot_modality(r.text_slot or r.image_slot) for r in selected
                                          if r.kind == "unimodal"}:
        raise ValueError("fuse=auto chooses the fused slots from the unimodal rows: select a text and an image row")
    out = Path(spec.out) if spec.out else Path(base.out) / f"grid-{spec.preset}-{datetime.now():%Y%m%d-%H%M%S}"
    return _Plan(spec, slots, auto, fuse, base, selected, out)


def _load_data(plan: _Plan, log: Callable[[str], None]):
    """The grid's dataset; its summary goes to the grid folder (rank 0 alone writes) and to the log."""
    t = time.perf_counter()
    dataset = plan.spec.data.load()
    summary = data_summary(dataset)
    if is_main():  # under torchrun every rank runs the grid; rank 0 alone writes its files
        runs.write_data_summary(plan.out, summary)
    log(f"{format_data_line(summary, plan.spec.data.modalities)}  [{time.perf_counter() - t:.1f} s]")
    return dataset


def _encode_slots(plan: _Plan, dataset, log: Callable[[str], None]) -> dict[str, Any]:
    """Each slot's feature table: every slot's encoder encodes the data once, and every row that uses the slot
    shares its table. With fuse=auto the fused slots wait until they are chosen."""
    features = FeatureSpec.from_config(plan.base)  # how every slot's features are made, worked out once
    tables: dict[str, Any] = {}
    for slot in dict.fromkeys(s for r in plan.rows if not (plan.auto and r.kind == "fusion")
                              for s in (r.text_slot, r.image_slot) if s):
        modality = slot_modality(slot)
        cfg = plan.base.replace(**{spec(modality).encoder_config: plan.slots[slot]})
        t_slot = time.perf_counter()
        # Token/patch sequences only for slots that a sequence-reading model (cross_attention=sequence) reads.
        sequences = any(slot in (r.text_slot, r.image_slot) and reads_sequences(plan.base.replace(model=r.model))
                        for r in plan.rows)
        feats, _ = load_features(cfg, dataset, (modality,), features, sequences=sequences)
        tables[slot] = feats[modality]
        log(f"features {slot:<8} <- {plan.slots[slot]:<20} {tables[slot].dim:>5}-d  "
            f"{tables[slot].encoded_now:,} newly encoded"
            + (f" ({tables[slot].backend})" if tables[slot].backend else "")
            + f"  [{time.perf_counter() - t_slot:.1f} s]")
    return tables


def _train_phases(plan: _Plan, tables: dict[str, Any], dataset, tracker, parent,
                  log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every selected row for every seed, phase by phase: with fuse=auto the fusion rows wait for the unimodal
    rows' validation scores, which choose the fused slots (plan.fuse is set to them). The rows' grid.json entries
    and the choice (None without auto)."""
    results: list[dict[str, Any]] = []
    fuse_choice = None
    phases = ([[r for r in plan.rows if r.kind != "fusion"], [r for r in plan.rows if r.kind == "fusion"]]
              if plan.auto else [plan.rows])
    for phase in filter(None, phases):
        if plan.auto and phase[0].kind == "fusion":
            fuse_choice = choose_fusion_slots(results, plan.out)
            plan.fuse = (fuse_choice["text"], fuse_choice["image"])
            log(f"fusing {plan.fuse[0]} + {plan.fuse[1]}: the best text and image rows by validation macro-F1 "
                "(thresholds cross-fitted within validation)")
            phase = [dataclasses.replace(r, text_slot=plan.fuse[0], image_slot=plan.fuse[1]) for r in phase]
        results += _train_rows(phase, plan.spec.seeds, plan.base, plan.slots, tables, dataset, plan.out, tracker,
                               parent, log)
    return results, fuse_choice


def _write_grid(plan: _Plan, grid: dict[str, Any], parent, log: Callable[[str], None]) -> None:
    """grid.json and tables.txt (runs.write_grid), the grid's own numbers to its tracked run, the tables to the
    log, and the report."""
    tables_txt = format_grid_tables(grid["rows"])
    runs.write_grid(plan.out, plan.base, grid, tables_txt)
    if parent:  # the grid's own numbers: every row's test macro/micro-F1, and grid.json + tables.txt
        parent.log_grid(grid["rows"], plan.out)
    log("")
    log(tables_txt)
    if plan.spec.report:
        paths = write_report(plan.out)
        log(f"report: {paths['markdown']}  {paths['html']}")


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
