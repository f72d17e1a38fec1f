"""The thesis this project starts from, as data: its grid (rows and encoder slots) and its published numbers.

`grid.py` trains these rows and `report/` sets a run's scores next to these numbers; both import them from here, so
neither needs the other. Plain Python only (no numpy, no torch): the CLI imports this at parse time.

The numbers are the thesis's Tables 1 and 6-8 as printed (../shared/seed/thesis.txt, checked by
tests/test_report.py): test split of the full MM-IMDb, official split, models fine-tuned end to end; fusions fuse BERT
(text) + ResNet50 (image).
"""
from __future__ import annotations

from dataclasses import dataclass

# The thesis's five result columns, in its order: Accuracy (Hamming), F1-Macro, F1-Micro, F1-Weighted, F1-Samples.
METRICS = ("hamming_accuracy", "f1_macro", "f1_micro", "f1_weighted", "f1_samples")

# slot -> (modality, offline stand-in, the thesis's own hub encoder)
SLOTS: dict[str, tuple[str, str, str]] = {
    "BERT": ("text", "minilm-l6", "bert-base-uncased"),
    "RoBERTa": ("text", "mpnet-base", "roberta-base"),
    "ResNet50": ("image", "efficientnet-lite0", "resnet50"),
    "ViT": ("image", "dinov2-vits14", "vit-base-patch16-224"),
}
FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT = "BERT", "ResNet50"


@dataclass(frozen=True)
class Row:
    name: str  # the thesis's row name
    kind: str  # unimodal | fusion
    model: str  # registered model name
    text_slot: str | None
    image_slot: str | None


ROWS: tuple[Row, ...] = (
    Row("ResNet50", "unimodal", "image", None, "ResNet50"),
    Row("ViT", "unimodal", "image", None, "ViT"),
    Row("BERT", "unimodal", "text", "BERT", None),
    Row("RoBERTa", "unimodal", "text", "RoBERTa", None),
    Row("Early Fusion", "fusion", "early", FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT),
    Row("Late Fusion", "fusion", "late", FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT),
    Row("Attention Fusion", "fusion", "attention", FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT),
    Row("GMU", "fusion", "gmu", FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT),
    Row("Cross-Attention", "fusion", "cross-attention", FUSION_TEXT_SLOT, FUSION_IMAGE_SLOT),
)

# Columns in METRICS order.
THESIS_TABLE6 = {  # <표 6> unimodal models
    "ResNet50": (0.9042, 0.1107, 0.3798, 0.2814, 0.3773),
    "ViT": (0.9082, 0.1759, 0.4158, 0.3466, 0.3996),
    "BERT": (0.9215, 0.3163, 0.5419, 0.4975, 0.5375),
    "RoBERTa": (0.8963, 0.0302, 0.2988, 0.1519, 0.3135),
}
THESIS_TABLE7 = {  # <표 7> multimodal fusion models
    "Early Fusion": (0.9240, 0.3323, 0.5714, 0.5223, 0.5706),
    "Late Fusion": (0.9217, 0.2962, 0.5377, 0.4824, 0.5309),
    "Attention Fusion": (0.9173, 0.2423, 0.4941, 0.4279, 0.4958),
    "GMU": (0.9278, 0.3947, 0.6041, 0.5665, 0.6060),
    "Cross-Attention": (0.9290, 0.4696, 0.6207, 0.5987, 0.6220),
}
# <표 8> as printed. Its multimodal row differs from the mean of Table 7 by up to 0.0004 (the thesis presumably
# averaged unrounded scores), so it is quoted, not recomputed.
THESIS_TABLE8 = {
    "unimodal": (0.9076, 0.1583, 0.4091, 0.3194, 0.4069),
    "fusion": (0.9239, 0.3472, 0.5656, 0.5192, 0.5649),
    "improvement_pct": ("+1.80%", "+119.3%", "+38.3%", "+62.7%", "+38.8%"),  # as printed
}
THESIS_SPLIT = {"train": 15552, "dev": 2608, "test": 7799}  # <표 1>, 25,959 movies in all
THESIS_DATA = "full MM-IMDb (25,959 movies), official split"
