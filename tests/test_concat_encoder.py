"""Encoders joined by '+': pooled vectors side by side, each part preprocessing the poster its own way and cached
under its own fingerprint; the grid fuses a joined slot; a saved model rebuilds the joined encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from genrefusion.data.loader import load_dataset
from genrefusion.encoders import ConcatEncoder, create_encoder
from genrefusion.features.cache import dataset_features
from genrefusion.features.spec import FeatureSpec
from genrefusion.training.grid import slot_modality


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    return tiny_models.resnet(tmp_path_factory.mktemp("tiny-resnet"))


def _posters(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (90 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


def test_joined_name_reads_each_part_with_its_own_preprocessing(tiny_vit, tiny_resnet):
    joined = create_encoder(f"{tiny_vit}+{tiny_resnet}").eval()
    vit, resnet = create_encoder(tiny_vit).eval(), create_encoder(tiny_resnet).eval()
    assert isinstance(joined, ConcatEncoder) and joined.modality == "image"
    assert joined.dim == vit.dim + resnet.dim and joined.name == f"{vit.name}+{resnet.name}"
    posters = _posters(3)
    with torch.no_grad():
        got = joined.encode(joined.preprocess(posters)).pooled
        want = torch.cat([vit.encode(vit.preprocess(posters)).pooled, resnet.encode(resnet.preprocess(posters)).pooled], 1)
    assert got.shape == (3, joined.dim)
    torch.testing.assert_close(got, want)
    assert joined.fingerprint() == {"class": "ConcatEncoder", "parts": [vit.fingerprint(), resnet.fingerprint()]}
    with pytest.raises(ValueError, match="pooled vectors only"):
        joined.encode(joined.preprocess(posters), return_sequence=True)


def test_bad_joined_names_are_refused(tiny_vit, tiny_bert):
    with pytest.raises(ValueError, match="two or more encoder names"):
        create_encoder(f"{tiny_vit}+")
    with pytest.raises(ValueError, match="share one modality"):
        create_encoder(f"{tiny_vit}+{tiny_bert}")
    with pytest.raises(ValueError, match="not text"):
        create_encoder("efficientnet-lite0+dinov2-vits14", modality="text")


def test_features_reuse_each_parts_cache(synthetic_catalog, tiny_vit, tiny_resnet, tmp_path):
    ds = load_dataset(synthetic_catalog, "official", "any")
    cache = tmp_path / "cache"
    parts = [dataset_features(ds, create_encoder(p), FeatureSpec(cache_root=cache, progress=False))
             for p in (tiny_vit, tiny_resnet)]
    joined_encoder = create_encoder(f"{tiny_vit}+{tiny_resnet}")
    joined = dataset_features(ds, joined_encoder, FeatureSpec(cache_root=cache, progress=False))
    assert joined.encoded_now == 0  # both parts were cached: nothing is encoded again
    assert torch.equal(joined.present, parts[0].present & parts[1].present)
    assert not joined.present.all()  # the catalog has poster-less movies; they stay absent (zeros), not dropped
    torch.testing.assert_close(joined.pooled, torch.cat([p.pooled for p in parts], 1) * joined.present[:, None])
    from genrefusion.features.fingerprints import identity_sha256

    # what a saved model records and checks: the joined encoder's fingerprint at the parts' precision
    assert joined.fingerprint == identity_sha256(joined_encoder.fingerprint(), "fp32")
    assert joined.encoder_fingerprint == joined_encoder.fingerprint() and joined.precision == "fp32"
    with pytest.raises(ValueError, match="sequences need one encoder"):
        dataset_features(ds, joined_encoder, FeatureSpec(cache_root=cache, progress=False), sequences=True)


def test_any_encoder_declaring_parts_is_cached_part_by_part(synthetic_catalog, tiny_vit, tiny_resnet, tmp_path):
    """The cache's rule is Encoder.feature_parts / join, not a class: an encoder of another kind that declares its
    parts gets each part cached on its own and its table joined by its own join (here: the parts in reverse)."""
    from genrefusion.encoders import Encoder

    class Reversed(Encoder):
        modality, name = "image", "reversed-parts"

        def __init__(self, parts):
            super().__init__()
            self.parts = torch.nn.ModuleList(parts)
            self.dim = sum(p.dim for p in parts)

        def feature_parts(self):
            return tuple(self.parts)

        def join(self, pooled):
            return torch.cat(pooled[::-1], dim=1)

        def fingerprint(self):
            return {"class": "Reversed", "parts": [p.fingerprint() for p in self.parts]}

    ds = load_dataset(synthetic_catalog, "official", "any")
    a, b = create_encoder(str(tiny_vit)), create_encoder(str(tiny_resnet))
    joined = dataset_features(ds, Reversed([a, b]), FeatureSpec(cache_root=tmp_path / "cache", progress=False))
    parts = [dataset_features(ds, p, FeatureSpec(cache_root=tmp_path / "cache", progress=False)) for p in (a, b)]
    assert joined.encoded_now == 2 * int(parts[0].present.sum()) and [p.encoded_now for p in parts] == [0, 0]
    assert joined.repaired == 0 and joined.encoder == "reversed-parts" and joined.dim == a.dim + b.dim
    torch.testing.assert_close(joined.pooled, torch.cat([parts[1].pooled, parts[0].pooled], 1) * joined.present[:, None])


def test_a_model_trained_on_a_joined_slot_predicts_like_its_features(synthetic_catalog, tiny_bert, tiny_vit,
                                                                     tiny_resnet, tmp_path):
    import json

    from safetensors import safe_open

    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment
    from genrefusion.cli.predict import load_model

    # late fusion with one weight per genre and auxiliary branch losses (the recommended preset's late fusion)
    cfg = Config(data=str(synthetic_catalog), split="official", modalities="both", model="late",
                 late_weights="per_genre", aux_loss_weight=0.5,
                 text_encoder=str(tiny_bert), image_encoder=f"{tiny_vit}+{tiny_resnet}", epochs=2, lr=3e-3,
                 cache_dir=str(tmp_path / "cache")).validate()
    run = tmp_path / "run"
    run_experiment(cfg, run_dir=run, log=None)
    with safe_open(str(run / "test_predictions.safetensors"), "np") as f:
        ids, probs = json.loads(f.metadata()["ids"]), f.get_tensor("probs")
    movies = {m.id: m for m in load_dataset(synthetic_catalog, "official", "both").movies}
    predictor = load_model(run / "model")
    got = predictor.predict([Image.open(movies[i].poster).convert("RGB") for i in ids[:4]],
                            [movies[i].plot for i in ids[:4]])
    np.testing.assert_allclose([[r["probabilities"][g] for g in predictor.genres] for r in got], probs[:4], atol=1e-5)
    assert predictor.head.alpha_logit.shape == (len(predictor.genres),)
    assert got[0]["fusion"]["kind"] == "late_alpha" and 0 < got[0]["fusion"]["image"] < 1


def test_grid_slots_join_within_one_modality():
    assert slot_modality("ResNet50+ViT") == "image" and slot_modality("BERT+RoBERTa") == "text"
    assert slot_modality("ResNet50") == "image"
    assert slot_modality("BERT+ViT") is None and slot_modality("ResNet50+GPT") is None


def test_grid_fuses_a_joined_slot(synthetic_catalog, tiny_bert, tiny_vit, tiny_resnet, tmp_path):
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    slots = [f"BERT={tiny_bert}", f"ResNet50={tiny_resnet}", f"ViT={tiny_vit}"]
    g = run_grid(GridSpec(DataSpec(synthetic_catalog, "official", "both"), slot_overrides=slots, rows=["early"],
                          cache_dir=tmp_path / "c", out=tmp_path / "o", fuse=("BERT", "ResNet50+ViT"), report=False,
                          config_overrides=["epochs=1"]), log=lambda *_: None)
    assert g["rows"][0]["encoders"] == {"BERT": str(tiny_bert), "ResNet50+ViT": f"{tiny_resnet}+{tiny_vit}"}
    with pytest.raises(ValueError, match="expected a text slot and an image slot"):
        run_grid(GridSpec(DataSpec(synthetic_catalog), fuse=("BERT", "ResNet50+BERT"), out=tmp_path / "x"),
                 log=lambda *_: None)
