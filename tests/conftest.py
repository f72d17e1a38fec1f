"""Shared fixtures. The real MM-IMDb sample lives beside the repository (../shared/data/mmimdb-sample) or at
$GENREFUSION_SAMPLE; tests that need it skip with a reason when it is absent."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sample_path() -> Path:
    return Path(os.environ.get("GENREFUSION_SAMPLE") or REPO.parent / "shared" / "data" / "mmimdb-sample")


@pytest.fixture(scope="session")
def sample_root() -> Path:
    path = sample_path()
    if not (path / "split.json").exists():
        pytest.skip(f"MM-IMDb sample not found at {path} (set GENREFUSION_SAMPLE)")
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never download: a hub lookup fails at once instead of hanging. (Feature caches in tests always go to
    tmp_path via cache_dir; the offline stand-in model folders use the normal cache, built once.)"""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


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
