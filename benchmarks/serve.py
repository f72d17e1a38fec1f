"""Latency and throughput of `POST /predict` (poster + plot, no explanation) over real HTTP on loopback.

    .venv/bin/python benchmarks/serve.py --model /tmp/serve-models/gmu/model
    .venv/bin/python benchmarks/serve.py --url http://127.0.0.1:8000      # an already running `genrefusion serve`

Starts `genrefusion serve` in a separate process (so the client's threads do not share the server's interpreter),
sends one movie sequentially for p50/p95 latency, then the same movie from 8 concurrent clients for throughput.
The default movie is the sample's median-length plot with its poster (--plot-quantile 0.9 for a long one). The
target is p50 < 150 ms with the offline encoders (minilm-l6 + efficientnet-lite0) on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[1]
TARGET_P50_MS = 150.0


def sample_movie(sample: Path, quantile: float = 0.5) -> tuple[Path, str, str]:
    """The movie at this quantile of plot length (0.5: the median) among the sample's movies with a poster."""
    movies = []
    for path in sorted((sample / "dataset").glob("*.json")):
        poster = path.with_suffix(".jpeg")
        if poster.exists():
            plot = json.loads(path.read_text())["plot"]
            plot = " ".join(plot) if isinstance(plot, list) else plot
            movies.append((len(plot), path.stem, poster, plot))
    if not movies:
        raise SystemExit(f"no movie with a poster under {sample}/dataset; pass --poster and --plot")
    movies.sort()
    _, mid, poster, plot = movies[min(int(quantile * len(movies)), len(movies) - 1)]
    return poster, plot, mid


def start_server(model: str, port: int) -> subprocess.Popen:
    code = ("import sys; from genrefusion.serving import serve; "
            "serve(sys.argv[1], port=int(sys.argv[2]), log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code, model, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited:\n{proc.stdout.read()}")
        try:
            if httpx2.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} not healthy after {timeout:.0f} s")


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="saved model folder to serve (or --url)")
    ap.add_argument("--url", help="benchmark an already running server instead")
    ap.add_argument("--poster", help="poster file (default: the sample's median-length movie)")
    ap.add_argument("--plot", help="plot text")
    ap.add_argument("--sample", default=str(REPO.parent / "shared" / "data" / "mmimdb-sample"))
    ap.add_argument("--plot-quantile", type=float, default=0.5,
                    help="which sample movie, by plot length (0.5: median; 0.9: a long plot)")
    ap.add_argument("--requests", type=int, default=100, help="sequential requests for latency")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=15, help="requests per concurrent client")
    args = ap.parse_args(argv)
    if not args.model and not args.url:
        ap.error("give --model DIR or --url URL")

    if args.poster and args.plot:
        poster, plot, movie = Path(args.poster), args.plot, "given"
    else:
        poster, plot, movie = sample_movie(Path(args.sample), args.plot_quantile)
    files = {"poster": (poster.name, poster.read_bytes(), "image/jpeg")}
    data = {"plot": plot}

    load_before = os.getloadavg()[0]
    proc = None
    url = args.url
    if url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.model, port)
    try:
        wait_healthy(url, proc)
        with httpx2.Client(base_url=url, timeout=60, trust_env=False) as c:
            info = c.get("/model").json()
            for _ in range(5):  # warm-up: first calls pay for lazy initialisation
                c.post("/predict", files=files, data=data).raise_for_status()
            lat = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                c.post("/predict", files=files, data=data).raise_for_status()
                lat.append((time.perf_counter() - t0) * 1000)

        errors: list[Exception] = []

        def client():
            try:
                with httpx2.Client(base_url=url, timeout=120, trust_env=False) as c:
                    for _ in range(args.per_client):
                        c.post("/predict", files=files, data=data).raise_for_status()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    if errors:
        raise SystemExit(f"{len(errors)} client(s) failed: {errors[0]!r}")

    p50, p95 = percentile(lat, 50), percentile(lat, 95)
    n = args.clients * args.per_client
    print(f"model: {info['fusion']} over {', '.join(f'{m}={e}' for m, e in info['encoders'].items())}")
    print(f"movie: {movie} (plot {len(plot):,} characters, poster {poster.stat().st_size / 1024:.0f} KB)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (other processes share these cores)")
    print(f"POST /predict, one client, {args.requests} requests: p50 {p50:.1f} ms  p95 {p95:.1f} ms  "
          f"mean {statistics.mean(lat):.1f} ms  (target p50 < {TARGET_P50_MS:.0f} ms: "
          f"{'met' if p50 < TARGET_P50_MS else 'NOT met'})")
    print(f"POST /predict, {args.clients} concurrent clients, {n} requests: {n / elapsed:.1f} requests/s "
          f"({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
