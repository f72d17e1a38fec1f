"""Tiny randomly initialised Hugging Face models, saved like hub folders: the tests' stand-ins for BERT, RoBERTa,
CLIP, ViT, ResNet and DINOv2 (the hub loading path is tested with these; nothing is downloaded)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("the a an of and to in is was he she they it his her dog cat runs park puppy plays outside stock market fell "
         "movie plot hero love war space ship alien killer murder police detective family school friends music song "
         "dance horse gun town ghost house night dark funny comedy story young old man woman life death city world "
         "team game sport fight battle king queen magic").split()


# --- tiny checkpoints ----------------------------------------------------------------------------------------------
def bert(dest: Path, seed: int = 0, hidden: int = 16, layers: int = 1, max_positions: int = 64) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *".,!?'-", *"abcdefghijklmnopqrstuvwxyz",
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(dest)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=max_positions)).save_pretrained(dest)
    return dest


def bpe_vocab(specials: list[str], alphabet: str, merges: list[tuple[str, str]]) -> dict[str, int]:
    vocab = {t: i for i, t in enumerate(specials)}
    for t in [*alphabet, *(a + b for a, b in merges)]:
        vocab.setdefault(t, len(vocab))
    return vocab


def roberta(dest: Path) -> Path:
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "d"), ("o", "g"), ("Ġd", "og")]
    vocab = bpe_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "Ġabcdefghijklmnopqrstuvwxyz.,!?'-", merges)
    RobertaTokenizer(vocab=vocab, merges=merges).save_pretrained(dest)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=40, pad_token_id=1, bos_token_id=0,
                               eos_token_id=2)).save_pretrained(dest)
    return dest


def clip(dest: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    merges = [("t", "h"), ("th", "e</w>"), ("d", "o"), ("do", "g</w>")]
    alphabet = [*"abcdefghijklmnopqrstuvwxyz.,!?'-", *(c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz.,!?'-")]
    vocab = bpe_vocab(["<|startoftext|>", "<|endoftext|>"], alphabet, merges)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(dest)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=8)
    CLIPModel(config).save_pretrained(dest)
    return dest


def vit(dest: Path, hidden: int = 16) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
                       image_size=224, patch_size=32)).save_pretrained(dest)
    (dest / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return dest


def resnet(dest: Path) -> Path:
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)  # four stages like ResNet-50, so 224 px -> a 7 x 7 map
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
                             layer_type="basic")).save_pretrained(dest)
    return dest


def dinov2(dest: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)  # native size 64: a 224 px input exercises position-embedding interpolation
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                             image_size=64, patch_size=32)).save_pretrained(dest)
    return dest
