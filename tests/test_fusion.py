"""Fusion models: shapes, masking, missing-modality stand-ins, gradients, analysis outputs, modality dropout,
registry, and that every model can fit a tiny separable problem. Tiny dims, CPU only.

The cases are every registered model (fusion.list_models()), its sequence-reading form where its spec declares one,
and LayerNorm forms: a new fusion is tested by being registered."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genrefusion.config import Config
from genrefusion.training.experiment import model_kwargs, reads_sequences
from genrefusion.fusion import (ClassifierHead, GenreModel, ModelSpec, create_model, get_model_spec, list_models,
                                register_model, registry)

DT, DI, NL = 8, 6, 5  # text dim, image dim, labels
SMALL = {"head_hidden": (16, 8)}
# Smaller than the defaults so the tests stay fast; a model not listed here is tested with its own defaults.
SMALL_OPTIONS = {"attention": {"hidden": 16, "score_hidden": 8}, "gmu": {"hidden": 16},
                 "cross-attention": {"d_model": 16, "num_heads": 2}}


def _cases() -> dict[str, tuple[str, dict]]:
    """case -> (registered name, constructor options)."""
    cases = {}
    for name in list_models():
        spec, options = get_model_spec(name), SMALL_OPTIONS.get(name, {})
        cases[name] = (name, options)
        if spec.sequence_options is not None:
            cases[f"{name}-seq"] = (name, {**options, **spec.sequence_options})
            cases[f"{name}-seq-layernorm"] = (name, {**options, **spec.sequence_options, "input_norm": "layernorm"})
    cases["early-layernorm"] = ("early", {"input_norm": "layernorm"})
    return cases


CASES = _cases()
BIMODAL = [c for c, (name, _) in CASES.items() if len(get_model_spec(name).modalities) == 2]


def build(case: str, **extra) -> GenreModel:
    name, options = CASES[case]
    return create_model(name, DT, DI, num_labels=NL, **SMALL, **options, **extra)


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """6 movies: both, both, no poster, no plot, both, neither; ragged sequences."""
    g = torch.Generator().manual_seed(seed)
    t_len, i_len = torch.tensor([5, 3, 1, 4, 2, 5]), torch.tensor([3, 1, 2, 3, 2, 1])
    return {
        "text": torch.randn(6, DT, generator=g),
        "image": torch.randn(6, DI, generator=g),
        "text_present": torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool),
        "image_present": torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool),
        "text_seq": torch.randn(6, 5, DT, generator=g),
        "text_seq_mask": torch.arange(5)[None] < t_len[:, None],
        "image_seq": torch.randn(6, 3, DI, generator=g),
        "image_seq_mask": torch.arange(3)[None] < i_len[:, None],
    }


def clone(batch):
    return {k: v.clone() for k, v in batch.items()}


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tensors here are tiny: extra intra-op threads only add overhead (and stall badly on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_registry_has_the_thesis_grid():
    assert set(list_models()) == {"text", "image", "early", "late", "attention", "gmu", "cross-attention"}
    assert {n: get_model_spec(n).modalities for n in list_models()} == {
        "text": ("text",), "image": ("image",), **{n: ("text", "image") for n in
                                                   ("early", "late", "attention", "gmu", "cross-attention")}}
    assert [n for n in list_models() if get_model_spec(n).sequence_options] == ["cross-attention"]
    assert {"cross-attention", "cross-attention-seq", "cross-attention-seq-layernorm", "early-layernorm"} <= set(CASES)


@pytest.mark.parametrize("name", list_models())
def test_a_run_config_builds_every_registered_model(name):
    """experiment.model_kwargs gives each model the options its spec takes from the config, and the spec's
    modalities and sequence flag are what the built model reads (create_model checks it too)."""
    for cfg in (Config(model=name), Config(model=name, cross_attention="sequence", late_weights="per_genre",
                                           modality_dropout=0.2, input_norm="layernorm")):
        kwargs = model_kwargs(cfg)
        model = create_model(name, DT, DI, num_labels=NL, **kwargs)
        assert model.modalities == get_model_spec(name).modalities
        assert model.uses_sequences is reads_sequences(cfg)
        assert ("modality_dropout" in kwargs) is (len(model.modalities) == 2)
    assert reads_sequences(Config(model="cross-attention", cross_attention="sequence"))
    assert not reads_sequences(Config(model="cross-attention")) and not reads_sequences(Config(model="early"))
    assert create_model("late", DT, DI, **model_kwargs(Config(model="late", late_weights="per_genre"))).config["per_genre"]


def test_thesis_head_structure():
    head = ClassifierHead(100, 23)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    drops = [m.p for m in head if isinstance(m, torch.nn.Dropout)]
    assert [(m.in_features, m.out_features) for m in linears] == [(100, 512), (512, 256), (256, 23)]
    assert drops == [0.3, 0.2]
    with pytest.raises(ValueError, match="rates"):
        ClassifierHead(4, 2, hidden=(8, 8), dropout=(0.1,))


@pytest.mark.parametrize("case", CASES)
def test_output_shapes_and_attributes(case):
    model = build(case).eval()
    batch = make_batch()
    out = model(batch)
    assert out["logits"].shape == (6, NL)
    assert torch.isfinite(out["logits"]).all()
    seq = "seq" in case
    assert model.uses_sequences is seq
    assert model.modalities == get_model_spec(CASES[case][0]).modalities
    name = model.config["name"]
    if name == "gmu":
        assert out["gate"].shape == (6, 16)
    if name == "late":
        assert out["alpha"].shape == ()
    if name == "attention":
        assert out["modality_weights"].shape == (6, 2)
    if name == "cross-attention":
        lt, li = (5, 3) if seq else (1, 1)
        assert out["attn_text_to_image"].shape == (6, lt, li)
        assert out["attn_image_to_text"].shape == (6, li, lt)


@pytest.mark.parametrize("case", CASES)
def test_config_rebuilds_the_same_model(case):
    model = build(case)
    again = create_model(**model.config)
    again.load_state_dict(model.state_dict())  # strict: same parameter names and shapes


@pytest.mark.parametrize("case", CASES)
def test_absent_modality_is_the_learned_standin(case):
    model = build(case).eval()
    batch = make_batch()
    ref = model(batch)["logits"]
    for m in model.modalities:
        absent = ~batch[f"{m}_present"]
        # 1) whatever is stored for an absent modality does not matter
        noisy = clone(batch)
        noisy[m][absent] = 1e3 * torch.randn_like(noisy[m][absent])
        noisy[f"{m}_seq"][absent] = float("nan")
        noisy[f"{m}_seq_mask"][absent] = torch.rand_like(noisy[f"{m}_seq_mask"][absent], dtype=torch.float) < 0.5
        torch.testing.assert_close(model(noisy)["logits"], ref, rtol=0, atol=0)
        # 2) and it is exactly as if the stand-in had been fed as a present input
        explicit = clone(batch)
        explicit[f"{m}_present"][:] = True
        standin = model.standins[m].detach()
        explicit[m][absent] = standin
        explicit[f"{m}_seq"][absent] = 0.0
        explicit[f"{m}_seq"][absent, 0] = standin
        explicit[f"{m}_seq_mask"][absent] = torch.arange(explicit[f"{m}_seq_mask"].shape[1]) == 0
        torch.testing.assert_close(model(explicit)["logits"], ref)
        # 3) while a present modality's input does matter (so the checks above can fail)
        changed = clone(batch)
        changed[m] = changed[m] + torch.randn_like(changed[m])  # not a constant shift: LayerNorm would erase it
        changed[f"{m}_seq"] = changed[f"{m}_seq"] + torch.randn_like(changed[f"{m}_seq"])
        diff = (model(changed)["logits"] - ref).abs().sum(dim=1)
        assert (diff[~absent] > 1e-6).all()


@pytest.mark.parametrize("case", [c for c in CASES if c not in BIMODAL])
def test_unimodal_ignores_the_other_modality(case):
    model = build(case).eval()
    (other,) = {"text", "image"} - set(model.modalities)
    batch = {k: v for k, v in make_batch().items() if not k.startswith(other)}  # the other keys may be missing
    assert model(batch)["logits"].shape == (6, NL)


@pytest.mark.parametrize("case", [c for c in CASES if "seq" in c])
def test_sequence_padding_is_ignored(case):
    model = build(case).eval()
    batch = make_batch()
    ref = model(batch)
    padded = clone(batch)
    for m in ("text", "image"):
        pad = ~padded[f"{m}_seq_mask"]
        padded[f"{m}_seq"][pad] = float("nan")  # even NaN must not leak through
    out = model(padded)
    for k in ("logits", "attn_text_to_image", "attn_image_to_text"):
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)
    # attention puts no weight on padded keys
    assert (out["attn_text_to_image"].masked_select(~batch["image_seq_mask"][:, None, :]) == 0).all()
    # ...while real positions do matter
    real = clone(batch)
    real["text_seq"][1, 0] += torch.randn(DT)
    assert not torch.allclose(model(real)["logits"][1], ref["logits"][1])


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_every_parameter(case):
    model = build(case, head_dropout=0.0).train()
    batch = make_batch()
    target = (torch.rand(6, NL) < 0.5).float()
    F.binary_cross_entropy_with_logits(model(batch)["logits"], target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_analysis_outputs_are_valid():
    batch = make_batch()
    gate = build("gmu").eval()(batch)["gate"]
    assert ((gate > 0) & (gate < 1)).all()
    alpha = build("late").eval()(batch)["alpha"]
    assert 0 < alpha.item() < 1
    w = build("attention").eval()(batch)["modality_weights"]
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(6))
    for case in ("cross-attention", "cross-attention-seq"):
        out = build(case).eval()(batch)
        for k in ("attn_text_to_image", "attn_image_to_text"):
            assert (out[k] >= 0).all()
            torch.testing.assert_close(out[k].sum(dim=-1), torch.ones(out[k].shape[:-1]))


@torch.no_grad()
def test_late_fusion_per_genre_weights():
    """late_weights=per_genre: one image share per genre, each used for its own genre's logit."""
    batch = make_batch()
    late = build("late", per_genre=True).eval()
    late.alpha_logit.copy_(torch.linspace(-2, 2, NL))
    out, x = late(batch), late.prepare(batch)
    assert out["alpha"].shape == (6, NL)
    a = torch.sigmoid(torch.linspace(-2, 2, NL))
    torch.testing.assert_close(out["alpha"], a.expand(6, NL))
    torch.testing.assert_close(out["logits"], a * late.image_head(x["image"]) + (1 - a) * late.text_head(x["text"]))
    assert create_model(**late.config).alpha_logit.shape == (NL,)


@torch.no_grad()
def test_analysis_outputs_are_what_the_models_use():
    """Recompute each model's logits from its reported weights, so a reported-but-unused weight fails."""
    batch = make_batch()
    late = build("late").eval()
    late.alpha_logit.fill_(1.3)  # away from a = 0.5, where text/image could be swapped unnoticed
    out = late(batch)
    x = late.prepare(batch)
    torch.testing.assert_close(out["alpha"], torch.sigmoid(torch.tensor(1.3)))
    expected = out["alpha"] * late.image_head(x["image"]) + (1 - out["alpha"]) * late.text_head(x["text"])
    torch.testing.assert_close(out["logits"], expected)

    gmu = build("gmu").eval()
    out, x = gmu(batch), gmu.prepare(batch)
    z = out["gate"]
    h = z * torch.tanh(gmu.image_proj(x["image"])) + (1 - z) * torch.tanh(gmu.text_proj(x["text"]))
    torch.testing.assert_close(out["logits"], gmu.head(h))

    att = build("attention").eval()
    out, x = att(batch), att.prepare(batch)
    w = out["modality_weights"]
    h = w[:, :1] * att.text_proj(x["text"]) + w[:, 1:] * att.image_proj(x["image"])
    torch.testing.assert_close(out["logits"], att.head(h))


@torch.no_grad()
def test_pooled_cross_attention_is_the_degenerate_single_key_form():
    """With one key per side the softmax weight is 1, so each direction is LayerNorm(q + W_o W_v kv)."""
    model = build("cross-attention").eval()
    batch = make_batch()
    out, x = model(batch), model.prepare(batch)
    assert (out["attn_text_to_image"] == 1).all() and (out["attn_image_to_text"] == 1).all()
    t, v = model.text_proj(x["text"]), model.image_proj(x["image"])

    def value_path(attn, kv):  # the V slice of the packed in-projection, then the out-projection
        d = kv.shape[-1]
        w_v, b_v = attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :]
        return attn.out_proj(kv @ w_v.T + b_v)

    fused = torch.cat(
        [model.text_norm(t + value_path(model.text_to_image, v)), model.image_norm(v + value_path(model.image_to_text, t))],
        dim=-1,
    )
    torch.testing.assert_close(out["logits"], model.head(fused))


def test_sequence_model_matches_unpadded_inputs():
    """Each sample alone, cut to its real length, gives the same logits as inside the padded batch."""
    model = build("cross-attention-seq").eval()
    batch = make_batch()
    ref = model(batch)["logits"]
    for i in range(6):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        for m in ("text", "image"):
            n = max(int(one[f"{m}_seq_mask"].sum()), 1)  # absent samples keep one (ignored) position
            one[f"{m}_seq"], one[f"{m}_seq_mask"] = one[f"{m}_seq"][:, :n], one[f"{m}_seq_mask"][:, :n]
        torch.testing.assert_close(model(one)["logits"][0], ref[i])


def test_drop_modalities_never_drops_both():
    model = build("early", modality_dropout=0.3)
    n = 20000
    text = torch.rand(n) < 0.8
    image = torch.rand(n) < 0.8
    out = model.drop_modalities({"text": text, "image": image})
    assert not (text & ~out["text"] & image & ~out["image"]).any(), "a sample lost both modalities"
    assert (out["text"] | out["image"])[text | image].all(), "a sample with one modality lost it"
    assert not (out["text"] & ~text).any() and not (out["image"] & ~image).any(), "dropout added a modality"
    both = text & image
    dropped = both & ~(out["text"] & out["image"])
    rate = dropped.sum() / both.sum()
    assert abs(rate.item() - 0.3) < 0.02
    text_share = (dropped & ~out["text"]).sum() / dropped.sum()
    assert abs(text_share.item() - 0.5) < 0.03
    torch.manual_seed(1)
    a = model.drop_modalities({"text": text, "image": image})
    torch.manual_seed(1)
    b = model.drop_modalities({"text": text, "image": image})
    assert all(torch.equal(a[k], b[k]) for k in a), "not reproducible under torch.manual_seed"


@pytest.mark.parametrize("case", BIMODAL)
def test_modality_dropout_only_in_training(case):
    model = build(case, modality_dropout=1.0, head_dropout=0.0)
    batch = make_batch()
    plain = build(case, head_dropout=0.0)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    model.eval()
    torch.testing.assert_close(model(batch)["logits"], plain(batch)["logits"], rtol=0, atol=0)
    # in training with p=1 every sample with both modalities is answered from exactly one of them
    model.train()
    with torch.no_grad():
        trained = model(batch)["logits"]
        no_text = clone(batch)
        no_text["text_present"][:] = False
        no_image = clone(batch)
        no_image["image_present"][:] = False
        ref_text_only, ref_image_only = plain(no_image)["logits"], plain(no_text)["logits"]
        ref_full = plain(batch)["logits"]
    both = batch["text_present"] & batch["image_present"]
    for i in range(6):
        if both[i]:
            hit_t = torch.allclose(trained[i], ref_text_only[i], atol=1e-6)
            hit_i = torch.allclose(trained[i], ref_image_only[i], atol=1e-6)
            assert hit_t != hit_i, f"sample {i}: expected exactly one modality dropped"
        else:  # samples already missing a modality are untouched
            torch.testing.assert_close(trained[i], ref_full[i])


def test_modality_dropout_needs_two_modalities():
    with pytest.raises(ValueError, match="two modalities"):
        create_model("text", DT, None, modality_dropout=0.2)
    create_model("text", DT, None, modality_dropout=0.0)  # the default passes everywhere


def test_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'nope'.*early.*gmu"):
        create_model("nope", DT, DI)
    with pytest.raises(ValueError, match="already registered"):
        register_model("early")(lambda *a, **k: None)
    assert len(list_models()) == 7  # the failed registration left nothing behind
    with pytest.raises(TypeError, match="create_model\\('early'.*variant"):
        create_model("early", DT, DI, variant="sequence")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model_spec("nope")
    with pytest.raises(ValueError, match="modalities must be"):
        register_model("audio-only", modalities=("audio",))
    # adding a fusion = one registered class
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("sum")
    class SumFusion(GenreModel):
        def __init__(self, text_dim, image_dim, num_labels=23, **common):
            super().__init__(text_dim, image_dim, num_labels, **common)
            self.text_head, self.image_head = self.make_head(text_dim), self.make_head(image_dim)

        def forward(self, batch):
            x = self.prepare(batch)
            return {"logits": self.text_head(x["text"]) + self.image_head(x["image"])}

    assert "sum" in list_models()
    assert create_model("sum", DT, DI, num_labels=NL)(make_batch())["logits"].shape == (6, NL)
    assert get_model_spec("sum") == ModelSpec("sum", SumFusion)  # a bimodal, pooled model by default

    @register_model("liar", modalities=("text",))  # its spec says text only, the model reads both
    class Liar(SumFusion):
        pass

    with pytest.raises(TypeError, match="'liar' reads \\('text', 'image'\\).*declares \\('text',\\)"):
        create_model("liar", DT, DI)


def test_bad_inputs_give_clear_errors():
    model = build("gmu")
    batch = make_batch()
    with pytest.raises(ValueError, match="needs batch\\['image'\\]"):
        model({k: v for k, v in batch.items() if k != "image"})
    with pytest.raises(ValueError, match="batch\\['text'\\] has shape \\(6, 7\\), expected \\(\\*, 8\\)"):
        model({**batch, "text": torch.randn(6, 7)})
    with pytest.raises(ValueError, match="batch size mismatch"):
        model({**batch, "image": torch.randn(5, DI)})
    with pytest.raises(ValueError, match="text_present"):
        model({**batch, "text_present": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="variant"):
        create_model("cross-attention", DT, DI, variant="tokens")
    with pytest.raises(ValueError, match="input_norm"):
        create_model("early", DT, DI, input_norm="batchnorm")
    with pytest.raises(ValueError, match="image_dim"):
        create_model("early", DT, None)
    seq_model = build("cross-attention-seq")
    empty = clone(batch)
    empty["text_seq_mask"][0] = False  # sample 0 has a plot but no real token
    with pytest.raises(ValueError, match="text_seq_mask.*no real position"):
        seq_model(empty)


@pytest.mark.parametrize("case", CASES)
def test_fits_a_tiny_separable_problem(case):
    g = torch.Generator().manual_seed(1)
    n = 32
    batch = {
        "text": torch.randn(n, DT, generator=g),
        "image": torch.randn(n, DI, generator=g),
        "text_present": torch.ones(n, dtype=torch.bool),
        "image_present": torch.ones(n, dtype=torch.bool),
    }
    # sequences whose first real token carries the pooled vector, the rest noise, ragged lengths
    for m, d, length in (("text", DT, 4), ("image", DI, 3)):
        seq = torch.randn(n, length, d, generator=g)
        seq[:, 0] = batch[m]
        batch[f"{m}_seq"] = seq
        batch[f"{m}_seq_mask"] = torch.arange(length)[None] < torch.randint(1, length + 1, (n, 1), generator=g)
    # labels that need the model's modality: half from text, half from image (unimodal models get their half)
    wt, wi = torch.randn(DT, NL, generator=g), torch.randn(DI, NL, generator=g)
    target = torch.cat([(batch["text"] @ wt)[:, :3], (batch["image"] @ wi)[:, 3:]], dim=1).gt(0).float()
    model = build(case, head_dropout=0.0).train()
    if len(model.modalities) == 1:
        (m,) = model.modalities
        target = (batch[m] @ (wt if m == "text" else wi)).gt(0).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        loss = F.binary_cross_entropy_with_logits(model(batch)["logits"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"{case}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
