"""Single-movie latency: the torch model vs its ONNX export (onnxruntime), side by side in one run.

    .venv/bin/python benchmarks/onnx_latency.py                       # trains a small model on the sample first
    .venv/bin/python benchmarks/onnx_latency.py --model runs/gmu/model [--onnx runs/gmu/onnx]

Measured two ways, each with the two models interleaved request by request (so machine load hits both alike):
  in process: `predictor.predict_one(poster, plot)` (what a request's work is: preprocessing, encoders, head,
              occlusion), torch `Predictor` vs `OnnxPredictor`;
  over HTTP:  `POST /predict` (multipart poster + plot) to two `genrefusion serve` processes on loopback, one per
              model.
Without --model it trains the issue's reference fusion, GMU over mpnet-base + efficientnet-lite0+dinov2-vits14, on a
few hundred sample movies (latency does not depend on how well it learned) and exports it. The movie is the
sample's median-length plot with its poster. Target: ONNX p50 at most 60% of torch's.

`onnx_vs_torch(model_dir, onnx_dir, poster, plot, requests)` returns the in-process figures as a dict, for
benchmarks/cpu.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
TARGET_RATIO = 0.60
REFERENCE = {"text_encoder": "mpnet-base", "image_encoder": "efficientnet-lite0+dinov2-vits14", "model": "gmu"}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def _summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 0.95), "mean_ms": statistics.fmean(ms)}


def onnx_vs_torch(model_dir: str | Path, onnx_dir: str | Path, poster, plot: str, requests: int = 40,
                  warmup: int = 5) -> dict:
    """In-process single-movie latency of the torch Predictor and the OnnxPredictor, interleaved; plus their largest
    probability difference on this movie."""
    from genrefusion.inference.onnx_predictor import OnnxPredictor
    from genrefusion.inference.predictor import Predictor

    models = {"torch": Predictor(model_dir), "onnxruntime": OnnxPredictor(onnx_dir)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warmup + requests):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.predict_one(poster, plot)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
    a, b = (m.predict_one(poster, plot)["probabilities"] for m in models.values())
    out = {name: _summary(ms) for name, ms in times.items()}
    out["p50_ratio"] = out["onnxruntime"]["p50_ms"] / out["torch"]["p50_ms"]
    out["max_abs_diff"] = max(abs(a[g] - b[g]) for g in a)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_vs(model_dir: str, onnx_dir: str, poster_path: Path, plot: str, requests: int, warmup: int = 5) -> dict:
    """POST /predict latency of two servers (torch, onnxruntime), interleaved."""
    import httpx2

    from serve import start_server, wait_healthy

    servers, urls = [], {}
    try:
        for name, folder in (("torch", model_dir), ("onnxruntime", onnx_dir)):
            port = free_port()
            servers.append(start_server(folder, port))
            urls[name] = f"http://127.0.0.1:{port}"
        for (name, url), proc in zip(urls.items(), servers):
            wait_healthy(url, proc)
        data = poster_path.read_bytes()
        times: dict[str, list[float]] = {k: [] for k in urls}
        with httpx2.Client(timeout=120, trust_env=False) as c:
            for i in range(warmup + requests):
                for name, url in urls.items():
                    t0 = time.perf_counter()
                    r = c.post(url + "/predict", data={"plot": plot},
                               files={"poster": (poster_path.name, data, "image/jpeg")})
                    if r.status_code != 200:
                        raise SystemExit(f"{name} server: {r.status_code} {r.text[:300]}")
                    if i >= warmup:
                        times[name].append((time.perf_counter() - t0) * 1000)
        out = {name: _summary(ms) for name, ms in times.items()}
        out["p50_ratio"] = out["onnxruntime"]["p50_ms"] / out["torch"]["p50_ms"]
        return out
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)


def train_reference(sample: Path, work: Path, movies: int) -> Path:
    """The reference fusion trained on the first `movies` training movies of the sample (a few epochs)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_subset

    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment

    data = make_subset(sample, work / "data", {"train": movies, "dev": movies // 4, "test": movies // 4})
    cfg = Config(data=str(data), split="official", modalities="any", epochs=3, out=str(work), name="ref",
                 **REFERENCE).validate()  # the default feature cache: a second run encodes nothing
    run_experiment(cfg, run_dir=work / "ref", log=None)
    return work / "ref" / "model"


def _row(label: str, r: dict) -> str:
    t, o = r["torch"], r["onnxruntime"]
    return (f"{label:<12} {t['p50_ms']:>9.1f} {t['p95_ms']:>9.1f} {o['p50_ms']:>9.1f} {o['p95_ms']:>9.1f} "
            f"{r['p50_ratio']:>8.2f}  {'yes' if r['p50_ratio'] <= TARGET_RATIO else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="saved (torch) model folder; default: train the reference model on the sample")
    ap.add_argument("--onnx", help="its export (default: exported here)")
    ap.add_argument("--sample", default=str(REPO.parent / "shared" / "data" / "mmimdb-sample"))
    ap.add_argument("--train-movies", type=int, default=200)
    ap.add_argument("--requests", type=int, default=40, help="timed requests per model and way")
    ap.add_argument("--no-http", action="store_true", help="in-process figures only")
    args = ap.parse_args(argv)

    from serve import sample_movie

    from genrefusion.inference.export import export_onnx
    from genrefusion.data.posters import load_poster

    work = Path(tempfile.mkdtemp(prefix="onnx-latency-"))
    model = Path(args.model) if args.model else train_reference(Path(args.sample), work, args.train_movies)
    onnx_dir = Path(args.onnx) if args.onnx else work / "onnx"
    if not args.onnx:
        t0 = time.perf_counter()
        check = export_onnx(model, onnx_dir, log=None)["check"]
        print(f"export: {time.perf_counter() - t0:.0f} s, max |p_onnx - p_torch| on {check['movies']} probe movies "
              f"{check['max_abs_diff']:.1e}")
    poster_path, plot, mid = sample_movie(Path(args.sample))
    poster = load_poster(poster_path)
    inproc = onnx_vs_torch(model, onnx_dir, poster, plot, args.requests)
    http = None if args.no_http else http_vs(str(model), str(onnx_dir), poster_path, plot, args.requests)

    from genrefusion.inference.predictor import load_model

    info = load_model(onnx_dir).info()
    print(f"model: {info['fusion']} over {info['encoders']}; movie {mid} ({len(plot)} characters of plot)")
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})")
    print(f"\n{'single movie':<12} {'torch p50':>9} {'p95':>9} {'onnx p50':>9} {'p95':>9} {'ratio':>8}  "
          f"<= {TARGET_RATIO:.0%}")
    print(_row("in process", inproc))
    if http:
        print(_row("HTTP", http))
    print(f"\nmax |p_onnx - p_torch| on this movie: {inproc['max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
