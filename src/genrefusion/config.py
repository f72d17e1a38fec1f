"""Run configuration: one dataclass, presets, YAML files and `key=value` command-line overrides.

The resolved config is saved next to every run's results so a number can always be traced to its settings.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_text

# The precisions features are computed at (the encoders' autocast; fp32: none), the one vocabulary: a request may
# also be "auto" (CHOICES["precision"], resolved per encoder by features.FeatureSpec.precision_for), a recorded
# precision (a cache folder, a model.json) is one of these.
PRECISIONS = ("fp32", "bf16", "fp16")

# The allowed values of every config key that takes one of a few words: validate() checks them, and the CLI's
# options of the same name (--split, --pooling, ...) offer exactly these (argparse `choices`).
CHOICES: dict[str, tuple[str, ...]] = {
    "split": ("official", "stratified"), "modalities": ("any", "both"), "plot_mode": ("join", "longest"),
    "pooling": ("cls", "mean"), "cross_attention": ("pooled", "sequence"),
    "input_norm": ("none", "layernorm"), "late_weights": ("scalar", "per_genre"),
    "loss": ("bce", "bce-posweight", "focal", "asl"),
    "scheduler": ("plateau", "cosine"), "threshold_mode": ("fixed", "global", "per_genre"),
    "threshold_source": ("val", "oof"),
    "mode": ("features", "end-to-end"), "precision": ("auto", *PRECISIONS),
    "feature_backend": ("auto", "torch", "onnxruntime"),
}


def check_choice(key: str, value: Any, where: str = "config") -> Any:
    """`value` when it is one of CHOICES[key]; else a ValueError naming the key, the value and what is allowed.
    Config.validate and the objects built from a config (data.DataSpec, features.FeatureSpec) check with it."""
    allowed = CHOICES[key]
    if value not in allowed:
        raise ValueError(f"{where} {key}={value!r}: expected one of {allowed}")
    return value


@dataclass
class Config:
    # -- data
    data: str = ""
    split: str = "official"  # official | stratified
    modalities: str = "any"  # any | both
    plot_mode: str = "join"  # join | longest
    split_seed: int = 1234
    strict: bool = False
    # -- model
    model: str = "text"  # text | image | early | late | attention | gmu | cross-attention
    text_encoder: str = "minilm-l6"
    image_encoder: str = "efficientnet-lite0"
    pooling: str = "cls"  # text pooling: cls (thesis) | mean
    cross_attention: str = "pooled"  # pooled (thesis) | sequence
    head_dropout: list[float] = field(default_factory=lambda: [0.3, 0.2])
    input_norm: str = "none"  # none | layernorm
    modality_dropout: float = 0.0
    late_weights: str = "scalar"  # late fusion's image share: one scalar (thesis) | per_genre (one per genre)
    # -- optimisation
    lr: float = 2e-5
    weight_decay: float = 1e-4
    batch_size: int = 16
    epochs: int = 10
    loss: str = "bce-posweight"  # bce | bce-posweight | focal | asl
    scheduler: str = "plateau"  # plateau | cosine
    warmup_epochs: float = 0.0  # cosine only
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    early_stopping_patience: int = 5
    # > 0: models that also output per-modality logits (late fusion) add this weight times each branch's own loss,
    # so each branch learns to predict the genres alone; validation loss and predictions use the fused logits only.
    aux_loss_weight: float = 0.0
    threshold_mode: str = "fixed"  # fixed (0.5) | global | per_genre, tuned on the validation split only
    # Which predictions tuned thresholds are tuned on: "val", the final model's on the validation split, or "oof",
    # out-of-fold predictions over train + validation (threshold_folds extra models, each trained by the same loop
    # on the other folds and early-stopped on its own), pooled: ~7x the movies to tune 23 per-genre thresholds on,
    # for the cost of threshold_folds more trainings. The final model is the same either way; test is never used.
    threshold_source: str = "val"
    threshold_folds: int = 5
    # How independent head trainings run on a CPU (workers.py, Linux): side by side in up to this many single-thread
    # worker processes, 1 = one after the other in this process, 0 = one worker per thread torch may use. They are a
    # run's model and its fold heads (threshold_source=oof), or a grid's rows when those have no fold heads. The
    # same trainings either way; only the thread count each runs with differs.
    fold_workers: int = 0
    seed: int = 0
    # -- execution
    mode: str = "features"  # features: frozen encoders through the cache | end-to-end: encoders in the loop
    finetune: bool = False  # end-to-end only: also train the encoders
    encoder_lr: float = 2e-5  # end-to-end fine-tuning learning rate for encoder weights
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N
    precision: str = "auto"  # encoder autocast while extracting features: auto (bf16 on GPU) | fp32 | bf16 | fp16
    # what runs the encoders while extracting fp32 features on a CPU (feature_backends.py); the same features
    feature_backend: str = "auto"  # auto (by measured evidence) | torch | onnxruntime
    cache_dir: str | None = None
    out: str = "runs"
    name: str | None = None  # run folder name; default derived from model and seed

    def __post_init__(self) -> None:
        # A path given in code (Config(data=Path(...)), GridSpec(cache_dir=Path(...))) is kept as text, the form
        # the config is saved in.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("str", "str | None") and isinstance(value, os.PathLike):
                setattr(self, f.name, os.fspath(value))

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):  # a wrong type gets a message naming the key, not a TypeError later
            problem = _type_problem(f.type, getattr(self, f.name))
            if problem:
                raise ValueError(f"config {f.name}={getattr(self, f.name)!r}: expected {problem}")
        for key in CHOICES:
            check_choice(key, getattr(self, key))
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise ValueError("config: batch_size and epochs must be >= 1 and lr > 0")
        if self.aux_loss_weight < 0:
            raise ValueError("config: aux_loss_weight must be >= 0")
        if self.threshold_folds < 2:
            raise ValueError("config: threshold_folds must be >= 2")
        if self.fold_workers < 0:
            raise ValueError("config: fold_workers must be >= 0 (0: as many as the CPU threads allow)")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError("config: modality_dropout must be in [0, 1)")
        if self.name is not None and not stays_inside(self.name):  # name=../../x would write outside `out`
            raise ValueError(f"config name={self.name!r}: expected a folder inside out={self.out!r} "
                             "(a relative path with no '.' or '..' part and no backslash)")
        return self

    def uses_fold_heads(self) -> bool:
        """Whether a run tunes its thresholds on the out-of-fold predictions of threshold_folds fold heads trained
        beside its model (threshold_source=oof), which only happens when there are thresholds to tune
        (threshold_mode is not fixed). The one place this rule is written."""
        return self.threshold_source == "oof" and self.threshold_mode != "fixed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes).validate()


def stays_inside(name: str) -> bool:
    """Whether `name` is a relative path of plain folder names ("gmu", "gmu/seed-0"), so that `out / name` stays
    inside `out` on every platform: no absolute path, no '.' or '..' part, no backslash."""
    return bool(name) and not any(c in name for c in "\\\0") and \
        all(part not in ("", ".", "..") for part in name.split("/"))


# The thesis code's settings: frozen encoders, heads at lr 2e-5, batch 16, 10 epochs, threshold 0.5, CLS pooling,
# cross-attention over pooled vectors.
PRESETS: dict[str, dict[str, Any]] = {
    "thesis": {},
    # Beyond the thesis (issue: make fusion pay off). Every value was chosen on the validation split only, with
    # benchmarks/select_recipe.py; the test split never entered the choice. Heads train at a learning rate that
    # lets them converge (2e-5 underfits a randomly initialised MLP), with warm-up + cosine decay, per-modality
    # LayerNorm (the two encoders' feature scales differ by orders of magnitude), modality dropout so a fusion
    # cannot lean on the text alone, and decision thresholds tuned per genre on validation. On the sample
    # (stratified, both modalities, 2 seeds, thresholds cross-fitted within validation): mean pooling > cls,
    # lr 3e-4 > 1e-3, LayerNorm >> none, ASL > BCE with pos_weight > BCE, per-genre >= global thresholds, 20 > 40
    # epochs; modality dropout 0.2 tied 0.0 (0.3533 vs 0.3535), so it stays for movies that lack a poster.
    # Batch 16 stays, although larger batches train faster on a CPU: 3 seeds, 1 December 2026, batch 16 / 32 / 64:
    # 0.3607 / 0.3575 / 0.3503 (wall time of the candidate's runs x1 / x0.71 / x0.63).
    # Late fusion's auxiliary branch losses were chosen with benchmarks/select_fusion.py (out-of-fold scores over
    # train + validation, 3 seeds, MPNet + EfficientNet): aux 0.5 raised late fusion's macro-F1 0.4704 -> 0.4815;
    # per-genre late weights did not help (0.4668, and 0.4684 with aux), so late_weights stays scalar.
    # Thresholds tuned on out-of-fold predictions over train + validation (threshold_source=oof) rather than on the
    # 142 validation movies alone: benchmarks/threshold_source.py, validation only (oof thresholds fitted on train
    # folds, both scored on the same validation halves), text + GMU over 3 seeds: 0.4145 vs 0.4030 mean macro-F1,
    # 4 of 6 model-seeds agreeing.
    # Early-stopping patience 4 (was 8), for cost only: a smaller patience changes nothing before the epoch a training
    # stops at (the cosine schedule spans `epochs`), and no head's best epoch came after 4 epochs without one.
    # benchmarks/grid_cost.py, 7 December 2026: identical predictions and thresholds on all 26 row-seeds measured
    # (RoBERTa, GMU, ResNet50 x 5 seeds; 11 of the other rows) in x0.72 of the training time; patience 3 (x0.63)
    # changed BERT's seed 2, whose best epoch came after 3 epochs without one.
    "recommended": {
        "lr": 3e-4, "weight_decay": 1e-2, "scheduler": "cosine", "warmup_epochs": 1.0, "epochs": 20,
        "early_stopping_patience": 4, "input_norm": "layernorm", "head_dropout": [0.5, 0.3],
        "modality_dropout": 0.2, "pooling": "mean", "loss": "asl", "threshold_mode": "per_genre",
        "aux_loss_weight": 0.5, "threshold_source": "oof",
    },
}


# Config keys that say what is trained on what (data, model, encoders, where it runs), not how: a preset sets none
# of them, so they are left out when a config is matched to its preset.
NOT_RECIPE = ("data", "split", "modalities", "plot_mode", "split_seed", "strict", "model", "text_encoder",
              "image_encoder", "seed", "device", "precision", "feature_backend", "fold_workers", "cache_dir",
              "out", "name")


def describe_preset(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The preset a config's values (a run's `config`) come from, and the recipe keys it changed from it: the
    preset it differs from in the fewest keys (a config records its values, not the preset it was made from)."""
    best: tuple[int, str, dict[str, Any]] | None = None
    for name in PRESETS:
        base = load_config(preset=name).to_dict()
        changed = {k: values[k] for k in base if k not in NOT_RECIPE and k in values and values[k] != base[k]}
        if best is None or len(changed) < best[0]:
            best = (len(changed), name, changed)
    assert best is not None
    return best[1], best[2]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_problem(kind: str, value: Any) -> str | None:
    """What a field of type `kind` (its annotation, as text) expects, when `value` is not that; None when it is."""
    if kind == "str":
        return None if isinstance(value, str) else "a string"
    if kind == "str | None":
        return None if value is None or isinstance(value, str) else "a string (or null)"
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if kind == "float":
        return None if _is_number(value) and math.isfinite(value) else "a finite number"
    if kind == "bool":
        return None if isinstance(value, bool) else "true or false"
    if kind == "list[float]":
        ok = isinstance(value, (list, tuple)) and all(_is_number(v) and math.isfinite(v) for v in value)
        return None if ok else "a list of numbers"
    return None


def _field_types() -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(Config)}


def apply_overrides(cfg: Config, overrides: dict[str, Any], source: str) -> Config:
    fields = _field_types()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {unknown}; known: {sorted(fields)}")
    values = {}
    for key, value in overrides.items():
        kind = fields[key].type
        # YAML reads "1" as an int and "1e-3" (no dot) as a string; coerce numbers, leave the rest to validate().
        if kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)  # "5.0" is five; "2.5" is left for validate() to refuse
        elif kind in ("str", "str | None") and _is_number(value):
            value = str(value)  # a YAML file's `name: 2024`
        if kind == "float" and not isinstance(value, bool):
            if isinstance(value, int):
                value = float(value)
            elif isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ValueError(f"{source}: {key}={value!r} is not a number") from None
        values[key] = value
    return dataclasses.replace(cfg, **values)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    field_ = _field_types().get(key)
    if field_ is not None and field_.type in ("str", "str | None"):  # text as typed: name=0012 is "0012", not 10
        stripped = raw.strip()
        if field_.type == "str | None" and stripped.lower() in ("", "null", "none", "~"):
            return key, None
        return key, stripped
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({e.__class__.__name__})") from None


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """preset < YAML file < overrides. A YAML file may name its own `preset:`."""
    file_values: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            file_values = yaml.safe_load(f) or {}
        if not isinstance(file_values, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        preset = file_values.pop("preset", preset)
    preset = preset or "thesis"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    cfg = apply_overrides(Config(), PRESETS[preset], f"preset {preset}")
    cfg = apply_overrides(cfg, file_values, str(path))
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    cfg = apply_overrides(cfg, overrides or {}, "overrides")
    return cfg.validate()


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
