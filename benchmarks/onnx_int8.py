"""ONNX Runtime int8 for the offline encoders, measured against torch fp32 and the onnxruntime fp32 backend, on real
sample items: throughput ratios side by side in one run (interleaved rounds, best of each) and the cosine of every
item's pooled vector to torch fp32.

int8 here is ONNX Runtime's dynamic quantisation of the feature backend's traced fp32 graph: int8 weights per
output channel, MatMul/Gemm with a constant weight only (attention's activation x activation products stay fp32),
activations quantised per batch. It is measured, not offered as a precision: a precision must first keep downstream
quality (precision.py), and the worst items here say whether that is worth testing.

    PYTHONPATH=src .venv/bin/python benchmarks/onnx_int8.py --data ../shared/data/mmimdb-sample [--limit 96]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from genrefusion.encoders import create_encoder
    from genrefusion.features.backends import graph_dir, onnx_runner, ort_session
    from genrefusion.paths import cache_root
    from genrefusion.data.modalities import spec

    sys.path.insert(0, str(HERE))  # benchmarks/ is no package: its cpu.py holds the shared measuring helpers
    import cpu as bench

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(bench.DEFAULT_DATA))
    ap.add_argument("--encoders", default=",".join(bench.ENCODERS))
    ap.add_argument("--limit", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"{bench.load_avg()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'encoder':<20} {'variant':<12} {'items/s':>8} {'x torch':>8} {'min cos':>8} {'mean cos':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.encoders.split(","):
            enc = create_encoder(name).eval()
            items = bench.sample_items(args.data, enc.modality, args.limit)
            bs = spec(enc.modality).cpu_batch_size
            fp32 = onnx_runner(enc, cache_root())  # the feature backend's graph (traced into the cache once)
            graph = graph_dir(enc, enc.companions(), cache_root()) / "encoder.onnx"
            q = os.path.join(tmp, f"{name}.int8.onnx")
            quantize_dynamic(str(graph), q, per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": True})
            session = ort_session(Path(q))
            inputs = [i.name for i in session.get_inputs()]

            def int8(batch):
                return torch.from_numpy(session.run(None, {n: batch[n].numpy() for n in inputs})[0]), []

            variants = {"torch fp32": None, "ort fp32": fp32, "ort int8": int8}
            feats, times = {}, {k: [] for k in variants}
            for k, run in variants.items():  # warm-up
                bench.encode_items(enc, items[:bs], "fp32", bs, run)
            for _ in range(args.rounds):
                for k, run in variants.items():
                    feats[k], t = bench.encode_items(enc, items, "fp32", bs, run)
                    times[k].append(t)
            base = min(times["torch fp32"])
            for k in variants:
                cos = torch.nn.functional.cosine_similarity(feats[k], feats["torch fp32"], dim=1)
                print(f"{name:<20} {k:<12} {len(items) / min(times[k]):>8.1f} {base / min(times[k]):>8.2f} "
                      f"{float(cos.min()):>8.4f} {float(cos.mean()):>9.4f}", flush=True)
    print(f"[{bench.load_avg()} at the end]")


if __name__ == "__main__":
    main()
