"""Knowledge distillation: the teacher against its distilled student (and the same student trained without the
teacher), quality over several seeds and single-movie latency, side by side in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/distill.py --data ../shared/data/mmimdb-sample --seeds 5 \\
        --unlabelled ../shared/data/mmimdb-sample --out /tmp/distill-bench

1. The teacher: `--teacher ROW` (a grid row or run folder), else trained here: the best fused model of the
   recommended preset, late fusion of MPNet + EfficientNet-Lite0+DINOv2 (`--teacher-*` to change it), on
   `--modalities both` of the official split, one run per seed under OUT/teacher/seed-<n>/ (finished seeds are
   reused when the benchmark is run again; `--teacher-text-encoder`/`--teacher-image-encoder` change its encoders).
2. The students (MiniLM-L6 + EfficientNet-Lite0 by default), through `genrefusion.training.distill.run_distill`, N seeds each:
   `alone`, alpha=1 and no unlabelled movies (the same student without the teacher: the labels' loss only), and
   `distilled` with --alpha/--temperature and the --unlabelled movies (the sample folder itself gives its 1,911 dev
   movies without a poster: with `modalities=both` they are in none of the labelled splits, and the dev/test/train
   movies in it are dropped by id and content, counted).
3. Quality: test macro/micro-F1 mean ± std over the seeds, student/teacher ratio of the means (target: >= 97%),
   validation macro-F1 (what levers are chosen on), agreement with the teacher on test, and the paired bootstrap
   95% interval of student - teacher over seed-averaged scores (compare.compare).
4. Latency: `Predictor.predict_one` (poster + plot, what `genrefusion predict`/`serve` run for one movie) of the
   teacher's and the student's seed-0 model on the same test movies, interleaved, after a warm-up; p50/p95 and the
   student/teacher ratio of the p50s (target: <= 25%).

With `--lever ALPHA,T[,u][,key=value...]` (repeatable) the distilled student's alpha, temperature, whether it
reads the unlabelled movies and extra overrides are chosen among those by mean VALIDATION macro-F1 over
--sweep-seeds seeds; the table lists every lever tried.

`distill_benchmark(...)` returns everything as a dict and `format_table(result)` prints it; benchmarks/cpu.py
imports both. Prints `uptime` next to the figures: timings on a shared machine are noisy, ratios less so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from genrefusion.evaluation import runs  # noqa: E402
from genrefusion.evaluation.compare import compare  # noqa: E402
from genrefusion.evaluation.stats import seed_mean_std  # noqa: E402

TEACHER = {"model": "late", "text_encoder": "mpnet-base", "image_encoder": "efficientnet-lite0+dinov2-vits14",
           "modalities": "both", "split": "official"}
TARGET_QUALITY = 0.97  # student macro-F1 / teacher macro-F1, 5-seed means
TARGET_LATENCY = 0.25  # student p50 / teacher p50, single movie


def train_teacher(data: str, out: Path, seeds: int, cache_dir: str | None, overrides: dict[str, Any],
                  log=print) -> Path:
    """A grid-row-like folder out/seed-<n>/ of the recommended preset's teacher; finished seeds are reused."""
    from genrefusion.config import load_config
    from genrefusion.data.loader import load_dataset
    from genrefusion.features.spec import FeatureSpec
    from genrefusion.training.experiment import load_features, model_modalities, run_experiment

    dataset = features = None  # read and encoded once, shared by the seeds (as the grid does)
    for s in range(seeds):
        run_dir = out / f"seed-{s}"
        if (run_dir / runs.METRICS_FILE).is_file():
            continue
        cfg = load_config(None, "recommended", {**TEACHER, **overrides, "data": data, "seed": s,
                                                **({"cache_dir": cache_dir} if cache_dir else {})})
        if dataset is None:
            dataset = load_dataset(cfg.data, cfg.split, cfg.modalities, cfg.strict, cfg.plot_mode, cfg.split_seed)
            features, _ = load_features(cfg, dataset, model_modalities(cfg.model),
                                        FeatureSpec.from_config(cfg, progress=False))
        t = time.perf_counter()
        m = run_experiment(cfg, dataset, features, run_dir=run_dir, log=None)
        log(f"teacher seed {s}: test macro-F1 {m['test']['f1_macro']:.4f} ({time.perf_counter() - t:.0f} s)")
    return out


def _row_metrics(path: Path) -> dict[str, Any]:
    metrics = [runs.read_metrics(r) for r in runs.find_runs(path)]
    row = {f"{split}_{k}": seed_mean_std([m[split][k] for m in metrics])
           for split in ("test", "val") for k in ("f1_macro", "f1_micro")}
    row["seeds"] = len(metrics)
    agree = [m["distillation"]["test_vs_teacher"] for m in metrics if "distillation" in m]
    if agree:
        row["agreement"] = {k: float(np.mean([a[k] for a in agree])) for k in agree[0]}
    return row


def _test_movies(data: str, n: int):
    """n test movies with a poster and a plot, spread over plot lengths (sorted by length, evenly spaced)."""
    from genrefusion.data.loader import load_dataset
    from genrefusion.data.images import load_poster

    ds = load_dataset(data, TEACHER["split"], "both")
    movies = sorted((ds.movies[i] for i in ds.splits["test"] if ds.movies[i].poster and ds.movies[i].plot),
                    key=lambda m: (len(m.plot), m.id))
    pick = [movies[int(j)] for j in np.linspace(0, len(movies) - 1, min(n, len(movies)))]
    return [(load_poster(m.poster), m.plot) for m in pick]


def latency(models: dict[str, Path], movies: Sequence[tuple[Any, str]], warmup: int = 3) -> dict[str, dict]:
    """Single-movie Predictor.predict_one latency per model, the models interleaved movie by movie (alternating who
    goes first) so that load on a shared machine hits them alike."""
    from genrefusion.inference.predictor import load_model

    predictors = {name: load_model(d) for name, d in models.items()}
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for poster, plot in movies[:warmup]:
        for p in predictors.values():
            p.predict_one(poster=poster, plot=plot)
    names = list(predictors)
    for j, (poster, plot) in enumerate(movies):
        for name in (names if j % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            predictors[name].predict_one(poster=poster, plot=plot)
            times[name].append(time.perf_counter() - t)
    return {name: {"p50_ms": 1e3 * statistics.median(ts), "p95_ms": 1e3 * float(np.percentile(ts, 95)),
                   "n": len(ts), "encoders": {m: r["name"] for m, r in predictors[name].meta["encoders"].items()},
                   "fusion": predictors[name].fusion} for name, ts in times.items()}


def sweep(teacher: str | Path, out: Path, levers: Sequence[str], seeds: int, common: dict[str, Any],
          unlabelled: Sequence[str], log=print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Try each lever `alpha,temperature[,unlabelled][,key=value...]` (e.g. "0.5,1", "0,2,u", "0.5,2,u,model=gmu")
    with `seeds` seeds and pick the one with the best mean VALIDATION macro-F1 (test never enters the choice)."""
    from genrefusion.training.distill import run_distill

    tried = []
    for i, lever in enumerate(levers):
        alpha, temperature, *rest = lever.split(",")
        use_unl = "u" in rest
        overrides = [r for r in rest if "=" in r]
        s = run_distill(teacher, out=out / f"sweep-{i}", alpha=float(alpha), temperature=float(temperature),
                        unlabelled=list(unlabelled) if use_unl else [],
                        **{**common, "seeds": seeds, "overrides": list(common["overrides"]) + overrides})
        val = float(np.mean([r["val"]["f1_macro"] for r in s["runs"]]))
        tried.append({"lever": lever, "alpha": float(alpha), "temperature": float(temperature),
                      "unlabelled": use_unl, "overrides": overrides, "val_f1_macro": val})
        log(f"sweep {lever}: val macro-F1 {val:.4f}")
    return max(tried, key=lambda r: r["val_f1_macro"]), tried


def distill_benchmark(data: str, out: str | Path, teacher: str | Path | None = None, seeds: int = 5,
                      unlabelled: Sequence[str] = (), alpha: float = 0.5, temperature: float = 1.0,
                      text_encoder: str = "minilm-l6", image_encoder: str = "efficientnet-lite0",
                      student_overrides: Sequence[str] = (), teacher_overrides: dict[str, Any] | None = None,
                      latency_movies: int = 40, cache_dir: str | None = None, n_boot: int = 2000,
                      levers: Sequence[str] = (), sweep_seeds: int = 2, log=print) -> dict[str, Any]:
    """With `levers`, alpha, temperature, unlabelled-or-not and extra overrides of the distilled student are chosen
    by `sweep` (validation only) instead of being the given ones."""
    from genrefusion.training.distill import run_distill

    out = Path(out)
    t0 = time.perf_counter()
    teacher = Path(teacher) if teacher else train_teacher(data, out / "teacher", seeds, cache_dir,
                                                          teacher_overrides or {}, log)
    students = {}
    common = dict(text_encoder=text_encoder, image_encoder=image_encoder, overrides=list(student_overrides),
                  seeds=seeds, cache_dir=cache_dir, log=None, progress=False)
    chosen, tried = None, []
    if levers:
        chosen, tried = sweep(teacher, out, levers, sweep_seeds, common, unlabelled, log)
        alpha, temperature = chosen["alpha"], chosen["temperature"]
        unlabelled = unlabelled if chosen["unlabelled"] else []
        student_overrides = list(student_overrides) + chosen["overrides"]
    for name, kw in (("alone", dict(alpha=1.0, overrides=list(student_overrides))),
                     ("distilled", dict(alpha=alpha, temperature=temperature, unlabelled=list(unlabelled),
                                        overrides=list(student_overrides)))):
        t = time.perf_counter()
        summary = run_distill(teacher, out=out / name, **kw, **{k: v for k, v in common.items() if k != "overrides"})
        students[name] = {"path": summary["out"], "distillation": summary["distillation"],
                          "teacher": summary["teacher"]}
        log(f"student {name}: {time.perf_counter() - t:.0f} s")
    quality = {"teacher": {"path": str(teacher), **_row_metrics(teacher),
                           "ensemble_test": students["distilled"]["teacher"]["test_on_student_split"]}}
    for name, s in students.items():
        row = _row_metrics(Path(s["path"]))
        row["vs_teacher"] = compare(teacher, s["path"], n_boot=n_boot)
        row["ratio_macro"] = row["test_f1_macro"]["mean"] / quality["teacher"]["test_f1_macro"]["mean"]
        row["ratio_micro"] = row["test_f1_micro"]["mean"] / quality["teacher"]["test_f1_micro"]["mean"]
        quality[name] = {"path": s["path"], **row}
    unl = students["distilled"]["distillation"]["unlabelled"]
    movies = _test_movies(data, latency_movies)
    first = lambda p: runs.find_runs(p)[0] / runs.MODEL_DIR  # noqa: E731
    lat = latency({"teacher": first(teacher), "student": first(Path(students["distilled"]["path"]))}, movies)
    lat_ratio = lat["student"]["p50_ms"] / lat["teacher"]["p50_ms"]
    return {"data": data, "seeds": seeds, "alpha": alpha, "temperature": temperature, "unlabelled": unl,
            "sweep": tried, "sweep_seeds": sweep_seeds,
            "student_overrides": list(student_overrides), "quality": quality, "latency": lat,
            "latency_ratio": lat_ratio,
            "targets": {"quality": quality["distilled"]["ratio_macro"] >= TARGET_QUALITY,
                        "latency": lat_ratio <= TARGET_LATENCY},
            "uptime": _uptime(), "threads": _threads(), "seconds": time.perf_counter() - t0}


def _uptime() -> str:
    try:
        return os.popen("uptime").read().strip()
    except OSError:
        return "unknown"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def format_table(r: dict[str, Any]) -> str:
    def ms(v):
        return f"{v['mean']:.4f} ± {v['std']:.4f}"

    q = r["quality"]
    lines = []
    if r.get("sweep"):
        lines.append(f"levers tried (alpha,T[,u = with the unlabelled movies][,overrides]), {r['sweep_seeds']} seeds, "
                     "chosen by mean validation macro-F1:")
        best = max(r["sweep"], key=lambda x: x["val_f1_macro"])
        lines += [f"  {x['lever']:<28} val macro-F1 {x['val_f1_macro']:.4f}{'  <- chosen' if x is best else ''}"
                  for x in r["sweep"]]
        lines.append("")
    lines += [f"Distillation on {r['data']}: {r['seeds']} seeds, alpha={r['alpha']} T={r['temperature']}"
             + (f", student overrides {' '.join(r['student_overrides'])}" if r["student_overrides"] else ""),
             f"unlabelled: {r['unlabelled'].get('used', 0):,} used of {r['unlabelled'].get('read', 0):,} read; "
             f"dropped {r['unlabelled'].get('dropped', {})}", "",
             f"{'model':<10} {'test macro-F1':>16} {'test micro-F1':>16} {'val macro-F1':>16} {'macro/teacher':>14} "
             f"{'decisions = teacher':>20}  {'student - teacher macro, 95% CI':>34}"]
    for name in ("teacher", "alone", "distilled"):
        row = q[name]
        ratio = f"{row['ratio_macro']:.1%}" if "ratio_macro" in row else "-"
        agree = f"{row['agreement']['decision_agreement']:.1%}" if "agreement" in row else "-"
        ci = "-"
        if "vs_teacher" in row:
            b = row["vs_teacher"]["f1_macro"]
            ci = f"{b['diff']:+.4f} [{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]"
        lines.append(f"{name:<10} {ms(row['test_f1_macro']):>16} {ms(row['test_f1_micro']):>16} "
                     f"{ms(row['val_f1_macro']):>16} {ratio:>14} {agree:>20}  {ci:>34}")
    ens = q["teacher"].get("ensemble_test") or {}
    if ens:
        lines.append(f"(the teacher's {q['teacher']['seeds']}-seed ensemble, the soft targets' source: test macro-F1 "
                     f"{ens['f1_macro']:.4f}, micro {ens['f1_micro']:.4f})")
    lines += ["", f"single-movie latency (Predictor.predict_one, poster + plot, {r['latency']['teacher']['n']} test "
              f"movies, {r['threads']} torch threads):"]
    for name, v in r["latency"].items():
        enc = " + ".join(v["encoders"].values())
        lines.append(f"  {name:<8} {v['fusion']:<6} {enc:<48} p50 {v['p50_ms']:7.1f} ms  p95 {v['p95_ms']:7.1f} ms")
    t = r["targets"]
    lines += [f"  student/teacher p50: {r['latency_ratio']:.1%}", "",
              f"targets: macro-F1 >= {TARGET_QUALITY:.0%} of the teacher's: "
              f"{'met' if t['quality'] else 'NOT met'} ({q['distilled']['ratio_macro']:.1%}); latency <= "
              f"{TARGET_LATENCY:.0%}: {'met' if t['latency'] else 'NOT met'} ({r['latency_ratio']:.1%})",
              f"uptime: {r['uptime']}   ({r['seconds']:.0f} s)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/distill-bench")
    ap.add_argument("--teacher", default=None, help="a grid row or run folder (default: train the teacher here)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--unlabelled", action="append", default=[])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--text-encoder", default="minilm-l6")
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--teacher-text-encoder", default=TEACHER["text_encoder"], help="for the teacher trained here")
    ap.add_argument("--teacher-image-encoder", default=TEACHER["image_encoder"], help="for the teacher trained here")
    ap.add_argument("--latency-movies", type=int, default=40)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--lever", action="append", default=[], metavar="ALPHA,T[,u][,key=value]",
                    help="try this lever (repeat); the distilled student uses the best by validation macro-F1")
    ap.add_argument("--sweep-seeds", type=int, default=2)
    ap.add_argument("student_overrides", nargs="*", help="key=value for the students, e.g. model=gmu epochs=40")
    args = ap.parse_args(argv)
    result = distill_benchmark(args.data, args.out, args.teacher, args.seeds, args.unlabelled, args.alpha,
                               args.temperature, args.text_encoder, args.image_encoder, args.student_overrides,
                               teacher_overrides={"text_encoder": args.teacher_text_encoder,
                                                  "image_encoder": args.teacher_image_encoder},
                               latency_movies=args.latency_movies, cache_dir=args.cache_dir, levers=args.lever,
                               sweep_seeds=args.sweep_seeds)
    print(format_table(result))


if __name__ == "__main__":
    main()
