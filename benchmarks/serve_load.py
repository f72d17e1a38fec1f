"""A bounded load test of `genrefusion serve`: N concurrent clients for T seconds, then hostile batches.

    .venv/bin/python benchmarks/serve_load.py --model runs/gmu/model
    .venv/bin/python benchmarks/serve_load.py --tiny              # the tests' tiny trained model (built here)

Starts `genrefusion serve` with its default limits in a separate process on loopback, then
1. load: --clients threads POST /predict (a sample poster and plot) as fast as they are answered, for --seconds,
   while one more thread polls GET /health (its latency is what a load balancer sees);
2. hostile: --batches times one /predict/batch of --posters PNG posters of --side x --side pixels (about 110 KB
   each, 108 MB each once decoded), then --uploads concurrent /predict requests with one such poster each.
It prints requests served, errors by status, p50/p99 latency per phase, the server's idle and peak RSS (sampled
from /proc every 20 ms, and the kernel's high-water mark), and its RSS once the burst is over. Targets: zero
5xx, and a peak under 1.5 GB above idle. Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import base64
import collections
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[1]
TARGET_PEAK_GB = 1.5


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    def reset(self) -> None:
        self.peak = rss_mb(self.pid)


def tiny_model(dest: Path) -> Path:
    """The tests' tiny GMU (tests/conftest.py's trained_run), trained here in a few seconds."""
    sys.path.insert(0, str(REPO / "tests"))
    import conftest

    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment
    from genrefusion.evaluation.runs import read_run

    catalog = conftest.build_synthetic_catalog(dest / "catalog")
    cfg = Config(data=str(catalog), split="official", modalities="any", model="gmu",
                 text_encoder=str(conftest.build_tiny_bert(dest / "bert")),
                 image_encoder=str(conftest.build_tiny_vit(dest / "vit")), pooling="mean", epochs=20, lr=3e-3,
                 cache_dir=str(dest / "cache"), out=str(dest), name="gmu").validate()
    run_experiment(cfg, run_dir=dest / "gmu", log=None)
    return read_run(dest / "gmu").model_dir


def big_png(side: int) -> bytes:
    """A side x side poster that compresses to ~100 KB: flat colour with a few bands (what a hostile client sends
    to make the server decode 36 megapixels for the price of a small upload)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), (200, 30, 30))
    draw = ImageDraw.Draw(img)
    for i in range(0, side, max(1, side // 10)):
        draw.rectangle((i, 0, i + side // 20, side), fill=(20, 20, 150))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def sample_movie(sample: Path) -> tuple[bytes, str]:
    for path in sorted((sample / "dataset").glob("*.json"))[:200]:
        poster = path.with_suffix(".jpeg")
        if poster.exists():
            import json

            plot = json.loads(path.read_text())["plot"]
            return poster.read_bytes(), " ".join(plot) if isinstance(plot, list) else plot
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (300, 450), (30, 60, 170)).save(buf, "JPEG")
    return buf.getvalue(), "A crew of a space ship finds an alien world and a battle begins."


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.status: collections.Counter = collections.Counter()
        self.latency: list[float] = []

    def add(self, status, seconds: float) -> None:
        with self.lock:
            self.status[status] += 1
            if status == 200:
                self.latency.append(seconds * 1000)

    def line(self, name: str) -> str:
        lat = sorted(self.latency)
        q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else (lambda p: float("nan"))
        errors = {k: v for k, v in self.status.items() if k != 200}
        return (f"{name}: {sum(self.status.values())} requests, {self.status[200]} served, errors by status "
                f"{dict(sorted(errors.items(), key=str)) or '{}'}, p50 {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms")

    def server_errors(self) -> int:
        return sum(v for k, v in self.status.items() if isinstance(k, int) and k >= 500)


def request(tally: Tally, fn) -> None:
    t0 = time.perf_counter()
    try:
        status = fn().status_code
    except httpx2.HTTPError as e:
        status = type(e).__name__  # a transport failure is counted by its kind
    tally.add(status, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="saved model folder to serve")
    ap.add_argument("--tiny", action="store_true", help="build and serve the tests' tiny model instead")
    ap.add_argument("--sample", default=str(REPO.parent / "shared" / "data" / "mmimdb-sample"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--posters", type=int, default=16, help="posters per hostile batch")
    ap.add_argument("--uploads", type=int, default=8, help="concurrent single-poster uploads after the batches")
    ap.add_argument("--side", type=int, default=6000, help="hostile posters are side x side pixels")
    ap.add_argument("--batches", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.model and not args.tiny:
        ap.error("give --model DIR or --tiny")

    tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
    model = Path(args.model) if args.model else tiny_model(Path(tmp.name))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "genrefusion", "serve", "--model", str(model), "--port", str(port),
                             "--log-level", "warning"], env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx2.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.3)
        poster, plot = sample_movie(Path(args.sample))
        files = {"poster": ("poster.jpg", poster, "image/jpeg")}
        with httpx2.Client(base_url=url, timeout=120, trust_env=False) as c:
            info = c.get("/model").json()
            for _ in range(3):  # warm-up: first calls pay for lazy initialisation
                c.post("/predict", files=files, data={"plot": plot}).raise_for_status()
        idle = rss_mb(proc.pid)
        sampler = RssSampler(proc.pid)
        sampler.start()

        # 1. load
        load, health = Tally(), Tally()
        stop_at = time.monotonic() + args.seconds

        def client():
            with httpx2.Client(base_url=url, timeout=120, trust_env=False) as c:
                while time.monotonic() < stop_at:
                    request(load, lambda: c.post("/predict", files=files, data={"plot": plot}))

        def poll_health():
            with httpx2.Client(base_url=url, timeout=30, trust_env=False) as c:
                while time.monotonic() < stop_at:
                    request(health, lambda: c.get("/health"))
                    time.sleep(0.1)

        threads = [threading.Thread(target=client) for _ in range(args.clients)] + [threading.Thread(target=poll_health)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_peak = sampler.peak

        # 2. hostile: big posters, in one batch and as concurrent uploads
        sampler.reset()
        t0 = time.perf_counter()
        big = big_png(args.side)
        b64 = base64.b64encode(big).decode()
        body = {"movies": [{"id": f"huge-{i}", "poster_base64": b64} for i in range(args.posters)]}
        batch, uploads = Tally(), Tally()
        with httpx2.Client(base_url=url, timeout=300, trust_env=False) as c:
            for _ in range(args.batches):
                request(batch, lambda: c.post("/predict/batch", json=body))
        batch_peak = sampler.peak

        def upload():
            with httpx2.Client(base_url=url, timeout=300, trust_env=False) as c:
                request(uploads, lambda: c.post("/predict", files={"poster": ("huge.png", big, "image/png")}))

        sampler.reset()
        threads = [threading.Thread(target=upload) for _ in range(args.uploads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        hostile_s = time.perf_counter() - t0
        time.sleep(3)  # the burst is over: what does the server keep?
        after = rss_mb(proc.pid)
        sampler.stop.set()
        hwm = rss_mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        tmp.cleanup()

    peak = max(load_peak, batch_peak, sampler.peak)
    print(f"model: {info['fusion']} over {', '.join(f'{m}={e}' for m, e in info['encoders'].items())} "
          f"({'the tests tiny model' if args.tiny else model}); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"limits: max_inflight {info['limits']['max_inflight']}, decode_pixels {info['limits']['decode_pixels']:,}, "
          f"max_body_bytes {info['limits']['max_body_bytes']:,}, max_connections {info['limits']['max_connections']}")
    print(load.line(f"load ({args.clients} clients x {args.seconds:g} s, POST /predict)"))
    print(health.line("GET /health during the load"))
    print(batch.line(f"hostile: {args.batches} x /predict/batch of {args.posters} PNG posters {args.side}x{args.side} "
                     f"({len(big) / 1024:.0f} KB each)"))
    print(uploads.line(f"hostile: {args.uploads} concurrent /predict with one {args.side}x{args.side} PNG"))
    print(f"server RSS: idle {idle:.0f} MB; peak during load {load_peak:.0f} MB, during the batches "
          f"{batch_peak:.0f} MB, during the uploads {sampler.peak:.0f} MB (kernel high-water mark {hwm:.0f} MB); "
          f"{after:.0f} MB 3 s after the burst ({hostile_s:.1f} s)")
    fives = sum(t.server_errors() for t in (load, health, batch, uploads))
    ok = fives == 0 and peak - idle < TARGET_PEAK_GB * 1024
    print(f"targets: zero 5xx ({fives} seen), peak under {TARGET_PEAK_GB} GB above idle "
          f"({(peak - idle) / 1024:.2f} GB): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
