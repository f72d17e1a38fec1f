"""Why a model predicted a genre: where on the poster, which plot words, and how much each modality weighed.

  poster   Grad-CAM (Selvaraju et al. 2017): the target genre's logit is differentiated, through the fusion head,
           w.r.t. the image encoder's last spatial map (CNNs: the final conv map, 7x7 for EfficientNet-Lite0 at
           224 px; ViTs: the patch tokens entering the last block, which the [CLS] output attends over). Channel
           weights = the gradient averaged over positions; map = ReLU(sum of weighted channels), scaled to [0, 1];
           a joined image encoder ("a+b") gets the mean of its parts' maps on the finest part's grid. Computed by
           captum's LayerGradCam at the layer each encoder exposes (ImageEncoder.grad_cam_layer).
  plot     Integrated gradients (captum's LayerIntegratedGradients) over the text encoder's word embeddings,
           from a baseline where every word is [PAD] (special tokens and an encoder's prefix kept), summed over
           each word's sub-tokens. Text encoders that run outside torch (multilingual-e5-small,
           use-multilingual) have no gradients: their plots are explained by sentence occlusion instead, the
           logit's drop when one sentence is left out (the whole plot left out: the model's missing-plot stand-in).
  modality The occlusion contribution of Predictor.predict (prediction change when a modality is replaced by the
           model's learned stand-in), plus the fusion's own weights (GMU gate, attention weights, late alpha).

`genrefusion explain` writes these as PNGs (poster_gradcam.png, plot_words.png, modality_contribution.png) and
explanation.json; the web page draws the same numbers from POST /explain.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .inputs import InputError

EXPLAIN_STEPS = 16  # integrated-gradients steps: the attributions' order is stable from ~8; 16 keeps it ~1 s


def explain(predictor, poster: Image.Image | None, plot: str | None, genre: str | None = None,
            steps: int = EXPLAIN_STEPS) -> dict[str, Any]:
    """Explain the prediction of `genre` for one movie (default: its most probable predicted genre)."""
    import torch

    if predictor.exported:
        raise ValueError(f"{predictor.directory}: an exported (ONNX) model cannot be explained: Grad-CAM and "
                         "integrated gradients need the torch model's gradients; explain the model folder it was "
                         "exported from")
    result = predictor.predict_one(poster, plot)  # also checks the input
    # Default: the most probable genre the model predicts (what a person asks "why?" about), else the most probable.
    genre = genre or (result["predicted"] or [result["genres"][0]["genre"]])[0]
    if genre not in predictor.genres:
        raise InputError(f"genre: unknown genre {genre!r}; the model's genres are {', '.join(predictor.genres)}")
    target = predictor.genres.index(genre)
    out: dict[str, Any] = {"genre": genre, "probability": result["probabilities"][genre],
                           "contribution": result["contribution"], "fusion": result["fusion"],
                           "probabilities": result["probabilities"], "without": result["without"],
                           "warnings": result["warnings"], "poster": None, "plot": None}
    with predictor.lock:
        with torch.no_grad():
            base = predictor.features([poster], [plot])
        if poster is not None and "image" in predictor.modalities:
            out["poster"] = grad_cam(predictor, poster, base, target)
        if plot is not None and "text" in predictor.modalities:
            out["plot"] = word_attributions(predictor, plot, base, target, steps)
    return out


# --- poster: Grad-CAM ---------------------------------------------------------------------------------------------
def grad_cam(predictor, poster: Image.Image, base: dict, target: int) -> dict[str, Any]:
    """Grad-CAM map (scaled to [0, 1]) of `target`'s logit over the poster, with captum's LayerGradCam at the layer
    the image encoder names (ImageEncoder.grad_cam_layer). A joined image encoder (feature_parts()) gets one map per
    part, each from that part's own activations with the other parts' pooled vectors held fixed; the parts see the
    poster on different grids (7x7 for a CNN at 224 px, 16x16 for a ViT-S/14), so each map is resized to the
    finest grid and they are averaged."""
    import torch
    import torch.nn.functional as F
    from captum.attr import LayerGradCam

    enc = predictor.encoders["image"]
    parts = list(enc.feature_parts()) or [enc]
    pixels = [p.preprocess([poster])["pixel_values"].to(p.device) for p in parts]
    with torch.no_grad():
        fixed = [p.encode({"pixel_values": x}).pooled for p, x in zip(parts, pixels)]
    cams = []
    for i, part in enumerate(parts):
        def logits(pixel_values, i=i, part=part):  # the head's logits as a function of part i's input
            out = part.encode({"pixel_values": pixel_values}, return_sequence=predictor.sequences)
            pooled = [out.pooled if j == i else f for j, f in enumerate(fixed)]
            batch = dict(base, image=enc.join(pooled) if len(parts) > 1 else out.pooled)
            if predictor.sequences:  # sequence models read one encoder (a joined encoder has no sequence)
                batch["image_seq"], batch["image_seq_mask"] = out.sequence, out.mask
            return predictor.head(batch)["logits"]

        with torch.enable_grad(), part.grad_cam_layer() as layer:
            cam = LayerGradCam(logits, layer).attribute(pixels[i], target=target, relu_attributions=True)
        cam = cam.detach()[0, 0].float()  # (h, w): ReLU(sum over channels of activation x mean gradient)
        peak = float(cam.max())
        cams.append(cam / peak if peak > 0 else cam)
    side = max(len(c) for c in cams)
    grid = torch.stack([F.interpolate(c[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
                        if len(c) != side else c for c in cams]).mean(0)
    peak = float(grid.max())
    grid = grid / peak if peak > 0 else grid
    with torch.no_grad():
        logit = float(logits(pixels[-1])[0, target])
    return {"method": "grad-cam", "grid": grid.cpu().numpy().round(4).tolist(), "logit": logit}


# --- plot: integrated gradients over word embeddings --------------------------------------------------------------
def word_attributions(predictor, plot: str, base: dict, target: int, steps: int = EXPLAIN_STEPS) -> dict[str, Any]:
    import torch
    from captum.attr import LayerIntegratedGradients

    from ..encoders import TextEncoder  # lazy: keeps inference.explain free of torch

    enc = predictor.encoders["text"]
    if not isinstance(enc, TextEncoder):  # no embeddings to integrate gradients over (an encoder outside torch)
        return sentence_occlusion(predictor, plot, base, target)
    # the text the encoder tokenises: normalised when the encoder is configured to, after its prefix (if any)
    full = enc.prepare_text(plot)
    n_prefix = len(enc.prefix)
    tok = enc.tokenizer(full, truncation=True, max_length=enc.max_length, return_offsets_mapping=True,
                        return_tensors="pt")
    word_ids, offsets = tok.word_ids(0), tok.pop("offset_mapping")[0].tolist()
    inputs = {k: v.to(enc.device) for k, v in tok.items()}
    ids = inputs.pop("input_ids")
    special = torch.tensor(enc.tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True),
                           dtype=torch.bool, device=ids.device)
    # The prefix ("passage: ") is part of every input, so the baseline keeps it and no word of it is reported.
    in_prefix = torch.tensor([start < n_prefix for start, _ in offsets], dtype=torch.bool, device=ids.device)
    word_ids = [None if start < n_prefix else w for w, (start, _) in zip(word_ids, offsets)]
    offsets = [(max(a - n_prefix, 0), max(b - n_prefix, 0)) for a, b in offsets]
    text = full[n_prefix:]
    special |= in_prefix
    pad = enc.tokenizer.pad_token_id if enc.tokenizer.pad_token_id is not None else 0
    baseline = torch.where(special, ids, torch.full_like(ids, pad))

    def forward(input_ids):
        n = len(input_ids)
        out = enc.encode({"input_ids": input_ids, **{k: v.expand(n, -1) for k, v in inputs.items()}},
                         return_sequence=predictor.sequences)
        batch = {k: v.expand(n, *v.shape[1:]) for k, v in base.items()}
        batch["text"], batch["text_present"] = out.pooled, torch.ones(n, dtype=torch.bool, device=input_ids.device)
        if predictor.sequences:
            batch["text_seq"], batch["text_seq_mask"] = out.sequence, out.mask
        return predictor.head(batch)["logits"][:, target]

    lig = LayerIntegratedGradients(forward, enc.model.get_input_embeddings())
    with torch.enable_grad():
        attr, delta = lig.attribute(ids, baselines=baseline, n_steps=steps, internal_batch_size=steps,
                                    return_convergence_delta=True)
    per_token = attr.sum(-1)[0].detach().cpu().numpy()
    words: list[dict[str, Any]] = []
    last = None
    for i, w in enumerate(word_ids):
        if w is None:
            continue
        start, end = offsets[i]
        if w == last:  # a continuation sub-token: extend the current word
            words[-1]["end"] = end
            words[-1]["attribution"] += float(per_token[i])
        else:
            words.append({"start": start, "end": end, "attribution": float(per_token[i])})
        last = w
    peak = max((abs(x["attribution"]) for x in words), default=0.0) or 1.0
    for x in words:
        x["word"] = text[x["start"]:x["end"]]
        x["score"] = round(x["attribution"] / peak, 4)  # in [-1, 1]: + pushes toward the genre, - away from it
    n_tokens = len(enc.tokenizer(full)["input_ids"])
    return {"method": "integrated-gradients", "steps": steps, "words": words, "text": text,
            "truncated": n_tokens > ids.shape[1], "tokens_read": int(ids.shape[1]), "tokens_total": n_tokens,
            "convergence_delta": float(delta.abs().max())}


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`: up to a run of sentence-ending marks of any script (. ! ? 。 ！ ？
    ؟ । ...) followed by a space or the end, up to a CJK full stop even without a space, or up to a line break."""
    import regex

    spans = [(m.start(), m.end()) for m in regex.finditer(
        r"\S(?:.*?)(?:\p{Sentence_Terminal}+[\"'”’」』)\]]*(?=\s|$)|[。！？｡]+|(?=\n)|$)", text, regex.S)]
    return [(a, b) for a, b in spans if b > a]


MAX_OCCLUDED = 48  # sentences occluded at most (one encoding each): a long plot's rest is read, not scored


def sentence_occlusion(predictor, plot: str, base: dict, target: int) -> dict[str, Any]:
    """Each sentence's attribution: the target logit with the whole plot minus the logit with that sentence
    left out (a one-sentence plot left out is a missing plot: the model's learned stand-in). One batch of
    n + 1 encodings; for encoders without gradients, whose word embeddings cannot be integrated over."""
    import torch

    from ..encoders import FrozenTextEncoder  # lazy: keeps inference.explain free of torch

    enc = predictor.encoders["text"]
    spans = sentence_spans(plot)[:MAX_OCCLUDED]
    variants = [plot] + [plot[:a] + plot[b:] for a, b in spans]
    present = torch.tensor([bool(v.strip()) for v in variants])
    readable = [v if v.strip() else plot for v in variants]  # an empty variant is masked as absent below
    with torch.no_grad():
        pooled = enc.encode(enc.preprocess(readable)).pooled
        n = len(variants)
        batch = {k: v.expand(n, *v.shape[1:]) for k, v in base.items()}
        batch["text"] = pooled.to(base["text"].device)
        batch["text_present"] = present.to(base["text"].device)
        logits = predictor.head(batch)["logits"][:, target].float().cpu()
    attribution = (logits[0] - logits[1:]).tolist()
    peak = max((abs(x) for x in attribution), default=0.0) or 1.0
    words = [{"start": a, "end": b, "word": plot[a:b], "attribution": float(x), "score": round(x / peak, 4)}
             for (a, b), x in zip(spans, attribution)]
    lengths = enc.token_lengths  # None: a joined text encoder has none of its own
    read = lengths([plot])[0] if lengths else None
    total = enc.count(enc.prepare_text(plot)) if isinstance(enc, FrozenTextEncoder) else read
    return {"method": "sentence-occlusion", "words": words, "text": plot, "truncated": bool(read and total > read),
            "tokens_read": read, "tokens_total": total, "sentences_scored": len(spans),
            "sentences_total": len(sentence_spans(plot))}


# --- PNGs ----------------------------------------------------------------------------------------------------------
def save_pngs(explanation: dict[str, Any], poster: Image.Image | None, out_dir: str | Path,
              top: int = 15) -> list[Path]:
    """Write the explanation's figures (and explanation.json) to out_dir; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    genre, prob = explanation["genre"], explanation["probability"]
    files = []

    if explanation["poster"] is not None and poster is not None:
        grid = np.asarray(explanation["poster"]["grid"], dtype=np.float32)
        heat = np.asarray(Image.fromarray(grid, mode="F").resize(poster.size, Image.BILINEAR))
        fig, axes = plt.subplots(1, 2, figsize=(8, 6 * poster.height / max(poster.width, 1) * 0.62 + 1))
        axes[0].imshow(poster)
        axes[0].set_title("poster")
        axes[1].imshow(poster)
        im = axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[1].set_title(f"Grad-CAM for {genre} (p={prob:.2f})")
        for ax in axes:
            ax.axis("off")
        fig.colorbar(im, ax=axes, fraction=0.03, label="relative importance")
        files.append(_save(fig, out_dir / "poster_gradcam.png"))

    if explanation["plot"] is not None:
        words = explanation["plot"]["words"]
        strongest = sorted(words, key=lambda x: -abs(x["score"]))[:top][::-1]
        text_img = render_highlighted_text(words, width=900)  # 9 inches at 100 dpi
        h_text = text_img.height / 100
        fig, (ax_text, ax) = plt.subplots(2, 1, figsize=(9, h_text + 0.3 * len(strongest) + 1.5),
                                          gridspec_kw={"height_ratios": [h_text, 0.3 * len(strongest) + 0.5]})
        ax_text.imshow(text_img)
        ax_text.axis("off")
        note = " (only the first tokens are read)" if explanation["plot"]["truncated"] else ""
        unit, how = (("sentences", "sentence occlusion") if explanation["plot"]["method"] == "sentence-occlusion"
                     else ("words", "integrated gradients"))
        ax_text.set_title(f"plot {unit} for {genre}{note}: red pushes toward it, blue away ({how})")
        ax.barh([x["word"] for x in strongest], [x["score"] for x in strongest],
                color=["#d62728" if x["score"] > 0 else "#1f77b4" for x in strongest])
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("attribution (scaled to the strongest word)")
        files.append(_save(fig, out_dir / "plot_words.png"))

    files.append(_save(_contribution_figure(explanation, plt), out_dir / "modality_contribution.png"))
    path = out_dir / "explanation.json"
    path.write_text(json.dumps(explanation, indent=2), encoding="utf-8")
    files.append(path)
    return files


def _contribution_figure(explanation: dict[str, Any], plt):
    contribution, fusion, without = explanation["contribution"], explanation["fusion"], explanation["without"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.4]})
    rows = [("occlusion share", contribution)]
    if fusion is not None:
        rows.append((fusion["kind"].replace("_", " "), fusion))
    ax = axes[0]
    for y, (label, w) in enumerate(rows):
        t, i = w.get("text", 0.0), w.get("image", 0.0)
        ax.barh(y, t, color="#2ca02c", label="plot (text)" if y == 0 else None)
        ax.barh(y, i, left=t, color="#9467bd", label="poster (image)" if y == 0 else None)
        ax.text(t / 2, y, f"{t:.0%}", ha="center", va="center", color="white")
        ax.text(t + i / 2, y, f"{i:.0%}", ha="center", va="center", color="white")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax = axes[1]
    if without:
        both = explanation["probabilities"]
        probs_text_only, probs_image_only = without.get("image", {}), without.get("text", {})
        genres = sorted(both, key=lambda g: -max(both[g], probs_text_only[g], probs_image_only[g]))[:6]
        x = np.arange(len(genres))
        ax.bar(x - 0.27, [both[g] for g in genres], 0.27, color="#5b6475", label="both")
        ax.bar(x, [probs_text_only[g] for g in genres], 0.27, color="#2ca02c", label="plot only")
        ax.bar(x + 0.27, [probs_image_only[g] for g in genres], 0.27, color="#9467bd", label="poster only")
        ax.set_xticks(x, genres, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.legend(frameon=False)
        ax.set_title("each modality alone (the other replaced by the model's stand-in)")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "one modality only: nothing to compare", ha="center", va="center")
    fig.suptitle(f"modality contribution ({explanation['genre']}: p={explanation['probability']:.2f})")
    fig.tight_layout()
    return fig


def render_highlighted_text(words: list[dict], width: int = 900, size: int = 17) -> Image.Image:
    """The plot as the model read it, each word's background coloured by its attribution (red +, blue -)."""
    import matplotlib
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    pad, line_h = 10, int(size * 1.55)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, y, end = [], pad, pad, None
    for w in words:
        if end is not None and w["start"] > end:  # the text has a gap here (not before punctuation)
            x += draw.textlength(" ", font=font)
        tw = draw.textlength(w["word"], font=font)
        if x + tw > width - pad and x > pad:
            x, y = pad, y + line_h
        placed.append((x, y, tw, w))
        x, end = x + tw, w["end"]
    img = Image.new("RGB", (width, y + line_h + pad), "white")
    draw = ImageDraw.Draw(img)
    for x, y, tw, w in placed:
        s = max(-1.0, min(1.0, w["score"]))
        fade = int(255 * (1 - abs(s)))
        colour = (255, fade, fade) if s > 0 else (fade, fade, 255)
        draw.rectangle((x - 1, y, x + tw + 1, y + line_h - 3), fill=colour)
        draw.text((x, y + 2), w["word"], font=font, fill="black")
    return img


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path

