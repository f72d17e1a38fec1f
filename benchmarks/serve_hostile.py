"""Two hostile-client measurements of `genrefusion serve`, on loopback, bounded in count and time.

    .venv/bin/python benchmarks/serve_hostile.py --tiny                    # the tests' tiny model (built here)
    .venv/bin/python benchmarks/serve_hostile.py --tiny --onnx             # ... exported to ONNX
    .venv/bin/python benchmarks/serve_hostile.py --model runs/gmu/model --src ../other-checkout/src   # before/after

1. idle sockets: --rounds times, --idle sockets each connect and send the start of a request whose headers never
   end; then GET /health (its latency, of --probes tries: what a load balancer sees) and one real POST /predict.
2. latency: --latency times POST /predict with a sample movie (poster and plot), and --latency / 5 times
   /predict/batch of 16 such movies (medians: to see that a memory fix costs no speed);
3. memory: the server's RSS idle, during --batches /predict/batch requests of --posters PNG posters of --side x
   --side pixels (~110 KB each, 108 MB each once decoded), and 1, 3 and 10 s after them (from /proc).

The server is `genrefusion serve` with its default limits, in its own process, from --src (default: this checkout's
src/), so the same script measures another checkout for a before/after comparison.
"""
from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from serve_load import REPO, RssSampler, big_png, rss_mb, sample_movie, tiny_model


def start(model: Path, src: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "genrefusion", "serve", "--model", str(model), "--port",
                             str(port), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx2.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                return proc, url
        except httpx2.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("server did not start")
        time.sleep(0.3)


def idle_sockets(url: str, args, poster: bytes, plot: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for r in range(args.rounds):
            for _ in range(args.idle):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n")
                held.append(s)
            time.sleep(0.3)
            statuses, times = [], []
            for _ in range(args.probes):
                t0 = time.perf_counter()
                try:
                    statuses.append(httpx2.get(url + "/health", timeout=15, trust_env=False).status_code)
                except httpx2.HTTPError as e:
                    statuses.append(type(e).__name__)
                times.append(time.perf_counter() - t0)
            try:
                predict = httpx2.post(url + "/predict", files={"poster": ("p.jpg", poster, "image/jpeg")},
                                      data={"plot": plot}, timeout=60, trust_env=False).status_code
            except httpx2.HTTPError as e:
                predict = type(e).__name__
            print(f"round {r + 1}: {args.idle} more idle sockets ({len(held)} opened): GET /health x{args.probes}: "
                  f"statuses {sorted(set(map(str, statuses)))}, slowest {max(times) * 1000:.0f} ms; "
                  f"POST /predict: {predict}", flush=True)
    finally:
        for s in held:
            s.close()


def latency(url: str, args, poster: bytes, plot: str) -> None:
    b64 = base64.b64encode(poster).decode()
    batch = {"movies": [{"id": str(i), "plot": plot, "poster_base64": b64} for i in range(16)]}
    one, sixteen = [], []
    with httpx2.Client(base_url=url, timeout=120, trust_env=False) as c:
        for _ in range(3):  # warm-up
            c.post("/predict", files={"poster": ("p.jpg", poster, "image/jpeg")}, data={"plot": plot})
        for i in range(args.latency):
            t0 = time.perf_counter()
            c.post("/predict", files={"poster": ("p.jpg", poster, "image/jpeg")},
                   data={"plot": plot}).raise_for_status()
            one.append(time.perf_counter() - t0)
            if i % 5 == 0:
                t0 = time.perf_counter()
                c.post("/predict/batch", json=batch).raise_for_status()
                sixteen.append(time.perf_counter() - t0)
    print(f"latency: POST /predict median {statistics.median(one) * 1000:.0f} ms (min {min(one) * 1000:.0f}) over "
          f"{len(one)}; /predict/batch of 16 median {statistics.median(sixteen) * 1000:.0f} ms (min "
          f"{min(sixteen) * 1000:.0f}) over {len(sixteen)}", flush=True)


def memory(url: str, pid: int, args) -> None:
    big = big_png(args.side)
    body = {"movies": [{"id": f"huge-{i}", "poster_base64": base64.b64encode(big).decode()}
                       for i in range(args.posters)]}
    time.sleep(1)
    idle = rss_mb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    statuses = []
    t0 = time.perf_counter()
    with httpx2.Client(base_url=url, timeout=300, trust_env=False) as c:
        for _ in range(args.batches):
            statuses.append(c.post("/predict/batch", json=body).status_code)
    took = time.perf_counter() - t0
    after = {}
    for at in (1, 3, 10):
        time.sleep(at - sum(after) if after else at)
        after[at] = rss_mb(pid)
    sampler.stop.set()
    print(f"memory: {args.batches} x /predict/batch of {args.posters} PNG posters {args.side}x{args.side} "
          f"({len(big) / 1024:.0f} KB each): statuses {statuses}, {took:.1f} s; RSS idle {idle:.0f} MB, peak "
          f"{sampler.peak:.0f} MB, after " + ", ".join(f"{s} s {mb:.0f} MB" for s, mb in after.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="saved model folder (or an export) to serve")
    ap.add_argument("--tiny", action="store_true", help="build and serve the tests' tiny model instead")
    ap.add_argument("--onnx", action="store_true", help="export the tiny model to ONNX and serve that")
    ap.add_argument("--src", default=str(REPO / "src"), help="the checkout's src/ to run the server from")
    ap.add_argument("--sample", default=str(REPO.parent / "shared" / "data" / "mmimdb-sample"))
    ap.add_argument("--idle", type=int, default=120, help="idle sockets opened per round (0: skip)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--probes", type=int, default=5, help="GET /health tries per round")
    ap.add_argument("--latency", type=int, default=0, help="POST /predict requests timed (0: skip)")
    ap.add_argument("--posters", type=int, default=16, help="posters per batch (0: skip the memory measurement)")
    ap.add_argument("--side", type=int, default=6000)
    ap.add_argument("--batches", type=int, default=1)
    args = ap.parse_args(argv)
    if not args.model and not args.tiny:
        ap.error("give --model DIR or --tiny")
    if args.idle > 900 or args.rounds > 5 or args.posters > 32 or args.batches > 5 or args.latency > 500:
        ap.error("bounded: at most 900 idle sockets a round, 5 rounds, 32 posters, 5 batches, 500 requests")

    with tempfile.TemporaryDirectory(prefix="serve-hostile-") as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp))
        if args.onnx:
            from genrefusion.inference.export import export_onnx

            model = export_onnx(model, Path(tmp) / "onnx", log=None) and Path(tmp) / "onnx"
        proc, url = start(model, Path(args.src))
        try:
            poster, plot = sample_movie(Path(args.sample))
            info = httpx2.get(url + "/model", timeout=30, trust_env=False).json()
            print(f"server from {args.src}: {info['fusion']} over {', '.join(info['encoders'].values())}, runtime "
                  f"{info['runtime']}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
            if args.idle:
                idle_sockets(url, args, poster, plot)
            if args.latency:
                latency(url, args, poster, plot)
            if args.posters:
                memory(url, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
