"""Fast on an ordinary CPU: every figure of issue 12 side by side, measured in one run on this machine.

Sections (each prints its table; ratios are taken within this run, so a busy machine slows both sides alike):
  machine     the CPU, its flags that decide native precisions, torch's threads, the load average
  encoders    each offline encoder at fp32, bf16 autocast and torch dynamic int8 (Linear layers): items/s, x fp32,
              and agreement with fp32 features (worst item's and mean cosine) on real sample movies
  auto        what `--precision auto` picks on this CPU for each encoder, and why (precision.py's evidence table)
  features    `genrefusion features`' own path (the feature cache, fresh) with the default precision vs fp32, and
              sentence-transformers' `encode` of the same plots at the same maximum length (the peer)
  catalog     Predictor on a catalog: movies/s when the whole catalog is handed over (length-grouped batches) vs
              one movie at a time (needs --model)
  distill     teacher vs distilled student, quality and single-movie latency (benchmarks/distill.py, when present)
  onnx        torch vs onnxruntime single-movie latency (benchmarks/onnx_latency.py, when present)
  demo        the thesis grid cold on the sample (fresh cache): the encoders' share of its wall time (slow: opt-in)

    PYTHONPATH=src .venv/bin/python benchmarks/cpu.py [--data ../shared/data/mmimdb-sample] [--limit 48]
        [--sections machine,encoders,auto,features] [--model runs/.../model] [--distill-out DIR] [--onnx-model DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[0].parent / "shared" / "data" / "mmimdb-sample"
ENCODERS = ("minilm-l6", "mpnet-base", "efficientnet-lite0", "dinov2-vits14")
PRECISIONS = ("fp32", "bf16", "int8-dynamic", "onnxruntime")  # onnxruntime: the fp32 feature backend
SECTIONS = ("machine", "encoders", "auto", "features", "catalog", "distill", "onnx", "demo")
DEFAULT_SECTIONS = ("machine", "encoders", "auto", "features", "catalog", "distill", "onnx")


def load_avg() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def machine() -> dict[str, Any]:
    import torch

    from genrefusion.features.precision import probe_cpu

    return {**probe_cpu().to_dict(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "load": load_avg()}


# --- raw items from the sample ---------------------------------------------------------------------------------
def sample_items(data: str, modality: str, n: int, seed: int = 0) -> list:
    """n real sample items of `modality` (plots or decoded posters), a fixed random draw."""
    from genrefusion.data.loader import load_dataset
    from genrefusion.data.modalities import spec

    ds = load_dataset(data)
    m = spec(modality)
    movies = [x for x in ds.movies if m.key(x) is not None]
    movies = random.Random(seed).sample(movies, min(n, len(movies)))
    return [m.load_raw(x) for x in movies]


def sample_dataset(data: str, n: int, seed: int = 0):
    from genrefusion.data.loader import load_dataset

    ds = load_dataset(data, modalities="both")
    return ds.subset(sorted(random.Random(seed).sample(range(len(ds)), min(n, len(ds)))))


# --- encoder x precision -------------------------------------------------------------------------------------------
def int8_dynamic(encoder):
    """A copy of `encoder` with torch dynamic int8 quantisation of its Linear layers (weights int8 per tensor,
    activations quantised per batch); None when it has no Linear layer on its path (a CNN)."""
    import torch

    linear = [n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("_fc")]
    if not linear:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), set(linear), dtype=torch.qint8)


def encode_items(encoder, items: list, precision: str, batch_size: int, run=None):
    """(pooled features in item order, seconds): the feature cache's batching (text grouped by token length,
    longest first) under the autocast of `precision` ('int8-dynamic': a quantised encoder, no autocast). `run`:
    what computes a batch's pooled vectors instead of the encoder (the onnxruntime backend's runner)."""
    import torch

    from genrefusion.features.fingerprints import autocast

    order = list(range(len(items)))
    lengths = getattr(encoder, "token_lengths", None)
    if lengths is not None:
        n = lengths(items)
        order.sort(key=lambda i: -n[i])
    ctx = contextlib.nullcontext() if precision in ("fp32", "int8-dynamic") else autocast("cpu", precision)
    out = [None] * len(items)
    t = time.perf_counter()
    with torch.inference_mode(), ctx:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = encoder.preprocess([items[i] for i in idx])
            pooled = (run(batch)[0] if run else encoder.encode(batch).pooled).float()
            for j, i in enumerate(idx):
                out[i] = pooled[j]
    return torch.stack(out), time.perf_counter() - t


def encoder_precisions(data: str, encoders: Sequence[str] = ENCODERS, precisions: Sequence[str] = PRECISIONS,
                       limit: int = 48, log: Callable[[str], None] = print) -> dict[str, dict[str, dict]]:
    """Per encoder and precision: items/s, speedup over fp32 (fp32 timed before and after the others, their mean,
    so drift in the machine's load does not favour either side) and cosine to the fp32 features."""
    import torch

    from genrefusion.encoders import create_encoder
    from genrefusion.data.modalities import spec

    result: dict[str, dict[str, dict]] = {}
    for name in encoders:
        enc = create_encoder(name).eval()
        items = sample_items(data, enc.modality, limit)
        bs = spec(enc.modality).cpu_batch_size
        encode_items(enc, items[:bs], "fp32", bs)  # warm-up: first-call allocations, lazy inits
        ref, t_before = encode_items(enc, items, "fp32", bs)
        timed: dict[str, tuple[Any, float]] = {}
        for p in precisions:
            if p == "fp32":
                continue
            if p == "onnxruntime":  # the graph is traced (or found in the cache) before the clock starts
                from genrefusion.features.backends import onnx_runner
                from genrefusion.paths import cache_root

                run = onnx_runner(enc, cache_root())
                encode_items(enc, items[:bs], "fp32", bs, run)  # its warm-up
                timed[p] = encode_items(enc, items, "fp32", bs, run)
                continue
            model = int8_dynamic(enc) if p == "int8-dynamic" else enc
            if model is None:
                continue
            timed[p] = encode_items(model, items, p, bs)
        _, t_after = encode_items(enc, items, "fp32", bs)
        t32 = (t_before + t_after) / 2
        rows = {"fp32": {"items_per_s": len(items) / t32, "speedup": 1.0, "min_cosine": 1.0, "mean_cosine": 1.0,
                         "fp32_drift": t_after / t_before}}
        for p, (feats, t) in timed.items():
            cos = torch.nn.functional.cosine_similarity(feats, ref, dim=1)
            rows[p] = {"items_per_s": len(items) / t, "speedup": t32 / t, "min_cosine": float(cos.min()),
                       "mean_cosine": float(cos.mean())}
        result[name] = rows
        log(f"  {name}: " + "  ".join(f"{p} x{r['speedup']:.2f}" for p, r in rows.items()) + f"  [{load_avg()}]")
    return result


def format_encoders(table: dict[str, dict[str, dict]], limit: int, title: str | None = None,
                    measured: Sequence[str] = PRECISIONS) -> str:
    lines = [title or f"Encoder x precision, {limit} sample items each (fp32 = mean of a run before and after the "
                      "others)",
             f"{'encoder':<20} {'precision':<13} {'items/s':>8} {'x fp32':>7} {'min cos':>8} {'mean cos':>9}"]
    for name, rows in table.items():
        for p, r in rows.items():
            lines.append(f"{name:<20} {p:<13} {r['items_per_s']:>8.1f} {r['speedup']:>7.2f} {r['min_cosine']:>8.4f} "
                         f"{r['mean_cosine']:>9.4f}")
        if "int8-dynamic" in measured and "int8-dynamic" not in rows:
            lines.append(f"{name:<20} int8-dynamic: n/a (no Linear layer on its path to quantise)")
    return "\n".join(lines)


def stored_encoders() -> tuple[dict[str, dict[str, dict]], str]:
    """This CPU kind's entry of the evidence table (cpu_precision.py speed wrote it with encoder_precisions)."""
    from genrefusion.features.precision import cpu_capability, load_table

    native = sorted(cpu_capability().native)
    for entry in load_table().get("speed", []):
        if sorted(entry.get("native", [])) == native:
            fp32 = {"items_per_s": float("nan"), "speedup": 1.0, "min_cosine": 1.0, "mean_cosine": 1.0}
            rows = {e: {"fp32": fp32, **by_p} for e, by_p in entry["encoders"].items()}  # fp32 first
            return rows, f"measured {entry['measured']} by cpu_precision.py speed, {entry['load']}, {entry['items']}"
    return {}, "no entry for this kind of CPU in the evidence table"


def format_auto(encoders: Sequence[str] = ENCODERS) -> str:
    from genrefusion.features.fingerprints import resolve_precision
    from genrefusion.features.precision import TABLE, backend_for, backend_verdict, cpu_capability, verdicts

    cap = cpu_capability()
    why = verdicts(encoders, cap)
    lines = [f"--precision auto / --backend auto on this CPU (native reduced precisions: "
             f"{', '.join(cap.native) or 'none'}; evidence: {TABLE.name})"]
    for name in encoders:
        reasons = "; ".join(f"{p}: {why[p][name]}" for p in why)
        lines.append(f"  {name:<20} -> {resolve_precision('auto', 'cpu', [name]):<5} ({reasons})")
        lines.append(f"  {'':<20}    backend {backend_for(name)} ({backend_verdict(name)})")
    return "\n".join(lines)


# --- features: our path vs the peer --------------------------------------------------------------------------------
def _cold_features(ds, enc, root: str, precision: str, backend: str):
    """(table, seconds) of encoding `ds` into a cache under `root` with no features in it (graphs the onnxruntime
    backend traced before are kept: a machine traces each encoder once)."""
    import shutil

    from genrefusion.features.cache import dataset_features
    from genrefusion.features.spec import FeatureSpec

    shutil.rmtree(os.path.join(root, "features"), ignore_errors=True)
    t = time.perf_counter()
    table = dataset_features(ds, enc, FeatureSpec(cache_root=root, progress=False, precision=precision,
                                                  backend=backend))
    return table, time.perf_counter() - t


def features_vs_peer(data: str, limit: int = 192, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`genrefusion features` with the default encoders (MiniLM plots, EfficientNet-Lite0 posters) over `limit`
    sample movies: the feature cache at the defaults (precision auto, backend auto) vs fp32 in torch, each into an
    empty cache, interleaved over two rounds; and MiniLM vs sentence-transformers' encode of the same plots at the
    same maximum length and batch size. The onnxruntime graphs are traced first (timed on their own)."""
    import torch

    from genrefusion.encoders import create_encoder
    from genrefusion.features.cache import default_batch_size
    from genrefusion.features import calibrate

    ds = sample_dataset(data, limit)
    enc = create_encoder("minilm-l6")
    image = create_encoder("efficientnet-lite0")
    bs = default_batch_size("text", "cpu")
    plots = [m.plot for m in ds.movies]
    out: dict[str, Any] = {"n": len(plots), "batch_size": bs, "max_length": enc.max_length}
    encode_items(enc, plots[:bs], "fp32", bs)  # warm-up
    for e in (enc, image):
        e.fingerprint()  # hashes the weights once per process (~0.3 s): a fixed cost, not throughput
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        _cold_features(ds, enc, root, "auto", "auto")  # calibrates (on the first plots) and traces the graphs
        _cold_features(ds, image, root, "auto", "auto")
        out["trace_s"] = time.perf_counter() - t
        out["chosen"] = {e.name: calibrate.best(calibrate.recorded(e, root)).label() for e in (enc, image)}
        times: dict[str, list[float]] = {}
        for _ in range(2):
            for label, precision, backend in (("features (default)", "auto", "auto"),
                                              ("features (fp32, torch)", "fp32", "torch")):
                for e in (enc, image):
                    table, s = _cold_features(ds, e, root, precision, backend)
                    times.setdefault(f"{label} {e.modality}", []).append(s)
                    if e is enc:
                        out.setdefault("ours", table.pooled)
        for label, s in times.items():
            out[label] = len(plots) / min(s)
            log(f"  {label}: {out[label]:.1f} movies/s  [{load_avg()}]")
        for label in ("features (default)", "features (fp32, torch)"):  # the command: plots, then posters
            out[label] = len(plots) / (min(times[f"{label} text"]) + min(times[f"{label} image"]))
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        out["peer_note"] = "sentence-transformers is not installed"
        return out
    st = SentenceTransformer(str(enc.source), device="cpu")
    st.max_seq_length = enc.max_length
    st.encode(plots[:bs], batch_size=bs)  # warm-up
    t = time.perf_counter()
    peer = st.encode(plots, batch_size=bs, convert_to_tensor=True)
    out["sentence-transformers encode"] = len(plots) / (time.perf_counter() - t)
    out["peer_min_cosine"] = float(torch.nn.functional.cosine_similarity(out["ours"], peer.float(), dim=1).min())
    log(f"  sentence-transformers encode: {out['sentence-transformers encode']:.1f} plots/s  [{load_avg()}]")
    return out


def format_features(r: dict[str, Any]) -> str:
    ours, fp32 = r["features (default)"], r["features (fp32, torch)"]
    text, text32 = r["features (default) text"], r["features (fp32, torch) text"]
    img, img32 = r["features (default) image"], r["features (fp32, torch) image"]
    lines = [f"genrefusion features --text minilm-l6 --image efficientnet-lite0, {r['n']} sample movies (empty cache, "
             f"best of 2 interleaved rounds); auto calibrated on this CPU: "
             + ", ".join(f"{k} {v}" for k, v in r["chosen"].items())
             + f" (calibration, graphs and a first pass beforehand: {r['trace_s']:.1f} s)",
             f"  plots    default {text:7.1f} /s   fp32 torch {text32:7.1f} /s   x{text / text32:.2f}",
             f"  posters  default {img:7.1f} /s   fp32 torch {img32:7.1f} /s   x{img / img32:.2f}",
             f"  command  default {ours:7.1f} movies/s   fp32 torch {fp32:7.1f} movies/s   x{ours / fp32:.2f} "
             "(target x1.6)"]
    if "sentence-transformers encode" in r:
        peer = r["sentence-transformers encode"]
        lines.append(f"  sentence-transformers encode of the plots {peer:7.1f} plots/s: default / peer = "
                     f"x{text / peer:.2f} (target x1.4); worst cosine ours vs peer {r['peer_min_cosine']:.4f}")
    else:
        lines.append(f"  peer: {r['peer_note']}")
    return "\n".join(lines)


# --- catalog path --------------------------------------------------------------------------------------------------
def catalog_throughput(model: str, data: str, limit: int = 64) -> dict[str, Any]:
    """Predictor on `limit` sample movies: all at once (length-grouped encoder batches) vs one at a time."""
    from genrefusion.cli.predict import load_model

    predictor = load_model(model)
    ds = sample_dataset(data, limit)
    from genrefusion.data.modalities import spec

    posters = [spec("image").load_raw(m) for m in ds.movies]
    plots = [m.plot for m in ds.movies]
    predictor.predict(posters[:4], plots[:4])  # warm-up
    t = time.perf_counter()
    predictor.predict(posters, plots)
    batched = len(plots) / (time.perf_counter() - t)
    # The release before: the catalog read 32 movies at a time, each group encoded as ONE batch in file order.
    predictor.batch_sizes = {m: 32 for m in predictor.modalities}
    t = time.perf_counter()
    for s in range(0, len(plots), 32):
        predictor.predict(posters[s:s + 32], plots[s:s + 32])
    unsorted = len(plots) / (time.perf_counter() - t)
    predictor.batch_sizes = {}
    t = time.perf_counter()
    for p, x in zip(posters, plots):
        predictor.predict_one(p, x)
    single = len(plots) / (time.perf_counter() - t)
    return {"n": len(plots), "batched": batched, "unsorted": unsorted, "single": single, "model": model}


def format_catalog(r: dict[str, Any]) -> str:
    return (f"Catalog through the Predictor ({r['model']}, {r['n']} sample movies):\n"
            f"  whole catalog, length-grouped batches   {r['batched']:6.2f} movies/s\n"
            f"  groups of 32 in file order, one batch    {r['unsorted']:6.2f} movies/s (the release before; "
            f"x{r['batched'] / r['unsorted']:.2f})\n"
            f"  one movie at a time                      {r['single']:6.2f} movies/s (x{r['batched'] / r['single']:.2f})")


# --- sections owned by other benchmarks ----------------------------------------------------------------------------
def _benchmark_module(name: str):
    path = HERE / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def distill_section(args) -> str:
    mod = _benchmark_module("distill")
    if mod is None or not hasattr(mod, "distill_benchmark"):
        return "Teacher vs student: skipped, benchmarks/distill.py (distill_benchmark) is not in this checkout"
    out = args.distill_out or tempfile.mkdtemp(prefix="cpu-distill-")
    r = mod.distill_benchmark(args.data, out, teacher=args.teacher, seeds=args.seeds, cache_dir=args.cache_dir)
    return mod.format_table(r) if hasattr(mod, "format_table") else str(r)


def onnx_section(args) -> str:
    mod = _benchmark_module("onnx_latency")
    if mod is None:
        return "Torch vs onnxruntime latency: skipped, benchmarks/onnx_latency.py is not in this checkout"
    if not args.onnx_model:
        return "Torch vs onnxruntime latency: skipped, give --onnx-model (a saved model folder to export and time)"
    for fn in ("onnx_latency", "latency_benchmark", "benchmark"):
        if hasattr(mod, fn):
            r = getattr(mod, fn)(args.onnx_model, args.data)
            return mod.format_table(r) if hasattr(mod, "format_table") else str(r)
    return "Torch vs onnxruntime latency: skipped, benchmarks/onnx_latency.py exposes no known function"


def demo_section(args) -> str:
    """The thesis grid cold on the sample, as `make demo` runs it, in a fresh cache."""
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        g = run_grid(GridSpec(DataSpec(args.data, "stratified", "both"), "thesis", cache_dir=Path(tmp) / "cache",
                              out=Path(tmp) / "grid", report=False), log=lambda s: None)
        total = time.perf_counter() - t
    f = g["timings"]["features_s"]
    return (f"make demo's grid cold (thesis preset, sample, stratified, both): {total:.0f} s in all, encoders "
            f"{f:.0f} s ({f / total:.0%}), training + evaluation {g['timings']['train_eval_s']:.0f} s "
            "(target: at most 180 s)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sections", default=",".join(DEFAULT_SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--limit", type=int, default=48, help="sample items per encoder x precision measurement")
    ap.add_argument("--peer-limit", type=int, default=192, help="plots in the features-vs-peer comparison")
    ap.add_argument("--stored-encoders", action="store_true",
                    help="encoders section: print this CPU's entry of the evidence table instead of measuring again")
    ap.add_argument("--model", default=None, help="saved model folder for the catalog section")
    ap.add_argument("--teacher", default=None, help="distill section: teacher model / row (default: trains one)")
    ap.add_argument("--distill-out", default=None)
    ap.add_argument("--onnx-model", default=None, help="onnx section: saved model folder")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; sections: {SECTIONS}")
    encoders = [e for e in args.encoders.split(",") if e]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731  progress; the tables go to stdout
    printed = []

    def show(text: str) -> None:
        printed.append(text)
        print(text + "\n", flush=True)

    if "machine" in sections:
        m = machine()
        show(f"Machine: {m['model']} ({m['torch_capability']}); flags {' '.join(m['flags']) or 'none'}; native "
             f"reduced precisions: {', '.join(m['native']) or 'none'}; torch {m['torch']}, {m['threads']} threads, "
             f"{m['interop_threads']} inter-op; {m['load']}")
    if "encoders" in sections and args.stored_encoders:
        rows, how = stored_encoders()
        show(format_encoders(rows, 0, f"Encoder x precision ({how} sample items each)") if rows else
             f"Encoder x precision: {how}")
    elif "encoders" in sections:
        show(format_encoders(encoder_precisions(args.data, encoders, limit=args.limit, log=log), args.limit))
    if "auto" in sections:
        show(format_auto(encoders))
    if "features" in sections:
        show(format_features(features_vs_peer(args.data, args.peer_limit, log=log)))
    if "catalog" in sections:
        show(format_catalog(catalog_throughput(args.model, args.data)) if args.model else
             "Catalog: skipped, give --model (a saved model folder)")
    if "distill" in sections:
        show(distill_section(args))
    if "onnx" in sections:
        show(onnx_section(args))
    if "demo" in sections:
        show(demo_section(args))
    print(f"[{load_avg()} at the end]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
