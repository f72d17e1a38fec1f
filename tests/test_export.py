"""`genrefusion export --format onnx`: every kind of model exports, the exported folder predicts like the torch model
(within 1e-3, on the tiny test models always and on real sample movies with the offline encoders), it runs in a
process where torch cannot be imported (predict CLI and the service), and a damaged folder is refused naming the
file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_subset
from genrefusion.config import Config
from genrefusion.data.loader import load_catalog
from genrefusion.training.experiment import run_experiment
from genrefusion.inference.export import ExportError, export_onnx
from genrefusion.inference.onnx_predictor import MANIFEST, ExportFolderError, OnnxPredictor, pad_sequences
from genrefusion.inference.integrity import seal
from genrefusion.data.posters import load_poster
from genrefusion.cli.predict import load_model

CONTRACT = 1e-3  # the issue's: probabilities within 1e-3 of the torch model


def _movies(catalog, n=14):
    """Movies of the synthetic catalog as (posters, plots), plus the same movies with one modality missing."""
    movies = load_catalog(catalog).movies[:n]
    posters = [load_poster(m.poster) if m.poster else None for m in movies]
    plots = [m.plot for m in movies]
    both = [(p, t) for p, t in zip(posters, plots) if p is not None and t is not None][:4]
    posters += [None] * len(both) + [p for p, _ in both]
    plots += [t for _, t in both] + [None] * len(both)
    return posters, plots


def assert_predicts_alike(torch_model, onnx_model, posters, plots, tol=CONTRACT):
    """Same probabilities (and occlusion probabilities) within `tol`, same result structure."""
    keep = [i for i, (p, t) in enumerate(zip(posters, plots)) if _usable(torch_model, p, t)]
    posters, plots = [posters[i] for i in keep], [plots[i] for i in keep]
    assert posters, "nothing to compare"
    a, b = torch_model.predict(posters, plots), onnx_model.predict(posters, plots)
    for x, y in zip(a, b):
        assert set(x) == set(y) and x["used"] == y["used"]
        pa, pb = (np.array([r[g] for g in torch_model.genres]) for r in (x["probabilities"], y["probabilities"]))
        np.testing.assert_allclose(pb, pa, atol=tol)
        for m in x["without"]:
            np.testing.assert_allclose([y["without"][m][g] for g in torch_model.genres],
                                       [x["without"][m][g] for g in torch_model.genres], atol=tol)
        for k, v in x["contribution"].items():
            assert abs(y["contribution"][k] - v) < 1e-2
        assert (x["fusion"] is None) == (y["fusion"] is None)
        if x["fusion"]:
            assert x["fusion"]["kind"] == y["fusion"]["kind"] and abs(x["fusion"]["image"] - y["fusion"]["image"]) < tol
    return len(posters)


def _usable(predictor, poster, plot) -> bool:
    try:
        predictor.check(poster, plot)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "gmu-onnx"
    manifest = export_onnx(trained_run / "model", out, log=None)
    return out, manifest


def test_the_export_folder_holds_graphs_tokenizer_and_a_manifest(exported, trained_run):
    out, manifest = exported
    assert (out / MANIFEST).is_file() and (out / "head.onnx").is_file()
    assert (out / "text.0.onnx").is_file() and (out / "text.0.tokenizer.json").is_file() and (out / "image.0.onnx").is_file()
    saved = json.loads((out / MANIFEST).read_text())
    source = json.loads((trained_run / "model" / "model.json").read_text())
    assert saved["source"]["weights_sha256"] == source["weights_sha256"]
    assert saved["genres"] == source["genres"] and saved["encoders"] == source["encoders"]
    assert saved["runtime"]["opset"] == 17 and saved["check"]["max_abs_diff"] <= CONTRACT
    assert saved["parts"]["image"][0]["size"] == 224 and saved["parts"]["image"][0]["mean"] == [0.5] * 3
    assert set(saved["files"]) == {p.name for p in out.iterdir()} - {MANIFEST}
    assert set(saved["fields_sha256"]) == set(saved) - {"fields_sha256"}  # every key, the check included
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary folder left behind


def test_the_exported_model_predicts_like_the_torch_model(exported, trained_run, synthetic_catalog):
    torch_model, onnx_model = load_model(trained_run / "model"), load_model(exported[0])
    assert isinstance(onnx_model, OnnxPredictor) and onnx_model.exported and not torch_model.exported
    posters, plots = _movies(synthetic_catalog)
    assert assert_predicts_alike(torch_model, onnx_model, posters, plots) >= 14
    # batched and one at a time agree (padding to a batch's longest plot must not change a movie's result)
    one = onnx_model.predict_one(posters[0], plots[0])["probabilities"]
    batched = onnx_model.predict(posters[:5], plots[:5])[0]["probabilities"]
    assert max(abs(one[g] - batched[g]) for g in one) < 1e-5
    assert onnx_model.info()["runtime"] == "onnxruntime" and onnx_model.info()["fusion"] == "gmu"


@pytest.mark.parametrize("overrides", [
    {"model": "late", "late_weights": "per_genre"},
    {"model": "attention", "modality_dropout": 0.3, "modalities": "both"},
    {"model": "cross-attention", "cross_attention": "sequence"},
    {"model": "text"},
    {"model": "image", "image_encoder": "VIT+VIT"},  # a joined encoder: one graph per part
    {"model": "gmu", "precision": "bf16"},
], ids=["late-per-genre", "attention-dropout", "cross-attention-sequence", "text", "image-joined", "gmu-bf16"])
def test_every_kind_of_model_exports_and_predicts_alike(overrides, synthetic_catalog, tiny_bert, tiny_vit, tmp_path,
                                                         trained_run):
    base = {"text_encoder": str(tiny_bert), "image_encoder": str(tiny_vit), "modalities": "any"}
    overrides = {k: (v.replace("VIT", str(tiny_vit)) if isinstance(v, str) else v) for k, v in overrides.items()}
    cfg = Config(data=str(synthetic_catalog), split="official", pooling="mean", epochs=2, lr=3e-3,
                 cache_dir=str(trained_run.parent / "cache"), out=str(tmp_path), name="m",
                 **{**base, **overrides}).validate()
    run_experiment(cfg, run_dir=tmp_path / "m", log=None)
    manifest = export_onnx(tmp_path / "m" / "model", tmp_path / "onnx", log=None)
    torch_model, onnx_model = load_model(tmp_path / "m" / "model"), load_model(tmp_path / "onnx")
    assert onnx_model.sequences == (overrides.get("cross_attention") == "sequence")
    assert assert_predicts_alike(torch_model, onnx_model, *_movies(synthetic_catalog)) >= 10
    if "+" in overrides.get("image_encoder", ""):
        assert [p["file"] for p in manifest["parts"]["image"]] == ["image.0.onnx", "image.1.onnx"]
    if overrides.get("precision") == "bf16":
        # The graphs compute in fp32: the contract holds against the torch model at fp32, and the difference from
        # the torch model at its bf16 training precision is measured and recorded.
        check = manifest["check"]
        assert check["trained_precision"] == {"text": "bf16", "image": "bf16"}
        assert 0 < check["max_abs_diff_vs_trained_precision"] < 0.05 and check["max_abs_diff"] <= CONTRACT


def test_an_export_that_does_not_agree_is_refused_and_writes_nothing(trained_run, tmp_path):
    with pytest.raises(ExportError, match="over the tolerance"):
        export_onnx(trained_run / "model", tmp_path / "out", tolerance=0.0, log=None)
    assert not list(tmp_path.iterdir())


def test_a_damaged_export_is_refused_naming_the_file(exported, tmp_path):
    import shutil

    def copy():
        dest = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(exported[0], dest)
        return dest

    d = copy()
    with open(d / "head.onnx", "r+b") as f:  # one byte changed
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ExportFolderError, match=r"head\.onnx: its SHA-256"):
        load_model(d)
    d = copy()
    (d / "text.0.tokenizer.json").unlink()
    with pytest.raises(ExportFolderError, match=r"text\.0\.tokenizer\.json: missing"):
        load_model(d)
    d = copy()
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(ExportFolderError, match=r"export\.json: not valid JSON"):
        load_model(d)
    d = copy()  # a manifest whose recorded shapes no longer fit the graph
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["head"]["inputs"][0]["shape"][-1] += 1
    (d / MANIFEST).write_text(json.dumps(seal(manifest)))  # consistent, as a faulty exporter would write it
    with pytest.raises(ExportFolderError, match=r"head\.onnx: input 'text' is"):
        load_model(d)
    d = copy()
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["thresholds"] = [0.5] * 3
    (d / MANIFEST).write_text(json.dumps(seal(manifest)))
    with pytest.raises(ExportFolderError, match="3 thresholds for 23 genres"):
        load_model(d)
    d = copy()  # edited by hand: every key that changes a prediction is covered by fields_sha256
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["genres"][manifest["genres"].index("Drama")] = "Telenovela"
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportFolderError, match=r"export\.json: 'genres' was edited after the folder was saved"):
        load_model(d)
    del manifest["fields_sha256"]  # an export from before the digests: its genres are still checked
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportFolderError, match=r"export\.json: 'genres' is not the list of the 23 MM-IMDb genres"):
        load_model(d)
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_model(exported[0], device="cuda")


def test_numpy_padding_is_the_torch_padding():
    import torch

    from genrefusion.fusion.batching import pad_sequences as torch_pad

    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(3, 4)).astype(np.float32), None, rng.normal(size=(5, 4)).astype(np.float32)]
    a, am = pad_sequences(seqs, 4)
    b, bm = torch_pad([None if s is None else torch.from_numpy(s) for s in seqs], 4)
    np.testing.assert_array_equal(a, b.numpy())
    np.testing.assert_array_equal(am, bm.numpy())


# A process in which `import torch` (and transformers, which imports it) fails: the exported model must not need it.
NO_TORCH = textwrap.dedent("""
    import sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "torchvision"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, NoTorch())
""")


def _run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_predict_cli_runs_an_export_without_torch(exported, synthetic_catalog, tmp_path):
    out = tmp_path / "pred.csv"
    code = """
        import json, sys
        from genrefusion.cli.commands import main
        assert main(["predict", "--model", sys.argv[1], "--poster", sys.argv[2], "--plot", "ghost night", "--json"]) == 0
        assert main(["predict", "--model", sys.argv[1], "--input", sys.argv[3], "--output", sys.argv[4]]) == 0
        assert "torch" not in sys.modules, "torch was imported"
    """
    r = _run_without_torch(code, str(exported[0]), str(synthetic_catalog.parent / "p0.jpg"), str(synthetic_catalog),
                           str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["used"] == {"text": True, "image": True} and len(result["genres"]) == 23
    rows = out.read_text().splitlines()
    assert rows[0].startswith("id,predicted,") and len(rows) > 50


def test_the_service_runs_an_export_without_torch(exported):
    code = """
        import base64, io, json, sys
        import httpx2
        from PIL import Image
        from genrefusion.cli.predict import load_model
        from genrefusion.serving import create_app
        from serving_helpers import LoopbackServer
        predictor = load_model(sys.argv[1])
        buf = io.BytesIO()
        Image.new("RGB", (60, 90), (150, 20, 20)).save(buf, "JPEG")
        with LoopbackServer(create_app(predictor)) as url, httpx2.Client(base_url=url, trust_env=False, timeout=60) as c:
            out = {"model": c.get("/model").json(), "schema": c.get("/openapi.json").json(),
                   "predict": c.post("/predict", data={"plot": "ghost night dark"},
                                     files={"poster": ("p.jpg", buf.getvalue(), "image/jpeg")}).json(),
                   "batch": c.post("/predict/batch", json={"movies": [
                       {"id": "a", "plot": "space ship"},
                       {"id": "b", "poster_base64": base64.b64encode(buf.getvalue()).decode()}]}).json()}
            r = c.post("/explain", data={"plot": "ghost night"})
            out["explain"] = [r.status_code, r.json()]
            r = c.post("/predict", data={"plot": "   "})
            out["blank"] = [r.status_code, r.json()]
            out["page"] = c.get("/").status_code
        assert "torch" not in sys.modules, "torch was imported"
        print(json.dumps(out))
    """
    r = _run_without_torch(code, str(exported[0]))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model"]["runtime"] == "onnxruntime" and out["model"]["fusion"] == "gmu"
    assert "/explain" not in out["schema"]["paths"] and {"/predict", "/predict/batch"} <= set(out["schema"]["paths"])
    assert out["predict"]["used"] == {"text": True, "image": True} and len(out["predict"]["genres"]) == 23
    assert [r["id"] for r in out["batch"]["results"]] == ["a", "b"]
    assert out["explain"][0] == 501 and out["explain"][1]["code"] == "not_implemented"
    assert "torch model" in out["explain"][1]["message"]
    assert out["blank"][0] == 422 and set(out["blank"][1]) == {"code", "message", "field"}
    assert out["page"] == 200


def test_export_and_predict_commands(serving_cli, trained_run, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert serving_cli(["export", "--model", str(trained_run / "model"), "--format", "onnx", "--out", str(out)]) == 0
    assert "differ from the torch model's (fp32) by at most" in capsys.readouterr().err
    assert serving_cli(["predict", "--model", str(out), "--plot", "ghost night dark"]) == 0
    assert "(threshold " in capsys.readouterr().out
    assert serving_cli(["export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert serving_cli(["explain", "--model", str(out), "--plot", "ghost night", "--out", str(tmp_path / "ex")]) == 2
    assert "cannot be explained" in capsys.readouterr().err


def test_real_sample_movies_predict_alike_with_the_offline_encoders(sample_root, tmp_path):
    """MiniLM + EfficientNet-Lite0 GMU on a slice of the real sample, exported, compared on real test movies."""
    data = make_subset(sample_root, tmp_path / "data", {"train": 48, "dev": 16, "test": 16})
    cfg = Config(data=str(data), split="official", modalities="any", model="gmu", text_encoder="minilm-l6",
                 image_encoder="efficientnet-lite0", epochs=3, cache_dir=str(tmp_path / "cache"), out=str(tmp_path),
                 name="gmu").validate()
    run_experiment(cfg, run_dir=tmp_path / "gmu", log=None)
    manifest = export_onnx(tmp_path / "gmu" / "model", tmp_path / "onnx", check_data=str(data), check_movies=16,
                           log=None)
    assert manifest["check"]["movies"] >= 16 and manifest["check"]["max_abs_diff"] <= CONTRACT
    from genrefusion.data.loader import load_dataset

    ds = load_dataset(str(data))
    movies = [ds.movies[i] for i in ds.splits["test"]]
    posters = [load_poster(m.poster) if m.poster else None for m in movies]
    plots = [m.plot for m in movies]
    n = assert_predicts_alike(load_model(tmp_path / "gmu" / "model"), load_model(tmp_path / "onnx"), posters, plots)
    assert n >= 10
    assert all(isinstance(p, Image.Image) for p in posters if p is not None)
