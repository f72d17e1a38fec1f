"""Saved models restore exactly and predict unseen movies: one movie, a batch, a catalog, a missing modality."""
from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from genrefusion.inference.checkpoint import save_model
from genrefusion.inference.integrity import seal
from genrefusion.config import Config
from genrefusion.data.loader import load_catalog
from genrefusion.features.fingerprints import identity_sha256
from genrefusion.data.images import load_poster
from genrefusion.cli.predict import (InputError, InputTooLarge, UnsupportedInput, check_plot, decode_poster,
                                 load_model)

from conftest import SERVING_MODULES


@pytest.fixture(scope="module")
def predictor(trained_run):
    return load_model(trained_run / "model")


def _movies(catalog, ids=None):
    ds = load_catalog(catalog)
    movies = [m for m in ds.movies if ids is None or m.id in ids]
    if ids is not None:
        movies.sort(key=lambda m: ids.index(m.id))
    return movies, [load_poster(m.poster) if m.poster else None for m in movies], [m.plot for m in movies]


def test_model_folder_holds_what_rebuilds_the_model(trained_run):
    meta = json.loads((trained_run / "model" / "model.json").read_text())
    assert (trained_run / "model" / "model.safetensors").is_file()
    assert meta["model"]["name"] == "gmu" and len(meta["genres"]) == 23 and len(np.atleast_1d(meta["thresholds"])) >= 1
    assert set(meta["encoders"]) == {"text", "image"} and meta["config"]["epochs"] == 20


def test_a_saved_model_builds_its_encoders_offline_weights_under_the_given_cache_root(trained_run, tmp_path,
                                                                                      monkeypatch):
    """evaluate --cache-dir and the distillation teacher load models whose encoders' offline weights
    (offline_weights.py) go under the features' cache root, not the default one."""
    import genrefusion.encoders as encoders
    from genrefusion.inference.predictor import load_model

    roots, real = [], encoders.create_encoder

    def spy(*args, cache_root=None, **kwargs):
        roots.append(cache_root)
        return real(*args, cache_root=cache_root, **kwargs)

    monkeypatch.setattr(encoders, "create_encoder", spy)
    load_model(trained_run / "model", cache_root=tmp_path / "cache")
    assert roots == [tmp_path / "cache"] * 2  # the text and the image encoder


def test_predictions_match_the_run_and_survive_a_save_load_round_trip(predictor, trained_run, synthetic_catalog,
                                                                      tmp_path):
    # The run's saved test probabilities came from cached features; the predictor recomputes them from raw files.
    with safe_open(str(trained_run / "test_predictions.safetensors"), "np") as f:
        stored, ids = f.get_tensor("probs"), json.loads(f.metadata()["ids"])
    movies, posters, plots = _movies(synthetic_catalog, ids)
    probs = np.array([[r["probabilities"][g] for g in predictor.genres] for r in predictor.predict(posters, plots)])
    np.testing.assert_allclose(probs, stored, atol=1e-5)
    # Save the loaded model again and load that: identical probabilities, bit for bit.
    meta = predictor.meta
    again = save_model(tmp_path / "again", predictor.head, Config(**meta["config"]), meta["thresholds"],
                       encoders=meta["encoders"])
    again_probs = [r["probabilities"] for r in load_model(again).predict(posters, plots)]
    assert again_probs == [r["probabilities"] for r in predictor.predict(posters, plots)]
    # Batched and one-at-a-time predictions agree (padding in a batch must not change a movie's result).
    one = predictor.predict_one(posters[0], plots[0])["probabilities"]
    assert one == pytest.approx(again_probs[0], abs=1e-5)


def test_result_lists_genres_over_threshold_with_modality_shares(predictor, synthetic_catalog):
    _, posters, plots = _movies(synthetic_catalog)
    r = predictor.predict_one(posters[0], plots[0])
    assert [g["genre"] for g in r["genres"]] == sorted(predictor.genres, key=lambda g: -r["probabilities"][g])
    assert r["predicted"] == [g["genre"] for g in r["genres"] if g["probability"] >= g["threshold"]]
    assert r["used"] == {"text": True, "image": True}
    assert r["contribution"]["text"] + r["contribution"]["image"] == pytest.approx(1.0)
    assert r["fusion"]["kind"] == "gmu_gate" and 0 < r["fusion"]["image"] < 1
    # "without" really is the model with the modality swapped for its stand-in
    poster_only = predictor.predict_one(posters[0], None)
    assert poster_only["probabilities"] == pytest.approx(r["without"]["text"], abs=1e-6)


def test_the_model_learned_the_synthetic_genres(predictor):
    # Posters carry a strong signal (one colour per genre), plots a weaker one (the tiny BERT is untrained).
    assert predictor.predict_one(Image.new("RGB", (80, 120), (30, 60, 170)), None)["genres"][0]["genre"] == "Sci-Fi"
    scifi = predictor.predict_one(None, "space ship alien world battle space alien")["probabilities"]
    horror = predictor.predict_one(None, "ghost night dark death house killer ghost dark")["probabilities"]
    assert scifi["Sci-Fi"] > horror["Sci-Fi"] + 0.05


def test_missing_modality_is_allowed_only_when_the_model_learned_its_stand_in(predictor, trained_run, tmp_path):
    text_only = predictor.predict_one(None, "space ship alien")
    assert text_only["used"] == {"text": True, "image": False}
    assert text_only["contribution"] == {"text": 1.0, "image": 0.0}
    with pytest.raises(InputError, match="nothing to predict from"):
        predictor.predict_one(None, None)
    # The same weights, but trained (so model.json says) only on movies with both: a missing poster is refused.
    both_only = tmp_path / "both-only"
    shutil.copytree(trained_run / "model", both_only)
    meta = json.loads((both_only / "model.json").read_text())
    meta["config"].update(modalities="both", modality_dropout=0.0)
    (both_only / "model.json").write_text(json.dumps(seal(meta)))  # as its run would have saved it
    strict = load_model(both_only)
    with pytest.raises(InputError, match="needs a poster: it was trained only on movies with both"):
        strict.predict_one(None, "space ship alien")
    with pytest.raises(InputError, match="needs a plot"):
        strict.predict_one(Image.new("RGB", (80, 120)), None)


def test_a_changed_encoder_is_refused(trained_run, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained_run / "model", model_dir)
    meta = json.loads((model_dir / "model.json").read_text())
    assert set(meta["encoders"]) == {"text", "image"} and all(e["fingerprint"] for e in meta["encoders"].values())
    load_model(model_dir)  # the recorded fingerprints match the encoders found
    # a model trained with other weights behind the same name (its record is consistent, just not with this encoder)
    record = meta["encoders"]["image"]
    record["fingerprint"]["weights_sha256"] = "0" * 64
    record["fingerprint_sha256"] = identity_sha256(record["fingerprint"], record["precision"])
    (model_dir / "model.json").write_text(json.dumps(seal(meta)))
    with pytest.raises(ValueError, match="the image encoder .* is not the one this model was trained with .*"
                                         "weights_sha256"):
        load_model(model_dir)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_uploaded_posters_are_checked_before_they_are_used():
    jpeg = _bytes(Image.new("RGB", (60, 90), (200, 10, 10)), "JPEG")
    assert decode_poster(jpeg).size == (60, 90)
    assert decode_poster(_bytes(Image.new("P", (8, 8)), "GIF")).mode == "RGB"
    with pytest.raises(InputError, match="empty"):
        decode_poster(b"")
    with pytest.raises(UnsupportedInput, match="not an image"):
        decode_poster(b"%PDF-1.4 definitely not a poster")
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        decode_poster(jpeg[: len(jpeg) // 2], "poster 'half.jpg'")
    assert "half.jpg" in str(e.value) and e.value.status == 422
    # A decompression bomb: a few KB of PNG that declares 64 megapixels, refused before it is decoded.
    bomb = _bytes(Image.new("1", (8000, 8000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(InputTooLarge, match="over the limit") as e:
        decode_poster(bomb)
    assert e.value.status == 413
    with pytest.raises(InputTooLarge):
        decode_poster(jpeg, max_pixels=100)


def test_plots_are_checked():
    assert check_plot(None) is None and check_plot("A plot.") == "A plot."
    with pytest.raises(InputError, match="empty"):
        check_plot("  \n ")
    # Over the limit is an invalid field (422, like the schema's maxLength), not a body over the limit (413).
    with pytest.raises(InputError, match="over the limit") as e:
        check_plot("word " * 5000, max_chars=10_000)
    assert e.value.status == 422 and e.value.field == "plot"
    with pytest.raises(InputError, match="lone surrogate"):  # what a JSON "\ud800" escape decodes to
        check_plot("a plot \ud800 with half a character")


def test_cli_predicts_one_movie(serving_cli, trained_run, synthetic_catalog, capsys):
    model = str(trained_run / "model")
    poster = str(synthetic_catalog.parent / "p0.jpg")
    assert serving_cli(["predict", "--model", model, "--poster", poster, "--plot", "ghost night dark"]) == 0
    out = capsys.readouterr().out
    assert "(threshold 0.50)" in out and "contribution: text" in out
    assert serving_cli(["predict", "--model", model, "--plot", "ghost night", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["used"] == {"text": True, "image": False} and len(result["genres"]) == 23
    assert serving_cli(["predict", "--model", model, "--poster", str(synthetic_catalog)]) == 2  # a CSV is no poster
    assert "not an image" in capsys.readouterr().err


def test_cli_predicts_a_catalog_to_csv_and_jsonl(serving_cli, predictor, trained_run, synthetic_catalog, tmp_path,
                                                 capsys):
    model = str(trained_run / "model")
    catalog = synthetic_catalog.parent / "first-20.csv"  # beside the posters it names; labels are not needed
    catalog.write_text("id,plot,poster\n" + "".join(
        f"{r['id']},{r['plot']},{r['poster']}\n" for r in list(csv.DictReader(synthetic_catalog.open()))[:20]))
    out_csv, out_jsonl = tmp_path / "pred.csv", tmp_path / "pred.jsonl"
    assert serving_cli(["predict", "--model", model, "--input", str(catalog), "--output", str(out_csv),
                        "--batch-size", "8"]) == 0
    assert serving_cli(["predict", "--model", model, "--input", str(catalog), "--output", str(out_jsonl)]) == 0
    assert "predicted 20 movies" in capsys.readouterr().err
    rows = list(csv.DictReader(out_csv.open()))
    lines = [json.loads(x) for x in out_jsonl.read_text().splitlines()]
    assert [r["id"] for r in rows] == [x["id"] for x in lines] == [f"m{i}" for i in range(20)]
    assert list(rows[0]) == ["id", "predicted", *predictor.genres]
    movies, posters, plots = _movies(synthetic_catalog, ["m7"])
    expected = predictor.predict_one(posters[0], plots[0])
    assert float(rows[7]["Horror"]) == pytest.approx(expected["probabilities"]["Horror"], abs=1e-5)
    assert lines[7]["predicted"] == expected["predicted"] == [g for g in rows[7]["predicted"].split("|") if g]


def test_cli_catalog_skips_and_names_a_bad_poster(serving_cli, trained_run, tmp_path, capsys):
    (tmp_path / "ok.jpg").write_bytes(_bytes(Image.new("RGB", (40, 60)), "JPEG"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "cat.jsonl").write_text(
        '{"id": "a", "plot": "space ship", "poster": "ok.jpg"}\n{"id": "b", "plot": "ghost", "poster": "bad.jpg"}\n')
    assert serving_cli(["predict", "--model", str(trained_run / "model"), "--input", str(tmp_path / "cat.jsonl")]) == 0
    captured = capsys.readouterr()
    assert [json.loads(x)["id"] for x in captured.out.splitlines()] == ["a"]
    assert "bad.jpg" in captured.err and "skipped 1" in captured.err


def test_load_model_is_public_and_the_commands_are_registered():
    import genrefusion
    from genrefusion.cli import commands as cli

    assert genrefusion.load_model is load_model
    assert set(SERVING_MODULES) <= set(cli.PLUGIN_MODULES)
