"""Model cards: the README.md of every saved model folder, in the Hugging Face model-card style (YAML front matter,
then Markdown), generated from what the folder records (model.json) and, for a trained run, its metrics.json.

`model_card(meta, metrics)` is the one function that writes a card; checkpoint.save_model calls it inside the
folder's staging directory, so the card is written atomically with the weights. Every number in the front matter is
copied from metrics.json (test scores, thresholds, movie counts, seed), never recomputed, so a test can check each of
them against that file; `read_front_matter` reads it back.

Plain Python + PyYAML: no torch here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import describe_preset

CARD_FILE = "README.md"
# The test metrics the front matter lists (model-index): (metrics.json key, model-index type, shown name).
CARD_METRICS = (("f1_macro", "f1", "F1 macro"), ("f1_micro", "f1", "F1 micro"), ("f1_weighted", "f1", "F1 weighted"),
                ("f1_samples", "f1", "F1 samples"), ("hamming_accuracy", "accuracy", "Hamming accuracy"),
                ("subset_accuracy", "accuracy", "Subset accuracy"), ("roc_auc_macro", "roc_auc", "ROC-AUC macro"),
                ("map_macro", "map", "mAP macro"))
FUSION_TEXT = {
    "text": "a text-only head over the plot's embedding", "image": "an image-only head over the poster's embedding",
    "early": "early fusion: the two embeddings concatenated, then one MLP",
    "late": "late fusion: a head per modality, their logits mixed by a learned weight",
    "attention": "attention fusion: a softmax over the two modalities weights their projections",
    "gmu": "a Gated Multimodal Unit (Arevalo et al. 2017): a learned gate mixes the two projections per unit",
    "cross-attention": "cross-attention: each modality attends to the other (Q/K/V both ways)",
}
_SECTION = re.compile(r"^#+\s*caveats\s*$", re.IGNORECASE)


def _source_caveats(source: str | None) -> list[str]:
    """The bullets of a 'Caveats' section in the training data's own README.md (the MM-IMDb sample has one), so the
    card repeats what the data's authors say about it; [] when there is no such file or section."""
    if not source:
        return []
    path = Path(source)
    readme = (path if path.is_dir() else path.parent) / "README.md"
    try:
        lines = readme.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out, inside = [], False
    for line in lines:
        if _SECTION.match(line.strip()):
            inside = True
        elif inside and line.startswith("#"):
            break
        elif inside and line.lstrip().startswith(("* ", "- ")):
            text = line.lstrip()[2:].strip()
            first = re.split(r"(?<=[.;])\s", text, maxsplit=2)
            out.append(" ".join(first[:2])[:400])
    return out


def _languages(meta: Mapping[str, Any]) -> list[str] | None:
    langs = meta.get("encoders", {}).get("text", {}).get("languages")
    return list(langs) if isinstance(langs, list) else None


def _threshold_source(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> str:
    """What the thresholds were tuned on, as the run recorded it (fixed thresholds are tuned on nothing)."""
    if metrics is not None and "threshold_source" in metrics:
        return metrics["threshold_source"]
    cfg = meta.get("config", {})
    return cfg.get("threshold_source", "val") if cfg.get("threshold_mode", "fixed") != "fixed" else "val"


def _encoder_line(modality: str, rec: Mapping[str, Any]) -> dict[str, Any]:
    line = {"name": rec.get("name"), "precision": rec.get("precision"),
            "fingerprint_sha256": rec.get("fingerprint_sha256")}
    pooling = rec.get("kwargs", {}).get("pooling")
    if pooling:
        line["pooling"] = pooling
    if modality == "text" and "languages" in rec:
        line["languages"] = rec["languages"]
    return line


def front_matter(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The YAML header: what a model hub indexes (library, tags, languages, model-index with the test scores) and the
    genrefusion facts (fusion, encoders, training data and its fingerprint, preset, thresholds, teacher)."""
    cfg = meta.get("config", {})
    modalities = [m for m in ("text", "image") if m in meta.get("encoders", {})]
    fusion = meta["model"]["name"]
    encoders = {m: _encoder_line(m, meta["encoders"][m]) for m in modalities}
    name = f"{fusion} ({' + '.join(str(e['name']) for e in encoders.values())})"
    preset, changed = describe_preset(cfg)
    fm: dict[str, Any] = {
        "library_name": "genrefusion",
        "tags": ["genrefusion", "multi-label-classification", "movie-genres",
                 "multimodal" if len(modalities) > 1 else f"{modalities[0]}-only", fusion],
    }
    langs = _languages(meta)
    if langs:
        fm["language"] = langs
    data = (metrics or {}).get("data", {})
    genrefusion: dict[str, Any] = {
        "fusion": fusion, "modalities": modalities, "genres": list(meta["genres"]), "encoders": encoders,
        "preset": preset, "preset_changes": changed,
        "training_data": {"source": data.get("source", cfg.get("data")), "fingerprint": data.get("fingerprint"),
                          "split": data.get("split", cfg.get("split")),
                          "modalities": data.get("modalities", cfg.get("modalities"))},
        "threshold_mode": cfg.get("threshold_mode"), "threshold_source": _threshold_source(meta, metrics),
    }
    if metrics is not None:
        if Path(str(genrefusion["training_data"]["source"])).is_dir():  # an MM-IMDb folder, not a user's catalog
            fm["datasets"] = ["mm-imdb"]
        fm["metrics"] = ["f1", "accuracy", "roc_auc"]
        test = metrics["test"]
        results = [{"type": t, "name": shown, "value": test[k]} for k, t, shown in CARD_METRICS
                   if test.get(k) is not None]
        if metrics.get("test_at_0.5"):
            results.append({"type": "f1", "name": "F1 macro at threshold 0.5",
                            "value": metrics["test_at_0.5"]["f1_macro"]})
            results.append({"type": "f1", "name": "F1 micro at threshold 0.5",
                            "value": metrics["test_at_0.5"]["f1_micro"]})
        fm["model-index"] = [{"name": name, "results": [{
            "task": {"type": "multi-label-classification", "name": "Movie genre classification"},
            "dataset": {"type": "mm-imdb" if "datasets" in fm else "catalog",
                        "name": str(genrefusion["training_data"]["source"]), "split": "test"},
            "metrics": results}]}]
        genrefusion["training_data"]["n"] = dict(data.get("n", {}))
        genrefusion["seed"] = metrics.get("seed")
        thr = metrics["thresholds"]
        genrefusion["thresholds"] = dict(zip(meta["genres"], thr)) if isinstance(thr, list) else thr
    else:
        thr = meta["thresholds"]
        genrefusion["thresholds"] = dict(zip(meta["genres"], thr)) if isinstance(thr, list) else thr
    teacher = meta.get("teacher") or (metrics or {}).get("teacher")
    if teacher is not None:
        genrefusion["teacher"] = teacher
    fm["genrefusion"] = genrefusion
    return fm


def _limitations(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> list[str]:
    cfg = meta.get("config", {})
    data = (metrics or {}).get("data", {})
    out = []
    if data.get("split", cfg.get("split")) != "official" or "sample" in str(data.get("source", "")).lower():
        out.append("Not trained or scored on the full MM-IMDb benchmark with its official split: the test scores "
                   "below are not comparable with published MM-IMDb results.")
    n_dev = data.get("n", {}).get("dev")
    if cfg.get("threshold_mode") == "per_genre" and _threshold_source(meta, metrics) == "val" and n_dev:
        out.append(f"Its 23 per-genre thresholds were tuned on {n_dev:,} validation movies; a rare genre has only a "
                   "few positives there, so its threshold is noisy (`threshold_source=oof` tunes them on "
                   "out-of-fold predictions over train + validation).")
    if cfg.get("modalities") == "both" and float(cfg.get("modality_dropout", 0.0)) == 0 and len(meta["encoders"]) > 1:
        out.append("Trained only on movies with both a poster and a plot and without modality dropout: it refuses "
                   "a movie that lacks either.")
    langs = _languages(meta)
    if langs is not None and len(langs) <= 3:
        out.append(f"The text encoder was trained for {', '.join(langs)} only; plots in other languages or scripts "
                   "get unreliable genres (predictions warn when a plot is mostly in another script).")
    out.append("The genres are MM-IMDb's 23; a movie's other IMDb genres are never predicted, and labels (and so "
               "scores) reflect IMDb's genre tags, which are themselves inconsistent across movies.")
    out += [f"From the training data's README: {c}" for c in _source_caveats(data.get("source", cfg.get("data")))]
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def model_card(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None = None, folder: str = ".") -> str:
    """The card's full text. `meta`: model.json's content; `metrics`: the run's metrics.json (None for a folder
    saved outside a run: the card then says no evaluation was recorded); `folder`: the path shown in the commands."""
    fm = front_matter(meta, metrics)
    g = fm["genrefusion"]
    fusion = g["fusion"]
    need = " and ".join({"text": "a plot", "image": "a poster"}[m] for m in g["modalities"])
    lines = [f"# genrefusion: {fusion} over {' + '.join(str(e['name']) for e in g['encoders'].values())}", "",
             f"Predicts a movie's genres (multi-label, the {len(g['genres'])} MM-IMDb genres) from {need}. A genre "
             "is predicted when its probability reaches its threshold (below).", "", "## Model", "",
             f"- Fusion: `{fusion}`, {FUSION_TEXT.get(fusion, 'a registered genrefusion head')}.",
             *(f"- {m.capitalize()} encoder: `{e['name']}` (frozen; features at {e['precision']}"
               + (f", {e['pooling']} pooling" if e.get("pooling") else "")
               + (f"; languages: {', '.join(e['languages'])}" if e.get("languages") else "")
               + f"; fingerprint `{str(e['fingerprint_sha256'])[:16]}`)" for m, e in g["encoders"].items()),
             f"- Recipe: the `{g['preset']}` preset"
             + (" with " + ", ".join(f"{k}={v}" for k, v in g["preset_changes"].items()) if g["preset_changes"] else "")
             + f"; thresholds: {g['threshold_mode']}"
             + ("" if g["threshold_mode"] == "fixed" else ", tuned on "
                + ("out-of-fold predictions over train + validation" if g["threshold_source"] == "oof"
                   else "the validation split")) + "."]
    if "teacher" in g:
        t = g["teacher"]
        lines.append(f"- Distilled from the teacher `{t.get('path', t) if isinstance(t, dict) else t}`"
                     + (f" (fingerprint `{str(t.get('fingerprint'))[:16]}`)" if isinstance(t, dict)
                        and t.get("fingerprint") else "") + ".")
    td = g["training_data"]
    lines += ["", "## Training data", "",
              f"`{td['source']}`, {td['split']} split, modalities={td['modalities']}, data fingerprint "
              f"`{td['fingerprint']}`."]
    if metrics is None:
        lines += ["", "## Evaluation", "", "No evaluation was recorded with this folder: score it with "
                  f"`genrefusion evaluate --model {folder} --data PATH`."]
    else:
        n = td["n"]
        lines[-1] += (f" Movies: {n.get('train', 0):,} train, {n.get('dev', 0):,} validation, {n.get('test', 0):,} "
                      f"test; seed {g['seed']}.")
        test, at05 = metrics["test"], metrics.get("test_at_0.5")
        lines += ["", "## Evaluation (test split)", "", "| metric | at its thresholds |"
                  + (" at 0.5 |" if at05 else ""), "|:---|---:|" + ("---:|" if at05 else "")]
        for key, _, shown in CARD_METRICS:
            lines.append(f"| {shown} | {_fmt(test.get(key))} |" + (f" {_fmt(at05.get(key))} |" if at05 else ""))
        lines += ["", "| genre | test movies | threshold | precision | recall | F1 |", "|:---|---:|---:|---:|---:|---:|"]
        thr = g["thresholds"]
        for genre, row in test["per_genre"].items():
            t = thr[genre] if isinstance(thr, dict) else thr
            lines.append(f"| {genre} | {row['support']:,} | {t:.2f} | {row['precision']:.3f} | {row['recall']:.3f} "
                         f"| {row['f1']:.3f} |")
    lines += ["", "## Known limitations", "", *(f"- {x}" for x in _limitations(meta, metrics)), "",
              "## How to use it", "", "```",
              f"genrefusion predict --model {folder} --poster poster.jpg --plot \"A detective hunts a killer\"",
              f"genrefusion predict --model {folder} --input catalog.csv --output predictions.csv",
              f"genrefusion evaluate --model {folder} --data labelled.csv --score-split all",
              f"genrefusion serve --model {folder}        # HTTP API and a page on http://127.0.0.1:8000/", "```", "",
              "```python", "from PIL import Image", "import genrefusion", "",
              f"model = genrefusion.load_model({folder!r})",
              "result = model.predict_one(poster=Image.open(\"poster.jpg\"), plot=\"A detective hunts a killer\")",
              "print(result[\"predicted\"])  # genres at or above their thresholds, most probable first", "```", ""]
    header = yaml.safe_dump(fm, sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{header}---\n\n" + "\n".join(lines)


def read_front_matter(path: str | Path) -> dict[str, Any]:
    """A card's YAML front matter (ValueError when the file has none)."""
    text = Path(path).read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if m is None:
        raise ValueError(f"{path}: no YAML front matter (--- ... --- at the top)")
    fm = yaml.safe_load(m.group(1))
    if not isinstance(fm, dict):
        raise ValueError(f"{path}: its front matter is not a mapping")
    return fm
