"""Explanations: Grad-CAM over the poster, integrated gradients over the plot words, modality contributions."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from genrefusion.inference.explain import explain, grad_cam
from genrefusion.cli.predict import InputError, load_model


@pytest.fixture(scope="module")
def predictor(trained_run):
    return load_model(trained_run / "model")


def _poster(colour=(30, 60, 170)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((np.array(colour) + rng.normal(0, 25, (120, 80, 3))).clip(0, 255).astype(np.uint8))


def test_grad_cam_on_a_cnn_is_the_closed_form_cam():
    """For a CNN whose pooled vector is the mean of its last map, Grad-CAM reduces to ReLU(A_i . dy/dpooled):
    checks the autograd path through EfficientNet-Lite0 (real offline weights) against that closed form."""
    from genrefusion.encoders import create_encoder
    from genrefusion.fusion import create_model

    enc = create_encoder("efficientnet-lite0")
    torch.manual_seed(0)
    head = create_model("gmu", text_dim=8, image_dim=enc.dim).eval()
    poster = _poster((200, 40, 40)).resize((160, 240))
    base = {"text": torch.randn(1, 8), "image": torch.zeros(1, enc.dim)}
    fake = SimpleNamespace(encoders={"image": enc}, head=head, sequences=False)
    got = np.array(grad_cam(fake, poster, base, target=7)["grid"])

    with torch.no_grad():
        out = enc.encode(enc.preprocess([poster]), return_sequence=True)
    pooled = out.pooled.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(head(dict(base, image=pooled))["logits"][0, 7], pooled)
    cam = torch.relu(out.sequence[0] @ g[0]).reshape(7, 7).numpy()
    np.testing.assert_allclose(got, cam / cam.max(), atol=2e-3)
    assert got.max() == pytest.approx(1.0) and (got < 0.5).any()  # a map, not a constant


def test_explain_a_movie(predictor):
    plot = "the ghost was in the space ship with an alien and a funny dog"
    e = explain(predictor, _poster(), plot, "Sci-Fi", steps=16)
    assert e["genre"] == "Sci-Fi" and e["probability"] == pytest.approx(
        predictor.predict_one(_poster(), plot)["probabilities"]["Sci-Fi"])
    grid = np.array(e["poster"]["grid"])
    assert grid.shape == (7, 7) and grid.min() >= 0 and grid.max() == pytest.approx(1.0)  # ViT-S/32: 7x7 patches
    words = e["plot"]["words"]
    assert [w["word"] for w in words] == plot.split() and not e["plot"]["truncated"]
    assert max(abs(w["score"]) for w in words) == pytest.approx(1.0)
    # Completeness of integrated gradients: attributions add up to logit(plot) - logit(all-[PAD] plot).
    assert e["plot"]["convergence_delta"] < 0.01
    # The model learned the synthetic plots' words; the Sci-Fi ones are among the strongest for Sci-Fi.
    top = [w["word"] for w in sorted(words, key=lambda w: -w["score"])[:3]]
    assert {"space", "ship", "alien"} & set(top), top
    other = explain(predictor, _poster(), plot, "Horror", steps=16)
    assert other["poster"]["grid"] != e["poster"]["grid"]  # the map depends on the genre explained


def test_explain_with_one_modality(predictor):
    e = explain(predictor, None, "space ship alien")
    assert e["poster"] is None and e["plot"] is not None
    r = predictor.predict_one(None, "space ship alien")
    assert e["genre"] == (r["predicted"] or [r["genres"][0]["genre"]])[0]
    assert e["contribution"] == {"text": 1.0, "image": 0.0}
    e = explain(predictor, _poster(), None)
    assert e["plot"] is None and len(e["poster"]["grid"]) == 7
    with pytest.raises(InputError, match="unknown genre"):
        explain(predictor, None, "space", genre="Cartoon")


def test_explain_command_writes_pngs(serving_cli, trained_run, tmp_path, capsys):
    poster = tmp_path / "poster.jpg"
    _poster().save(poster)
    out = tmp_path / "why"
    assert serving_cli(["explain", "--model", str(trained_run / "model"), "--poster", str(poster), "--plot",
                        "space ship alien and a ghost house", "--out", str(out), "--steps", "8"]) == 0
    printed = capsys.readouterr().out
    for name in ("poster_gradcam.png", "plot_words.png", "modality_contribution.png"):
        assert name in printed
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 400 and img.height > 150
    saved = json.loads((out / "explanation.json").read_text())
    assert set(saved) >= {"genre", "poster", "plot", "contribution", "fusion"}


@pytest.mark.parametrize("model, options, fusion_kind", [  # one of each code path (early = GMU's minus the gate)
    ("late", {}, "late_alpha"), ("attention", {}, "attention_weights"),
    ("cross-attention", {"cross_attention": "sequence"}, None), ("image", {}, None)])
def test_every_fusion_model_is_served_and_explained(trained_run, synthetic_catalog, tmp_path, model, options,
                                                    fusion_kind):
    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment

    base = json.loads((trained_run / "model" / "model.json").read_text())["config"]
    cfg = Config(**{**base, "model": model, "epochs": 2, **options}).validate()  # the GMU run's cache: no re-encoding
    run_experiment(cfg, run_dir=tmp_path / model, log=None)
    p = load_model(tmp_path / model / "model")
    poster = _poster() if "image" in p.modalities else None
    plot = "space ship alien" if "text" in p.modalities else None
    r = p.predict_one(poster, plot)
    assert (r["fusion"] or {}).get("kind") == fusion_kind and len(r["genres"]) == 23
    e = explain(p, poster, plot, steps=4)
    assert (e["poster"] is not None) == ("image" in p.modalities)
    assert (e["plot"] is not None) == ("text" in p.modalities)
    if e["poster"] is not None:
        assert np.array(e["poster"]["grid"]).shape == (7, 7)
    if len(p.modalities) == 1:
        with pytest.raises(InputError, match=f"this {model} model needs a"):
            p.predict_one(None if poster is not None else _poster(), None if plot is not None else "a plot")


def test_grad_cam_over_a_joined_image_encoder_averages_its_parts(tmp_path):
    """A joined encoder's map is the mean of its parts' maps, each computed from that part's own activations and
    resized to the finest grid (EfficientNet-Lite0: 7x7; a tiny DINOv2 with 16 px patches: 14x14)."""
    from transformers import Dinov2Config, Dinov2Model

    from genrefusion.encoders import create_encoder
    from genrefusion.fusion import create_model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                             image_size=224, patch_size=16)).save_pretrained(tmp_path / "dino")
    enc = create_encoder(f"efficientnet-lite0+{tmp_path / 'dino'}")
    torch.manual_seed(0)
    head = create_model("early", text_dim=8, image_dim=enc.dim).eval()
    poster = _poster((200, 40, 40))
    base = {"text": torch.randn(1, 8), "image": torch.zeros(1, enc.dim)}
    got = np.array(grad_cam(SimpleNamespace(encoders={"image": enc}, head=head, sequences=False), poster, base, 3)["grid"])
    assert got.shape == (14, 14) and got.min() >= 0 and got.max() == pytest.approx(1.0)

    # each part alone, the other part's pooled vector held fixed: the same maps the joined Grad-CAM averages
    with torch.no_grad():
        pooled = [p.encode(p.preprocess([poster])).pooled for p in enc.parts]
    maps = []
    for i in range(2):
        class Part(torch.nn.Module):  # the head as a function of part i's pooled vector alone
            def forward(self, batch, i=i):
                image = torch.cat([batch["image"] if j == i else pooled[j] for j in range(2)], dim=-1)
                return head(dict(batch, image=image))

        part_base = dict(base, image=torch.zeros(1, enc.parts[i].dim))
        fake = SimpleNamespace(encoders={"image": enc.parts[i]}, head=Part(), sequences=False)
        maps.append(torch.tensor(grad_cam(fake, poster, part_base, 3)["grid"]))
    assert maps[0].shape == (7, 7) and maps[1].shape == (14, 14)
    coarse = torch.nn.functional.interpolate(maps[0][None, None], size=(14, 14), mode="bilinear",
                                             align_corners=False)[0, 0]
    want = (coarse + maps[1]) / 2
    np.testing.assert_allclose(got, (want / want.max()).numpy(), atol=2e-3)


# --- captum's Grad-CAM against the hand-written one it replaced --------------------------------------------------
def _reference_cam(encoder, head, poster, base, target, sequences=False) -> torch.Tensor:
    """The hand-written Grad-CAM that explain.py had before it used captum, kept here as the reference: run the
    encoder with autograd, take the spatial activations its pooled vector is computed from (a CNN's last map; a ViT's
    patch tokens entering its last block), differentiate the logit w.r.t. them, ReLU(A . mean gradient), / max."""
    from genrefusion.encoders import EfficientNetLiteEncoder

    def tokens(fmap):
        return fmap.flatten(2).transpose(1, 2)

    x = encoder.preprocess([poster])["pixel_values"]
    if isinstance(encoder, EfficientNetLiteEncoder):
        fmap = encoder.model.extract_features(x)
        pooled, seq, acts, to_tokens = fmap.mean((2, 3)), tokens(fmap), fmap, tokens
    else:
        out = encoder.model(pixel_values=x, output_hidden_states=True, **encoder._forward_kwargs)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:
            pooled = out.pooler_output.flatten(1) if out.pooler_output is not None else hidden.mean((2, 3))
            seq, acts, to_tokens = tokens(hidden), hidden, tokens
        else:
            n = encoder._n_prefix
            pooled = out.pooler_output if encoder._use_pooler else hidden[:, 0]
            seq, acts, to_tokens = hidden[:, n:], out.hidden_states[-2], (lambda t: t[:, n:])
    batch = dict(base, image=pooled.float())
    if sequences:
        batch["image_seq"] = seq.float()
        batch["image_seq_mask"] = torch.ones(seq.shape[:2], dtype=torch.bool)
    logit = head(batch)["logits"][0, target]
    (grad,) = torch.autograd.grad(logit, acts)
    a, g = to_tokens(acts.detach())[0].float(), to_tokens(grad)[0].float()
    cam = torch.relu(a @ g.mean(0))
    side = int(len(cam) ** 0.5)
    return (cam / cam.max() if cam.max() > 0 else cam).reshape(side, side)


@pytest.fixture(scope="module")
def image_encoders(tmp_path_factory):
    import tiny_models

    from genrefusion.encoders import create_encoder

    root = tmp_path_factory.mktemp("cam-encoders")
    encoders = {"efficientnet-lite0": create_encoder("efficientnet-lite0")}
    for name in ("vit", "resnet", "dinov2", "clip"):
        encoders[name] = create_encoder(str(getattr(tiny_models, name)(root / name)), modality="image")
    return encoders


@pytest.mark.parametrize("encoder, model", [("efficientnet-lite0", "gmu"), ("vit", "gmu"), ("resnet", "late"),
                                            ("dinov2", "early"), ("clip", "attention"), ("vit", "cross-attention")])
def test_captum_grad_cam_equals_the_hand_written_one(image_encoders, encoder, model):
    from genrefusion.fusion import create_model

    enc = image_encoders[encoder]
    sequences = model == "cross-attention"
    torch.manual_seed(0)
    head = create_model(model, text_dim=8, image_dim=enc.dim, **({"variant": "sequence"} if sequences else {})).eval()
    poster = _poster((200, 40, 40)).resize((160, 240))
    base = {"text": torch.randn(1, 8), "image": torch.zeros(1, enc.dim)}
    if sequences:
        base.update(text_seq=torch.randn(1, 3, 8), text_seq_mask=torch.ones(1, 3, dtype=torch.bool))
    maps = 0
    for target in range(0, 23, 6):
        got = grad_cam(SimpleNamespace(encoders={"image": enc}, head=head, sequences=sequences), poster, base, target)
        want = _reference_cam(enc, head, poster, base, target, sequences)
        assert np.array(got["grid"]).shape == tuple(want.shape)
        np.testing.assert_allclose(got["grid"], want.numpy(), atol=1e-4)  # the library rounds to 4 decimals
        maps += bool(want.max() == 1 and (want < 0.5).any())  # a map, not a constant (all zero happens: ReLU)
    assert maps >= 2


def test_captum_grad_cam_of_a_joined_encoder_equals_the_hand_written_one(image_encoders):
    """Joined encoder: the hand-written version ran every part in one autograd graph and differentiated the logit
    w.r.t. each part's activations; the library runs captum once per part with the others held fixed."""
    from genrefusion.encoders import ConcatEncoder
    from genrefusion.fusion import create_model

    enc = ConcatEncoder([image_encoders["efficientnet-lite0"], image_encoders["dinov2"]])
    torch.manual_seed(0)
    head = create_model("gmu", text_dim=8, image_dim=enc.dim).eval()
    poster = _poster((30, 160, 60))
    base = {"text": torch.randn(1, 8), "image": torch.zeros(1, enc.dim)}
    got = np.array(grad_cam(SimpleNamespace(encoders={"image": enc}, head=head, sequences=False), poster, base, 4)["grid"])
    with torch.no_grad():
        pooled = [p.encode(p.preprocess([poster])).pooled for p in enc.parts]
    maps = []
    for i, part in enumerate(enc.parts):
        def part_head(batch, i=i):
            return head(dict(batch, image=torch.cat([batch["image"] if j == i else pooled[j] for j in range(2)], -1)))

        maps.append(_reference_cam(part, part_head, poster, dict(base, image=None), 4))
    side = max(len(m) for m in maps)
    resized = [torch.nn.functional.interpolate(m[None, None], size=(side, side), mode="bilinear",
                                               align_corners=False)[0, 0] if len(m) != side else m for m in maps]
    want = torch.stack(resized).mean(0)
    np.testing.assert_allclose(got, (want / want.max()).numpy(), atol=1e-4)


@pytest.mark.parametrize("name, side", [("efficientnet-lite0", 7), ("vit", 7), ("resnet", 7), ("dinov2", 7),
                                        ("clip", 7)])
def test_grad_cam_layer_is_a_square_map_and_leaves_the_encoder_as_it_was(image_encoders, name, side):
    enc = image_encoders[name]
    batch = enc.preprocess([_poster()])
    with torch.no_grad():
        before = enc.encode(batch, return_sequence=True)
    hooks = lambda: [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in enc.modules()]  # noqa: E731
    hooked = hooks()
    seen = []
    with enc.grad_cam_layer() as layer:
        handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
        with torch.no_grad():
            inside = enc.encode(batch, return_sequence=True)
        handle.remove()
    assert seen == [(1, seen[0][1], side, side)]
    with torch.no_grad():
        after = enc.encode(batch, return_sequence=True)
    for out in (inside, after):  # the tap changes nothing, and nothing stays hooked
        torch.testing.assert_close(out.pooled, before.pooled, rtol=0, atol=0)
        torch.testing.assert_close(out.sequence, before.sequence, rtol=0, atol=0)
    assert hooks() == hooked
