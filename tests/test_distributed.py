"""Several processes: two ranks under torchrun (gloo, CPU) give the features and the training of one process.

Features are compared bit for bit (both sides run the same batches of the same plan, one thread each). Training is
compared with a tight tolerance (metrics, probabilities: 1e-5 relative): DDP sums the ranks' gradients in another
order than one process sums a batch's, so the last bits differ; everything else (init, batch order, the uneven
last batch) is the same.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genrefusion import distributed
from genrefusion.config import Config
from genrefusion.data.loader import load_catalog
from genrefusion.encoders import create_encoder
from genrefusion.features.cache import FeatureCache, dataset_features
from genrefusion.features.spec import FeatureSpec
from genrefusion.fusion import create_model
from genrefusion.fusion.losses import create_loss
from genrefusion.training.train import FeatureBatches, fit, predict

from conftest import WORDS

N_TRAIN, N_VAL, DIM = 16 * 5 + 1, 37, 12  # the last global batch has 1 movie: one rank gets none of it


def _catalog(path: Path, n: int = 40) -> Path:
    import random

    rng = random.Random(1)
    rows = [{"id": str(i), "plot": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) + ".",
             "genres": ["Drama"]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _problem():
    """Synthetic features for a GMU with missing modalities; no dropout, so one and two processes compute the same."""
    g = torch.Generator().manual_seed(0)
    n = N_TRAIN + N_VAL
    text, image = torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g)
    y = ((text + image) @ torch.randn(DIM, 23, generator=g) > 0.3).float()
    from genrefusion.features.cache import FeatureTable

    tables = [FeatureTable(t, torch.rand(n, generator=g) > 0.15, encoder="synthetic", fingerprint="0")
              for t in (text, image)]
    cfg = Config(model="gmu", head_dropout=[0.0, 0.0], lr=3e-3, batch_size=16, epochs=3, seed=0,
                 early_stopping_patience=10).validate()
    return FeatureBatches(*tables), y, cfg


def _finetune(catalog, encoder_dir):
    """End-to-end fine-tuning of a text model: the encoder's weights live outside the DDP-wrapped head."""
    from genrefusion.training.endtoend import EncoderBatches

    ds = load_catalog(catalog)
    torch.manual_seed(0)
    enc = create_encoder(str(encoder_dir))
    for m in enc.modules():
        if isinstance(m, torch.nn.Dropout):  # dropout masks would differ between the ranks' slices
            m.p = 0.0
    enc.requires_grad_(True)
    batches = EncoderBatches(ds, text_encoder=enc, finetune=True)
    cfg = Config(model="text", head_dropout=[0.0, 0.0], lr=1e-3, batch_size=6, epochs=1, seed=0).validate()
    torch.manual_seed(0)
    model = create_model("text", text_dim=enc.dim, image_dim=None, head_dropout=(0.0, 0.0))
    fit(model, batches, torch.as_tensor(ds.labels()), range(25), range(25, 40), cfg, create_loss("bce"),
        extra_param_groups=[{"params": batches.encoder_parameters(), "lr": 1e-3}])
    return {**{f"head.{k}": v for k, v in model.state_dict().items()},
            **{f"encoder.{k}": v for k, v in enc.state_dict().items()}}


def _train(batches, y, cfg):
    torch.manual_seed(cfg.seed)
    model = create_model("gmu", text_dim=DIM, image_dim=DIM, head_dropout=(0.0, 0.0))
    loss = create_loss("bce-posweight", pos_weight=torch.full((23,), 3.0))
    result = fit(model, batches, y, range(N_TRAIN), range(N_TRAIN, N_TRAIN + N_VAL), cfg, loss)
    probs, extra = predict(model, batches, range(N_TRAIN, N_TRAIN + N_VAL), batch_size=8, keep=("gate",))
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    return model, history, probs, extra["gate"]


WORKER = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])  # tests/, for the helpers above
    from safetensors.torch import save_file
    from genrefusion import distributed
    from genrefusion.data.loader import load_catalog
    from genrefusion.encoders import create_encoder
    from genrefusion.features.cache import dataset_features
    from genrefusion.features.spec import FeatureSpec
    from test_distributed import _finetune, _problem, _train

    assert distributed.init_from_env() and distributed.world_size() == 2
    rank, out = distributed.rank(), sys.argv[2]
    enc = create_encoder(sys.argv[4])
    calls = []
    encode = enc.encode
    enc.encode = lambda batch, **kw: calls.append(len(batch["input_ids"])) or encode(batch, **kw)
    table = dataset_features(load_catalog(sys.argv[3]), enc,
                             FeatureSpec(cache_root=out + "/cache", batch_size=4, shard_batches=1, progress=False))
    model, history, probs, gate = _train(*_problem())
    tuned = _finetune(sys.argv[3], sys.argv[4])
    save_file({"features": table.pooled, "probs": torch.from_numpy(probs), "gate": torch.from_numpy(gate),
               **{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"tuned.{k}": v.contiguous() for k, v in tuned.items()}}, f"{out}/rank{rank}.safetensors")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"history": history, "encoded_now": table.encoded_now, "batches": calls}, f)
""")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_bert):
    out = tmp_path_factory.mktemp("ddp")
    catalog = _catalog(out / "movies.jsonl")
    (out / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
           str(out / "worker.py"), str(Path(__file__).parent), str(out), str(catalog), str(tiny_bert)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [(load_file(str(out / f"rank{r}.safetensors")), json.loads((out / f"rank{r}.json").read_text()))
             for r in range(2)]
    return out, catalog, ranks


@pytest.fixture
def one_thread():
    """The reference runs single-threaded like the ranks, so that the same matmuls give the same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_ranks_share_the_encoding_and_get_the_features_of_one_process(two_ranks, tiny_bert, tmp_path,
                                                                           one_thread):
    out, catalog, ranks = two_ranks
    single = dataset_features(load_catalog(catalog), create_encoder(str(tiny_bert)),
                              FeatureSpec(cache_root=tmp_path / "cache", batch_size=4, shard_batches=1, progress=False))
    for tensors, info in ranks:
        assert torch.equal(tensors["features"], single.pooled)  # bit-identical, on every rank
        assert info["encoded_now"] == 40  # the total over ranks, reported on each
    # the 10 batches (one shard each) were split between the ranks: 5 each, none encoded twice
    assert [len(info["batches"]) for _, info in ranks] == [5, 5]
    assert sorted(ranks[0][1]["batches"] + ranks[1][1]["batches"]) == [4] * 10
    enc = create_encoder(str(tiny_bert))  # its own folder (the reference also filled its companion's)
    shard_names = lambda root: sorted(p.name for p in FeatureCache(enc, FeatureSpec(cache_root=root))  # noqa: E731
                                      .dir.glob("part-*.safetensors"))
    assert shard_names(out / "cache") == shard_names(tmp_path / "cache")
    # and a later single-process run finds everything the two ranks wrote
    again = dataset_features(load_catalog(catalog), create_encoder(str(tiny_bert)),
                             FeatureSpec(cache_root=out / "cache", batch_size=4, shard_batches=1, progress=False))
    assert again.encoded_now == 0


def test_two_ranks_train_like_one_process_with_the_same_global_batch(two_ranks, one_thread):
    _, _, ranks = two_ranks
    model, history, probs, gate = _train(*_problem())
    for tensors, info in ranks:
        assert len(info["history"]) == len(history) == 3
        for got, want in zip(info["history"], history):
            assert got.keys() == want.keys()
            for k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (k, got, want)
        # Weights: Adam divides by sqrt(v) + 1e-8, so for the odd weight whose gradient is ~0 a last-bit difference
        # in that gradient moves it by up to ~lr * 1e-2; nearly all weights agree to 1e-6 and all to 1e-4.
        close = total = 0
        for k, v in model.state_dict().items():
            torch.testing.assert_close(tensors[f"model.{k}"], v, rtol=1e-4, atol=1e-4)
            close += int(torch.isclose(tensors[f"model.{k}"], v, rtol=1e-5, atol=1e-6).sum())
            total += v.numel()
        assert close >= 0.9995 * total
        np.testing.assert_allclose(tensors["probs"].numpy(), probs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tensors["gate"].numpy(), gate, rtol=1e-5, atol=1e-6)
    # the ranks agree with each other exactly: they applied the same averaged gradients
    for k in model.state_dict():
        assert torch.equal(ranks[0][0][f"model.{k}"], ranks[1][0][f"model.{k}"])
    # and the training really moved the weights (the comparison is not between two untrained models)
    torch.manual_seed(0)
    init = create_model("gmu", text_dim=DIM, image_dim=DIM, head_dropout=(0.0, 0.0)).state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in model.state_dict().items())


def test_two_ranks_fine_tune_an_encoder_end_to_end_like_one_process(two_ranks, tiny_bert, one_thread):
    """The encoder sits outside the DDP-wrapped head; its gradients are averaged by distributed.sync_gradients."""
    _, catalog, ranks = two_ranks
    single = _finetune(catalog, tiny_bert)
    torch.manual_seed(0)
    untouched = create_encoder(str(tiny_bert)).state_dict()
    moved = [k for k, v in untouched.items() if not torch.allclose(single[f"encoder.{k}"], v)]
    assert len(moved) > 10  # fine-tuning changed the encoder itself
    for tensors, _ in ranks:
        for k, v in single.items():
            torch.testing.assert_close(tensors[f"tuned.{k}"], v, rtol=1e-4, atol=1e-4)


def test_slices_tile_the_batch_and_weights_restore_the_global_mean():
    from genrefusion.training.train import _local_slice

    for n in (1, 2, 7, 16, 17):
        b = torch.arange(100, 100 + n)
        parts = [_local_slice(b, 3, r) for r in range(3)]
        assert torch.equal(torch.cat([s for s, w, k in parts if k]), b)  # contiguous, in rank order
        assert [k for _, _, k in parts] == [len(s) if w else 0 for s, w, _ in parts]
        # sum_r weight_r * mean_r / world == global mean, for any per-row values
        vals = torch.randn(200)
        global_mean = vals[b].mean()
        recombined = sum(w * vals[s].mean() for s, w, k in parts) / 3
        torch.testing.assert_close(recombined, global_mean)
    assert distributed.shard_bounds(10, 0, 3) == (0, 4) and distributed.shard_bounds(10, 2, 3) == (7, 10)


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.all_reduce_sum(3) == 3 and distributed.all_gather_objects("x") == ["x"]
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu",
                                                              0 if torch.cuda.is_available() else None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            distributed.resolve_device("cuda")


def test_gpu_loading_path_prefetching_workers_give_the_same_features(tmp_path, tiny_bert, tiny_vit):
    """The GPU path's worker processes (here on the CPU) prepare exactly the batches the inline path does."""
    from PIL import Image

    rows = []
    for i in range(10):
        Image.new("RGB", (30 + i, 44), (20 * i, 100, 255 - 20 * i)).save(tmp_path / f"{i}.jpg")
        rows.append({"id": str(i), "plot": " ".join(WORDS[i:i + 5 + i]), "genres": ["Drama"], "poster": f"{i}.jpg"})
    (tmp_path / "movies.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_catalog(tmp_path / "movies.jsonl")
    for model in (tiny_bert, tiny_vit):
        inline = dataset_features(ds, create_encoder(str(model)), FeatureSpec(cache_root=tmp_path / "a", batch_size=3,
                                                                              progress=False))
        workers = dataset_features(ds, create_encoder(str(model)), FeatureSpec(cache_root=tmp_path / "b", batch_size=3,
                                                                               progress=False, num_workers=2))
        assert workers.encoded_now == 10 and torch.equal(inline.pooled, workers.pooled)


def test_autocast_precision_is_part_of_the_cache_key(tmp_path, tiny_bert):
    ds = load_catalog(_catalog(tmp_path / "movies.jsonl", 12))
    enc = create_encoder(str(tiny_bert))
    fp32 = dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "c", progress=False))  # the CPU default
    bf16 = dataset_features(ds, enc, FeatureSpec(cache_root=tmp_path / "c", progress=False, precision="bf16"))
    assert bf16.encoded_now == 12 and bf16.fingerprint != fp32.fingerprint  # not served from the fp32 entry
    assert not torch.equal(bf16.pooled, fp32.pooled)
    torch.testing.assert_close(bf16.pooled, fp32.pooled, rtol=0.1, atol=0.1)  # same encoder, lower precision
    assert FeatureCache(enc, FeatureSpec(cache_root=tmp_path / "c", precision="fp32")).fingerprint == fp32.fingerprint
    with pytest.raises(ValueError, match="precision"):
        FeatureCache(enc, FeatureSpec(cache_root=tmp_path / "c", precision="int8"))
