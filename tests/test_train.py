"""The training loop: it learns, early stopping restores the best epoch, reruns are identical; and the config."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from genrefusion.config import Config, load_config
from genrefusion.features.cache import FeatureTable
from genrefusion.fusion import create_model
from genrefusion.fusion.losses import create_loss
from genrefusion.training.train import FeatureBatches, fit, pad_sequences, predict


def _separable(n=240, d=16, labels=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, labels, generator=g)
    y = (x @ w > 0.5).float()
    return x, y


def _table(x):
    return FeatureTable(x, torch.ones(len(x), dtype=torch.bool), encoder="synthetic", fingerprint="0")


def _fit(model_name="text", epochs=30, lr=3e-3, seed=0, patience=100, x=None, y=None):
    if x is None:
        x, y = _separable()
    cfg = Config(model=model_name, lr=lr, epochs=epochs, seed=seed, early_stopping_patience=patience,
                 batch_size=16).validate()
    torch.manual_seed(seed)
    model = create_model(model_name, text_dim=x.shape[1], image_dim=x.shape[1])
    batches = FeatureBatches(_table(x), _table(x) if model_name != "text" else None)
    n = len(x)
    res = fit(model, batches, y, range(0, int(n * 0.7)), range(int(n * 0.7), n), cfg, create_loss("bce"))
    return model, batches, res


def test_loss_goes_down_on_a_separable_problem():
    model, batches, res = _fit(epochs=25)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]
    assert res.history[-1]["val_f1_micro"] > 0.8


def test_rerun_is_identical_on_cpu():
    m1, b, r1 = _fit("gmu", epochs=3)
    m2, _, r2 = _fit("gmu", epochs=3)
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(r1.history) == strip(r2.history)
    for (k, v1), (_, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v1, v2), k
    p1, _ = predict(m1, b, range(10))
    p2, _ = predict(m2, b, range(10))
    assert np.array_equal(p1, p2)


def test_early_stopping_restores_the_best_epoch():
    # Few samples and a large learning rate: the model overfits, validation loss turns up, training stops.
    x, y = _separable(n=60, d=32)
    y = y[torch.randperm(60, generator=torch.Generator().manual_seed(1))]  # labels unrelated to inputs
    model, batches, res = _fit(epochs=40, lr=1e-2, patience=3, x=x, y=y)
    assert res.stopped_early and len(res.history) < 40
    best = min(res.history, key=lambda h: h["val_loss"])
    assert res.best_epoch == best["epoch"] and len(res.history) == res.best_epoch + 3
    # the weights in the model are the best epoch's: recomputing the validation loss gives its value
    val = torch.arange(42, 60)
    with torch.no_grad():
        logits = model(batches(val, False))["logits"]
        loss = create_loss("bce")(logits, y[val]).item()
    assert loss == pytest.approx(best["val_loss"], rel=1e-5)


def test_plateau_scheduler_halves_the_lr():
    x, y = _separable(n=60, d=32)
    y = y[torch.randperm(60, generator=torch.Generator().manual_seed(1))]
    _, _, res = _fit(epochs=12, lr=1e-2, patience=100, x=x, y=y)
    lrs = [h["lr"] for h in res.history]
    assert lrs[0] == 1e-2 and min(lrs) <= 5e-3  # ReduceLROnPlateau(factor 0.5, patience 2) kicked in


def test_pad_sequences_pads_to_longest_in_batch():
    seqs = [torch.ones(3, 4), None, torch.ones(5, 4)]
    x, mask = pad_sequences(seqs, 4)
    assert x.shape == (3, 5, 4) and mask.sum(dim=1).tolist() == [3, 0, 5]


def test_config_presets_yaml_and_overrides(tmp_path):
    cfg = load_config()
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.pooling, cfg.cross_attention,
            cfg.threshold_mode) == (2e-5, 1e-4, 16, 10, "cls", "pooled", "fixed")
    f = tmp_path / "c.yaml"
    f.write_text("model: gmu\nlr: 1\nepochs: 3\n")
    assert load_config(overrides=["lr=1e-3"]).lr == 1e-3  # YAML alone would read 1e-3 as a string
    cfg = load_config(f, overrides=["epochs=5", "pooling=mean"])
    assert (cfg.model, cfg.lr, cfg.epochs, cfg.pooling) == ("gmu", 1.0, 5, "mean") and isinstance(cfg.lr, float)
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(overrides=["learning_rate=1"])
    with pytest.raises(ValueError, match="pooling"):
        load_config(overrides=["pooling=max"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(preset="nope")


@pytest.mark.parametrize("override, message", [
    ("batch_size=2.5", "batch_size=2.5: expected a whole number"),
    ("epochs=abc", "epochs='abc': expected a whole number"),
    ("threshold_folds=true", "threshold_folds=True: expected a whole number"),
    ("fold_workers=[2]", r"fold_workers=\[2\]: expected a whole number"),
    ("strict=maybe", "strict='maybe': expected true or false"),
    ("head_dropout=0.5", "head_dropout=0.5: expected a list of numbers"),
    ("head_dropout=[0.5, x]", "expected a list of numbers"),
    ("lr=.inf", "lr=inf: expected a finite number"),
    ("lr=[1", "not valid YAML"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(preset="recommended", overrides=[override])


def test_values_are_read_as_their_keys_type():
    cfg = load_config(overrides=["batch_size=32.0", "name=0012", "cache_dir=null", "strict=yes", "split_seed=7"])
    assert (cfg.batch_size, cfg.name, cfg.cache_dir, cfg.strict, cfg.split_seed) == (32, "0012", None, True, 7)
    assert isinstance(cfg.batch_size, int)
    with pytest.raises(ValueError, match="fold_workers='two': expected a whole number"):
        Config(fold_workers="two").validate()  # built in code, not parsed: the same check
    from pathlib import Path

    in_code = Config(data=Path("/data/mmimdb"), cache_dir=Path("/tmp/cache")).validate()  # paths are kept as text
    assert (in_code.data, in_code.cache_dir) == ("/data/mmimdb", "/tmp/cache")
    assert in_code.replace(out=Path("runs")).out == "runs"


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_aux_loss_adds_each_branchs_own_loss(weight):
    """With one batch per epoch, epoch 1's train loss is the loss at the initial weights: the fused loss plus
    `aux_loss_weight` times each modality's own loss (late fusion returns text_logits / image_logits)."""
    import copy

    x, y = _separable(n=40, d=8)
    cfg = Config(model="late", lr=1e-3, epochs=1, batch_size=28, aux_loss_weight=weight).validate()
    torch.manual_seed(0)
    model = create_model("late", text_dim=8, image_dim=8, head_dropout=0.0)  # no dropout: the pass is repeatable
    initial = copy.deepcopy(model).train()
    batches = FeatureBatches(_table(x), _table(x * 2))
    res = fit(model, batches, y, range(28), range(28, 40), cfg, create_loss("bce"))
    bce = create_loss("bce")
    with torch.no_grad():
        out = initial(batches(torch.arange(28)))  # the loop's one batch holds all 28 training rows
        want = bce(out["logits"], y[:28]) + weight * (bce(out["text_logits"], y[:28]) + bce(out["image_logits"], y[:28]))
    assert res.history[0]["train_loss"] == pytest.approx(want.item(), rel=1e-5)


def test_cosine_schedule_is_transformers_warmup_then_cosine(monkeypatch):
    """scheduler=cosine: per step, lr * s / warm during the warm-up (from 0, as transformers'
    get_cosine_schedule_with_warmup does), then lr * (1 + cos(pi * progress)) / 2 down to 0 at the last step."""
    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    x, y = _separable(n=40, d=8)
    cfg = Config(model="text", lr=1e-2, epochs=3, batch_size=8, scheduler="cosine", warmup_epochs=1.0,
                 early_stopping_patience=100).validate()
    res = fit(create_model("text", text_dim=8, image_dim=None), FeatureBatches(_table(x), None), y, range(32),
              range(32, 40), cfg, create_loss("bce"))
    warm, total = 4, 12  # 32 training rows in batches of 8: 4 steps per epoch, 3 epochs
    want = [1e-2 * (s / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / (total - warm))))
            for s in range(total)]
    np.testing.assert_allclose(seen, want, rtol=1e-9, atol=1e-12)
    assert res.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
