"""The thesis grid end to end on a small subset of the real sample, with tiny local encoders in every slot."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from genrefusion.cli.commands import main
from genrefusion.training.grid import ROWS, resolve_slots
from genrefusion.evaluation.metrics import compute_metrics

from conftest import make_subset


def test_slots_default_to_offline_stand_ins_and_accept_overrides():
    assert resolve_slots() == {"BERT": "minilm-l6", "RoBERTa": "mpnet-base", "ResNet50": "efficientnet-lite0",
                               "ViT": "dinov2-vits14"}
    assert resolve_slots("thesis")["ViT"] == "vit-base-patch16-224"
    clip = resolve_slots("clip")
    assert (clip["BERT"], clip["ResNet50"]) == ("clip-vit-b32-text", "clip-vit-b32-vision")
    assert resolve_slots(overrides=["RoBERTa=roberta-large"])["RoBERTa"] == "roberta-large"
    with pytest.raises(ValueError, match="unknown slot"):
        resolve_slots(overrides=["GPT=x"])


def test_fusion_rows_can_fuse_other_slots(sample_root, tmp_path, tiny_bert, tiny_vit):
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    data = make_subset(sample_root, tmp_path / "subset", {"train": 40, "dev": 0, "test": 30})
    slots = [f"BERT={tiny_bert}", f"RoBERTa={tmp_path / 'other-bert'}", f"ResNet50={tiny_vit}", f"ViT={tiny_vit}"]
    from conftest import build_tiny_bert

    build_tiny_bert(tmp_path / "other-bert")
    g = run_grid(GridSpec(DataSpec(data, "stratified", "both"), slot_overrides=slots, rows=["gmu"],
                          cache_dir=tmp_path / "c", out=tmp_path / "o", fuse=("RoBERTa", "ViT"), report=False,
                          config_overrides=["epochs=1"]), log=lambda *_: None)
    assert g["fuse"] == ["RoBERTa", "ViT"] and g["rows"][0]["encoders"] == {"RoBERTa": str(tmp_path / "other-bert"),
                                                                           "ViT": str(tiny_vit)}
    with pytest.raises(ValueError, match="expected a text slot and an image slot"):
        run_grid(GridSpec(DataSpec(data), fuse=("ResNet50", "ViT"), out=tmp_path / "x"), log=lambda *_: None)


def test_grid_end_to_end_on_a_sample_subset(sample_root, tmp_path, tiny_bert, tiny_vit, capsys):
    data = make_subset(sample_root, tmp_path / "subset", {"train": 70, "dev": 0, "test": 40})
    out = tmp_path / "run"
    args = ["grid", "--preset", "thesis", "--data", str(data), "--split", "stratified", "--modalities", "both",
            "--text-encoder", f"BERT={tiny_bert}", "--text-encoder", f"RoBERTa={tiny_bert}",
            "--image-encoder", f"ResNet50={tiny_vit}", "--image-encoder", f"ViT={tiny_vit}",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-report", "epochs=3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Table 6" in printed and "Table 7" in printed and "Cross-Attention" in printed
    grid = json.loads((out / "grid.json").read_text())
    assert [r["row"] for r in grid["rows"]] == [r.name for r in ROWS]
    assert sum(grid["n"].values()) == 110 and min(grid["n"].values()) > 10
    for row in grid["rows"]:
        assert str(tiny_bert) in row["label"] or str(tiny_vit) in row["label"]  # the table names the encoder
        run = out / row["runs"][0]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["config"]["epochs"] == 3 and metrics["data"]["fingerprint"] == grid["data_fingerprint"]
        assert set(metrics["timings"]) >= {"train_s", "eval_s"}
        # every number is recomputable from the saved test probabilities and labels
        with safe_open(str(run / "test_predictions.safetensors"), "np") as f:
            probs, labels = f.get_tensor("probs"), f.get_tensor("labels")
        again = compute_metrics(labels, probs, metrics["thresholds"], metrics["test"]["per_genre"].keys())
        assert again == metrics["test"]
        assert row["test"] == metrics["test"]
        assert (run / "model" / "model.safetensors").exists() and (run / "config.yaml").exists()
        with safe_open(str(run / "val_predictions.safetensors"), "np") as f:  # validation numbers too
            again = compute_metrics(f.get_tensor("labels"), f.get_tensor("probs"), metrics["thresholds"],
                                    metrics["val"]["per_genre"].keys())
        assert again == metrics["val"]
    gmu = json.loads((out / "gmu" / "seed-0" / "metrics.json").read_text())
    gate = gmu["analysis"]["gate"]["mean"]
    assert all(0 < g < 1 for g in gate)
    # paired bootstrap between two rows' saved test predictions
    assert main(["compare", str(out / "bert"), str(out / "gmu"), "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "f1_macro" in printed and "95% CI" in printed
    # second run over the same cache: every encoder is served by the warm cache, and the rows trained again come
    # out identical. Three rows read all four slots (ViT, RoBERTa; GMU: BERT + ResNet50), so the other six
    # need not be trained twice.
    rerun = ["ViT", "RoBERTa", "GMU"]  # in grid order
    assert main(args[:-2] + ["--out", str(tmp_path / "run2"), "--rows", ",".join(rerun), "epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" 0 newly encoded") == 4
    g2 = json.loads((tmp_path / "run2" / "grid.json").read_text())
    first = {r["row"]: r["test"] for r in grid["rows"]}
    assert [r["row"] for r in g2["rows"]] == rerun
    assert [r["test"] for r in g2["rows"]] == [first[name] for name in rerun]  # identical on rerun


def test_train_command_from_a_yaml_config(synthetic_catalog, tiny_bert, tiny_vit, tmp_path, capsys):
    cfg = tmp_path / "gmu.yaml"
    cfg.write_text(f"model: gmu\ndata: {synthetic_catalog}\ntext_encoder: {tiny_bert}\nimage_encoder: {tiny_vit}\n"
                   f"epochs: 2\ncache_dir: {tmp_path / 'cache'}\nout: {tmp_path / 'runs'}\nname: g\n")
    assert main(["train", "--config", str(cfg), "lr=1e-3", "threshold_mode=per_genre"]) == 0
    assert "F1 macro" in capsys.readouterr().out
    run = tmp_path / "runs" / "g"
    saved = (run / "config.yaml").read_text()
    assert "lr: 0.001" in saved and "threshold_mode: per_genre" in saved and "model: gmu" in saved
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["thresholds"]) == 23 and m["test_at_0.5"] is not None
    assert set(m["test_by_modality"]) >= {"both", "text_only"}  # the catalog has movies without posters
    # the run's threshold is the one its VALIDATION predictions give, applied unchanged to test
    from genrefusion.evaluation.metrics import tune_thresholds

    with safe_open(str(run / "val_predictions.safetensors"), "np") as f:
        assert m["thresholds"] == tune_thresholds(f.get_tensor("labels"), f.get_tensor("probs"), "per_genre").tolist()
    with safe_open(str(run / "test_predictions.safetensors"), "np") as f:
        assert json.loads(f.metadata()["thresholds"]) == m["thresholds"] == m["test"]["threshold"]


def test_end_to_end_mode_fine_tunes_the_encoders(synthetic_catalog, tiny_bert, tiny_vit, tmp_path):
    import torch

    from genrefusion.config import Config
    from genrefusion.encoders import create_encoder
    from genrefusion.training.endtoend import EncoderBatches
    from genrefusion.data.loader import load_dataset
    from genrefusion.training.experiment import run_experiment

    ds = load_dataset(synthetic_catalog)
    cfg = Config(data=str(synthetic_catalog), model="early", text_encoder=str(tiny_bert),
                 image_encoder=str(tiny_vit), mode="end-to-end", finetune=True, epochs=1, lr=1e-3,
                 encoder_lr=1e-3).validate()
    m = run_experiment(cfg, ds, run_dir=None, log=None)
    assert 0 <= m["test"]["f1_macro"] <= 1 and len(m["history"]) == 1
    # the encoders receive gradients through the batch function in training, and augmentation varies posters
    text, image = create_encoder(str(tiny_bert)), create_encoder(str(tiny_vit))
    batches = EncoderBatches(ds, text, image, finetune=True)
    idx = torch.arange(8)
    out = batches(idx, True)
    (out["text"].sum() + out["image"].sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in text.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in image.parameters())
    with torch.no_grad():
        a, b = batches(idx, True)["image"], batches(idx, True)["image"]
        c, d = batches(idx, False)["image"], batches(idx, False)["image"]
    present = out["image_present"]
    assert not torch.allclose(a[present], b[present]) and torch.equal(c, d)


def test_grid_rows_train_side_by_side_like_in_the_process(sample_root, tmp_path, tiny_bert, tiny_vit, monkeypatch):
    """Rows without fold heads of their own train in worker processes (fold_workers); on one thread the grid comes
    out exactly as when every row trains in this process, with the rows' lines logged in order. fuse=auto still
    waits for the unimodal rows."""
    import torch

    from genrefusion.training import grid as grid_mod
    from genrefusion.training import workers
    from genrefusion.config import Config
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import AUTO, GridSpec, row_workers, run_grid

    data = make_subset(sample_root, tmp_path / "subset", {"train": 40, "dev": 20, "test": 30})
    slots = [f"BERT={tiny_bert}", f"RoBERTa={tiny_bert}", f"ResNet50={tiny_vit}", f"ViT={tiny_vit}"]
    pools = []
    real_run = workers.run
    monkeypatch.setattr(workers, "run", lambda fn, job, tasks, n, **kw: (pools.append((fn, len(tasks), n)),
                                                                         real_run(fn, job, tasks, n, **kw))[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' one thread, so only where the rows train differs
    grids, lines = {}, {}
    try:
        for fw in (1, 2):
            lines[fw] = []
            grids[fw] = run_grid(GridSpec(DataSpec(data, "stratified", "both"), slot_overrides=slots,
                                          rows=["BERT", "ViT", "Early Fusion", "GMU"], seeds=2, fuse=(AUTO,),
                                          cache_dir=tmp_path / "c", out=tmp_path / f"o{fw}", report=False,
                                          config_overrides=["epochs=2", f"fold_workers={fw}"]), log=lines[fw].append)
    finally:
        torch.set_num_threads(threads)
    # two phases each (unimodal rows, then the fusions fuse=auto chose from them): in this process with
    # fold_workers=1, then in two workers with fold_workers=2
    task = grid_mod._row_seed_task
    assert pools == [(task, 4, 1), (task, 4, 1), (task, 4, 2), (task, 4, 2)]
    one, two = grids[1], grids[2]
    assert one["fuse_choice"] == two["fuse_choice"]
    assert [r["row"] for r in two["rows"]] == ["ViT", "BERT", "Early Fusion", "GMU"]  # ROWS order
    for a, b in zip(one["rows"], two["rows"]):
        assert a["test"] == b["test"] and a["val_score"] == b["val_score"] and a["runs"] == b["runs"]
    strip = lambda ls: [l.rsplit(", ", 1)[0] for l in ls if "seed" in l]  # noqa: E731  (drop the seconds)
    assert strip(lines[1]) == strip(lines[2]) and len(strip(lines[2])) == 8
    for r in two["rows"]:
        for d in r["runs"]:
            assert (tmp_path / "o2" / d / "metrics.json").exists()
    # where rows stay in the process: fold heads of their own, tracking, end-to-end, one worker asked for
    base = Config(fold_workers=2).validate()
    assert row_workers(base, 4, False) == 2
    assert row_workers(base.replace(threshold_source="oof", threshold_mode="per_genre"), 4, False) == 1
    assert row_workers(base, 4, True) == 1
    assert row_workers(base.replace(mode="end-to-end"), 4, False) == 1
    assert row_workers(base.replace(fold_workers=1), 4, False) == 1


@pytest.mark.parametrize("seeds", [0, -1, 1.5, True, "2"])
def test_a_grid_refuses_a_seed_count_that_is_not_a_positive_whole_number(seeds, tmp_path):
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    with pytest.raises(ValueError, match="seeds=.*expected a whole number >= 1"):
        run_grid(GridSpec(DataSpec(tmp_path / "nowhere"), seeds=seeds, out=tmp_path / "o"), log=lambda *_: None)
    assert not (tmp_path / "o").exists()  # refused before any work
