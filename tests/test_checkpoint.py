"""A model folder is trusted only when it checks out: model.json (format 2) records the SHA-256 of the weights file,
and load_model verifies it, the shapes and the finiteness of the weights, the keys of model.json, the thresholds
and the encoders, naming the file and the problem. A format-1 folder (genrefusion 0.1.0 before 1 December 2026) is
refused with what wrote it and what to do."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from genrefusion.inference.checkpoint import ModelFolderError, load_head
from genrefusion.inference.integrity import seal
from genrefusion.config import Config
from genrefusion.data.loader import load_catalog
from genrefusion.features.fingerprints import identity_sha256
from genrefusion.data.images import load_poster
from genrefusion.cli.predict import load_model


@pytest.fixture
def model_dir(trained_run, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(trained_run / "model", d)
    return d


def _meta(d):
    return json.loads((d / "model.json").read_text())


def _write_meta(d, meta, sealed=True):
    """model.json as a writer of `meta` would save it: its fields' digests made for it (sealed=False: as is)."""
    (d / "model.json").write_text(json.dumps(seal(meta) if sealed else meta))


def _inputs(catalog, n=12):
    movies = load_catalog(catalog).movies[:n]
    return [load_poster(m.poster) if m.poster else None for m in movies], [m.plot for m in movies]


def _probs(predictor, posters, plots):
    return np.array([[r["probabilities"][g] for g in predictor.genres] for r in predictor.predict(posters, plots)])


def test_model_json_is_format_2(model_dir):
    meta = _meta(model_dir)
    assert meta["format"] == 2
    assert meta["weights_sha256"] == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert {"model", "genres", "thresholds", "config", "encoders"} <= set(meta)
    for m, rec in meta["encoders"].items():
        # the text encoder's record also names its languages (null here: a local folder declares none)
        extra = {"languages"} if m == "text" else set()
        assert set(rec) == {"name", "kwargs", "precision", "fingerprint", "fingerprint_sha256"} | extra
        assert rec.get("languages") is None
        assert rec["precision"] == "fp32" and isinstance(rec["fingerprint"], dict)
        assert rec["fingerprint_sha256"] == identity_sha256(rec["fingerprint"], "fp32")


def _flip_weight_bit(d):
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-1] ^= 0x40  # the top exponent bit of the last float: a weight of ~0.1 becomes ~1e37
    (d / "model.safetensors").write_bytes(bytes(raw))


def _nan_weights(d):
    state = load_file(str(d / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(d / "model.safetensors"))
    meta = _meta(d)  # a consistent folder: the checksums are those of the NaN weights
    meta["weights_sha256"] = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    _write_meta(d, meta)


def _other_shapes(d):
    from genrefusion.fusion import create_model

    meta = _meta(d)
    other = create_model("gmu", text_dim=8, image_dim=8, num_labels=23)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(d / "model.safetensors"))
    meta["weights_sha256"] = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    _write_meta(d, meta)


def _set(**changes):
    def apply(d):
        meta = _meta(d)
        meta.update(changes)
        _write_meta(d, meta)
    return apply


def _drop(*keys):
    def apply(d):
        meta = _meta(d)
        for k in keys:
            meta.pop(k)
        _write_meta(d, meta)
    return apply


BROKEN = {
    "flipped bit in the weights": (_flip_weight_bit, r"model\.safetensors.*SHA-256"),
    "truncated weights": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000]), r"model\.safetensors"),
    "no weights file": (lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors"),
    "NaN weights": (_nan_weights, r"model\.safetensors.*non-finite"),
    "weights of another shape": (_other_shapes, r"model\.safetensors.*shape"),
    "model.json not JSON": (lambda d: (d / "model.json").write_text("{ half"), r"model\.json.*not valid JSON"),
    "model.json a list": (lambda d: (d / "model.json").write_text("[]"), r"model\.json"),
    "model.json without its keys": (_drop("model", "genres"), r"model\.json.*missing.*'genres'.*'model'"),
    "no weights checksum": (_drop("weights_sha256"), r"model\.json.*weights_sha256"),
    "5 thresholds for 23 genres": (_set(thresholds=[0.5] * 5), r"model\.json.*5 thresholds for 23 genres"),
    "a NaN threshold": (_set(thresholds=[0.5] * 22 + [None]), r"model\.json.*threshold"),
    "a threshold over 1": (_set(thresholds=2.0), r"model\.json.*threshold"),
    "unknown fusion": (_set(model={"name": "nope"}), r"model\.json.*'nope'"),
    "bad model arguments": (_set(model={"name": "gmu", "text_dim": "wide"}), r"model\.json"),
    "unknown format": (_set(format=7), r"model\.json.*format 7"),
    "genres of another length": (_set(genres=["Drama", "Comedy"]), r"model\.json.*2 genres"),
    "an encoder record without fingerprint": (
        lambda d: _write_meta(d, {**_meta(d), "encoders": {**_meta(d)["encoders"], "text": {"name": "x"}}}),
        r"model\.json.*text encoder"),
    "a modality without an encoder": (
        lambda d: _write_meta(d, {**_meta(d), "encoders": {"image": _meta(d)["encoders"]["image"]}}),
        r"model\.json.*text"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_model_folder_is_refused_naming_the_file(model_dir, broken):
    damage, message = BROKEN[broken]
    damage(model_dir)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        load_model(model_dir)
    assert str(model_dir) in str(e.value)


def test_errors_are_model_folder_errors(model_dir):
    _flip_weight_bit(model_dir)
    with pytest.raises(ModelFolderError):
        load_head(model_dir)
    assert issubclass(ModelFolderError, ValueError)


@pytest.mark.parametrize("broken", ["flipped bit in the weights", "model.json without its keys",
                                    "5 thresholds for 23 genres"])
def test_predict_cli_prints_one_line_for_a_broken_model(model_dir, broken):
    BROKEN[broken][0](model_dir)
    proc = subprocess.run([sys.executable, "-m", "genrefusion", "predict", "--model", str(model_dir), "--plot",
                           "ghost night"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(model_dir) in lines[0], proc.stderr


def test_a_changed_encoder_is_refused_naming_what_differs(model_dir):
    meta = _meta(model_dir)
    meta["encoders"]["text"]["kwargs"] = {"pooling": "cls"}  # trained with mean pooling
    _write_meta(model_dir, meta)
    with pytest.raises(ValueError, match=r"text encoder .* is not the one this model was trained with.*pooling"):
        load_model(model_dir)


def test_a_tampered_fingerprint_record_is_refused(model_dir):
    meta = _meta(model_dir)
    meta["encoders"]["image"]["fingerprint_sha256"] = "0" * 64
    _write_meta(model_dir, meta)
    with pytest.raises(ValueError, match=r"model\.json.*image encoder.*fingerprint_sha256"):
        load_model(model_dir)


# --- format 1 (genrefusion 0.1.0 before 1 December 2026): no longer read, and the error says what to do ------------
def _format_1(d):
    """What that release wrote: no weights checksum, and the encoders recorded by name, kwargs and fingerprint."""
    meta = _meta(d)
    meta["format"] = 1
    meta.pop("weights_sha256")
    meta.pop("fields_sha256")
    meta["encoders"] = {m: {"name": r["name"], "kwargs": r["kwargs"], "fingerprint": r["fingerprint_sha256"]}
                        for m, r in meta["encoders"].items()}
    _write_meta(d, meta, sealed=False)


def test_a_format_1_folder_is_refused_naming_the_version_that_wrote_it(model_dir):
    _format_1(model_dir)
    with pytest.raises(ModelFolderError) as e:
        load_model(model_dir)
    message = str(e.value)
    assert message.startswith(f"{model_dir / 'model.json'}: written by genrefusion 0.1.0 before 1 December 2026 "
                              "in format 1; this release (0.1.0) reads format 2: retrain the model, or load it with "
                              "genrefusion 0.1.0 as of commit ")
    assert "\n" not in message


def test_a_folder_of_a_newer_format_asks_for_a_newer_genrefusion(model_dir):
    _set(format=3)(model_dir)
    with pytest.raises(ModelFolderError, match=r"model\.json: written in format 3 by a newer genrefusion; this "
                                               r"release \(0\.1\.0\) reads format 2: upgrade genrefusion"):
        load_model(model_dir)


def test_predict_cli_names_the_version_of_a_format_1_folder_in_one_line(model_dir):
    _format_1(model_dir)
    proc = subprocess.run([sys.executable, "-m", "genrefusion", "predict", "--model", str(model_dir), "--plot",
                           "ghost night"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "written by genrefusion 0.1.0 before 1 December 2026 in format 1" in lines[0], \
        proc.stderr


# --- the same encoder weights installed somewhere else (another venv, checkout, machine, cache folder) ------------
@pytest.fixture
def moved_text_encoder(tiny_bert, tmp_path, monkeypatch):
    """A registered text encoder (as minilm-l6 is) whose weights folder can be moved: `move()` copies the weights to
    a new folder and points the name at it, as another installation of the same package would."""
    from genrefusion.encoders import registry
    from genrefusion.encoders.text import TextEncoder

    where = {"folder": tmp_path / "install-a" / "model"}
    shutil.copytree(tiny_bert, where["folder"])
    spec = registry.EncoderSpec("tiny-installed", "text",
                                lambda **kw: TextEncoder(where["folder"], name="tiny-installed", **kw),
                                "tiny BERT, installed in a folder", offline=True)
    monkeypatch.setitem(registry._REGISTRY, "tiny-installed", spec)

    def move(to: str):
        new = tmp_path / to / "model"
        shutil.copytree(where["folder"], new)
        shutil.rmtree(where["folder"])  # nothing may read the old place
        where["folder"] = new
        return new

    return move


def test_features_and_models_do_not_depend_on_where_the_encoder_weights_are_installed(
        moved_text_encoder, synthetic_catalog, tmp_path):
    from genrefusion.encoders import create_encoder
    from genrefusion.training.experiment import run_experiment
    from genrefusion.features.cache import FeatureCache
    from genrefusion.features.spec import FeatureSpec

    cache = tmp_path / "cache"
    cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="text",
                 text_encoder="tiny-installed", pooling="mean", epochs=3, lr=3e-3, cache_dir=str(cache)).validate()
    run_experiment(cfg, run_dir=tmp_path / "run", log=None)
    before = FeatureCache(create_encoder("tiny-installed", modality="text", pooling="mean"),
                          FeatureSpec(cache_root=cache))
    plots = [p for p in _inputs(synthetic_catalog)[1] if p]
    probs = _probs(load_model(tmp_path / "run" / "model"), [None] * len(plots), plots)
    assert "source" not in _meta(tmp_path / "run" / "model")["encoders"]["text"]["fingerprint"]

    moved_text_encoder("install-b")  # the same weights, elsewhere; the first folder is gone
    after = FeatureCache(create_encoder("tiny-installed", modality="text", pooling="mean"),
                         FeatureSpec(cache_root=cache))
    assert after.dir == before.dir and after.fingerprint == before.fingerprint  # the cache is found again
    assert np.array_equal(_probs(load_model(tmp_path / "run" / "model"), [None] * len(plots), plots), probs)


def test_a_folder_that_recorded_its_weights_path_loads_where_they_are_installed_elsewhere(
        moved_text_encoder, synthetic_catalog, tmp_path):
    """Folders saved before 2 December 2026 recorded a local weights folder's path in the fingerprint ("source"):
    they load on another installation of the same weights, and still refuse other weights."""
    from genrefusion.training.experiment import run_experiment

    cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="text",
                 text_encoder="tiny-installed", pooling="mean", epochs=3, lr=3e-3,
                 cache_dir=str(tmp_path / "cache")).validate()
    run_experiment(cfg, run_dir=tmp_path / "run", log=None)
    d = tmp_path / "run" / "model"
    plots = [p for p in _inputs(synthetic_catalog)[1] if p]
    probs = _probs(load_model(d), [None] * len(plots), plots)
    meta = _meta(d)
    rec = meta["encoders"]["text"]
    rec["fingerprint"] = {**rec["fingerprint"], "source": "/old/venv/lib/python3.11/site-packages/tiny/model"}
    rec["fingerprint_sha256"] = identity_sha256(rec["fingerprint"], rec["precision"])  # self-consistent, as written
    _write_meta(d, meta)
    moved_text_encoder("install-b")
    assert np.array_equal(_probs(load_model(d), [None] * len(plots), plots), probs)

    rec["fingerprint"] = {**rec["fingerprint"], "weights_sha256": "0" * 64}  # other weights: refused as before
    rec["fingerprint_sha256"] = identity_sha256(rec["fingerprint"], rec["precision"])
    _write_meta(d, meta)
    with pytest.raises(ValueError, match=r"text encoder 'tiny-installed' is not the one .*weights_sha256\)"):
        load_model(d)


# --- an encoder option this release does not know (a folder of another release, or edited) -----------------------
def _unknown_option(d):
    meta = _meta(d)
    meta["encoders"]["text"]["kwargs"]["colour"] = "red"
    _write_meta(d, meta)


def test_an_unknown_encoder_option_is_refused_naming_it_and_the_file(model_dir):
    _unknown_option(model_dir)
    with pytest.raises(ModelFolderError) as e:
        load_model(model_dir)
    assert str(e.value).startswith(f"{model_dir / 'model.json'}: the text encoder record: encoder ")
    assert "has no option 'colour' (its options: max_length, name, normalise_text, pooling, prefix)" in str(e.value)


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_predict_and_serve_print_one_line_for_an_unknown_encoder_option(model_dir, command):
    _unknown_option(model_dir)
    args = ["--plot", "ghost night"] if command == "predict" else ["--port", "0"]
    proc = subprocess.run([sys.executable, "-m", "genrefusion", command, "--model", str(model_dir), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model_dir / 'model.json'}: ") \
        and "no option 'colour'" in lines[0], proc.stderr


# --- everything in model.json that changes a prediction is covered by the integrity check ------------------------
def _rotate_genres(meta):
    meta["genres"] = meta["genres"][1:] + meta["genres"][:1]


def _rename_a_genre(meta):
    meta["genres"][meta["genres"].index("Drama")] = "Telenovela"


def _other_thresholds(meta):
    meta["thresholds"] = [0.3] * len(meta["genres"])


def _another_head_argument(meta):
    meta["model"]["dropout"] = 0.5


def _another_encoder_option(meta):
    meta["encoders"]["text"]["kwargs"]["pooling"] = "cls"


def _another_config(meta):
    meta["config"]["modalities"] = "both"


EDITS = {  # edit -> the key the error names
    "genres rotated": (_rotate_genres, "'genres' was edited"),
    "a genre renamed Telenovela": (_rename_a_genre, "'genres' was edited"),
    "thresholds": (_other_thresholds, "'thresholds' was edited"),
    "a head argument": (_another_head_argument, "'model' was edited"),
    "an encoder option": (_another_encoder_option, "'encoders' was edited"),
    "the config": (_another_config, "'config' was edited"),
    "a key added": (lambda meta: meta.update(notes="hand-tuned"), "'notes' was added"),
    "a key removed": (lambda meta: meta.pop("config"), "'config' was removed"),
    "the weights' checksum": (lambda meta: meta.update(weights_sha256="0" * 64), "'weights_sha256' was edited"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_model_json_is_refused_naming_the_field(model_dir, edit):
    change, words = EDITS[edit]
    meta = _meta(model_dir)
    change(meta)
    _write_meta(model_dir, meta, sealed=False)  # edited by hand: its digests are those of the saved values
    with pytest.raises(ModelFolderError) as e:
        load_model(model_dir)
    assert str(e.value).startswith(f"{model_dir / 'model.json'}: {words} after the folder was saved")
    assert "\n" not in str(e.value)


def test_predict_cli_names_the_edited_field_in_one_line(model_dir):
    meta = _meta(model_dir)
    _rename_a_genre(meta)
    _write_meta(model_dir, meta, sealed=False)
    proc = subprocess.run([sys.executable, "-m", "genrefusion", "predict", "--model", str(model_dir), "--plot",
                           "ghost night"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {model_dir / 'model.json'}: 'genres' was edited after the folder was saved (its SHA-256 is not the "
        "one fields_sha256 records)"]


def test_save_model_seals_every_key_and_the_folder_loads(model_dir):
    meta = _meta(model_dir)
    assert set(meta["fields_sha256"]) == set(meta) - {"fields_sha256"}
    assert load_model(model_dir).genres == tuple(meta["genres"])


def test_a_folder_saved_before_the_digests_loads_and_its_genres_are_still_checked(model_dir, synthetic_catalog):
    posters, plots = _inputs(synthetic_catalog)
    before = _probs(load_model(model_dir), posters, plots)
    meta = _meta(model_dir)
    del meta["fields_sha256"]  # what every folder saved before this release holds
    _write_meta(model_dir, meta, sealed=False)
    assert np.array_equal(_probs(load_model(model_dir), posters, plots), before)
    for change in (_rotate_genres, _rename_a_genre):
        edited = json.loads(json.dumps(meta))
        change(edited)
        _write_meta(model_dir, edited, sealed=False)
        with pytest.raises(ModelFolderError, match=r"model\.json: 'genres' is not the list of the 23 MM-IMDb "
                                                   r"genres, in their order, .*: it was edited"):
            load_model(model_dir)
