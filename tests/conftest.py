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


WORDS = ("the a an of and to in is was he she they it his her love war space ship alien killer murder police "
         "detective family school friends music song dance horse gun town ghost house night dark funny comedy "
         "story young old man woman life death city world team game sport fight battle king queen magic").split()


def build_tiny_bert(dest: Path, hidden: int = 32, layers: int = 2, max_positions: int = 64) -> Path:
    """A randomly initialised BERT with a small WordPiece vocabulary, saved like a hub model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz.,!?'",
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]]
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(dest / "vocab.txt"), do_lower_case=True)
    tok.model_max_length = max_positions
    tok.save_pretrained(dest)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=max_positions)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
