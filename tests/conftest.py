"""Shared fixtures. The real MM-IMDb sample lives beside the repository (../shared/data/mmimdb-sample) or at
$GENREFUSION_SAMPLE; tests that need it skip with a reason when it is absent."""
from __future__ import annotations

import json
import os
from pathlib import Path

# Before anything imports huggingface_hub (it reads these once, at import): tests never download, and a hub
# lookup fails at once instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def steady_calibration(monkeypatch):
    """Calibration (features/calibrate.py) runs in every test that encodes under auto, but on a quiet machine,
    with a clock that stands still and runners that encode nothing: every candidate ties, so auto keeps torch fp32 and a test's
    encoder calls and features are those of torch. The real timing is timed on real encoders by
    tests/test_calibrate.py, which also fakes these two to test the choice."""
    import torch

    from genrefusion.features import calibrate

    monkeypatch.setattr(calibrate, "clock", lambda: 0.0)
    monkeypatch.setattr(calibrate, "load", lambda: (0.0, 0.0, 0.0))  # quiet: a record is never re-measured for load
    monkeypatch.setattr(calibrate, "make_runner",
                        lambda candidate, encoder, root: lambda inputs: torch.zeros(len(next(iter(inputs.values()))), 1))


def sample_path() -> Path:
    return Path(os.environ.get("GENREFUSION_SAMPLE") or REPO.parent / "shared" / "data" / "mmimdb-sample")


@pytest.fixture(scope="session")
def sample_root() -> Path:
    path = sample_path()
    if not (path / "split.json").exists():
        pytest.skip(f"MM-IMDb sample not found at {path} (set GENREFUSION_SAMPLE)")
    return path


def make_subset(sample: Path, dest: Path, per_split: dict[str, int]) -> Path:
    """An MM-IMDb-layout folder with the first n movies of each split of the sample, as symlinks (no copies)."""
    split = json.loads((sample / "split.json").read_text())
    (dest / "dataset").mkdir(parents=True)
    chosen = {s: split[s][:n] for s, n in per_split.items()}
    for ids in chosen.values():
        for mid in ids:
            for suffix in (".json", ".jpeg"):
                src = sample / "dataset" / f"{mid}{suffix}"
                if src.exists():
                    (dest / "dataset" / f"{mid}{suffix}").symlink_to(src)
    (dest / "split.json").write_text(json.dumps(chosen))
    return dest


from tiny_models import WORDS  # noqa: E402,F401  (re-exported for tests)
import tiny_models  # noqa: E402


def build_tiny_bert(dest: Path) -> Path:
    return tiny_models.bert(dest, hidden=32, layers=2, max_positions=64)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def build_tiny_vit(dest: Path) -> Path:
    return tiny_models.vit(dest, hidden=32)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return build_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


# --- serving: a small trained model (appended for tests/test_predict.py, test_serve.py, test_explain.py) ----------
SYNTHETIC_GENRES = {  # genre -> (plot words, poster colour): a signal in both modalities the tiny models can learn
    "Horror": ("ghost night dark death house killer", (150, 20, 20)),
    "Sci-Fi": ("space ship alien world battle", (30, 60, 170)),
    "Comedy": ("funny comedy friends school game", (230, 200, 40)),
    "Drama": ("family life love woman man story", (110, 110, 110)),
}


def build_synthetic_catalog(dest: Path, n: int = 90, seed: int = 0) -> Path:
    """A CSV catalog (id, plot, genres, poster, split) of n synthetic movies. Every 7th has no poster and every
    11th no plot (never both), so a model trained on it with modalities=any has learned its stand-ins."""
    import random

    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    names = list(SYNTHETIC_GENRES)
    dest.mkdir(parents=True, exist_ok=True)
    rows = ["id,plot,genres,poster,split"]
    for i in range(n):
        genres = rng.sample(names, rng.choice((1, 1, 2)))
        words = [w for g in genres for w in SYNTHETIC_GENRES[g][0].split()]
        plot = " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(WORDS) for _ in range(16))
        poster = ""
        if i % 7 != 3:
            colour = np.array(SYNTHETIC_GENRES[genres[0]][1], dtype=np.float32)
            pixels = colour + np.random.default_rng(i).normal(0, 25, (120, 80, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(dest / f"p{i}.jpg", quality=90)
            poster = f"p{i}.jpg"
        if i % 11 == 5 and poster:
            plot = ""
        split = "train" if i < int(n * 0.66) else "dev" if i < int(n * 0.83) else "test"
        rows.append(f"m{i},{plot},{'|'.join(genres)},{poster},{split}")
    (dest / "catalog.csv").write_text("\n".join(rows) + "\n")
    return dest / "catalog.csv"


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    return build_synthetic_catalog(tmp_path_factory.mktemp("synthetic-catalog"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_catalog, tiny_bert, tiny_vit) -> Path:
    """A finished run folder (model/ inside): a GMU over tiny encoders, 20 epochs (seconds; features are cached)."""
    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment

    root = tmp_path_factory.mktemp("trained-run")
    cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="gmu",
                 text_encoder=str(tiny_bert), image_encoder=str(tiny_vit), pooling="mean", epochs=20, lr=3e-3,
                 cache_dir=str(root / "cache"), out=str(root), name="gmu").validate()
    run_experiment(cfg, run_dir=root / "gmu", log=None)
    return root / "gmu"


SERVING_MODULES = ("genrefusion.cli.predict", "genrefusion.serving", "genrefusion.cli.explain")


@pytest.fixture
def serving_cli(monkeypatch):
    """genrefusion.cli.commands.main with the serving layer's commands (predict, serve, explain) registered."""
    from genrefusion.cli import commands as cli

    monkeypatch.setattr(cli, "PLUGIN_MODULES", tuple(dict.fromkeys((*cli.PLUGIN_MODULES, *SERVING_MODULES))))
    return cli.main
