"""Model cards: every saved model folder has a README.md whose YAML front matter reports what metrics.json says."""
from __future__ import annotations

import json
from numbers import Real

import pytest

from genrefusion.inference.modelcard import CARD_FILE, model_card, read_front_matter


def _numbers(value, path=()):
    """Every number in a nested structure, with its path (booleans are not numbers here)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, (*path, i))
    elif isinstance(value, Real) and not isinstance(value, bool):
        yield path, value


def test_the_card_front_matter_numbers_are_metrics_json_numbers(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    meta = json.loads((trained_run / "model" / "model.json").read_text())
    fm = read_front_matter(trained_run / "model" / CARD_FILE)
    assert fm["library_name"] == "genrefusion"
    g = fm["genrefusion"]
    assert g["fusion"] == "gmu" and g["modalities"] == ["text", "image"] and g["genres"] == meta["genres"]
    # The model-index: each test score is metrics.json's, under the name it is shown with.
    results = fm["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "test"
    shown = {m["name"]: m["value"] for m in results["metrics"]}
    for key, name in (("f1_macro", "F1 macro"), ("f1_micro", "F1 micro"), ("f1_weighted", "F1 weighted"),
                      ("f1_samples", "F1 samples"), ("hamming_accuracy", "Hamming accuracy"),
                      ("subset_accuracy", "Subset accuracy")):
        assert shown[name] == metrics["test"][key]
    if metrics["test_at_0.5"] is not None:  # thresholds tuned: the scores at 0.5 are listed too
        assert shown["F1 macro at threshold 0.5"] == metrics["test_at_0.5"]["f1_macro"]
    else:
        assert "F1 macro at threshold 0.5" not in shown
    # Thresholds, movie counts, seed, fingerprints: copied, not recomputed.
    thr = metrics["thresholds"]
    if isinstance(thr, list):  # one per genre, by name
        assert [g["thresholds"][genre] for genre in meta["genres"]] == thr
    else:  # one for every genre
        assert g["thresholds"] == thr
    assert g["training_data"]["n"] == metrics["data"]["n"]
    assert g["training_data"]["fingerprint"] == metrics["data"]["fingerprint"]
    assert g["seed"] == metrics["seed"]
    for m in ("text", "image"):
        assert g["encoders"][m]["fingerprint_sha256"] == metrics["encoders"][m]["fingerprint_sha256"]
    # And no number anywhere in the front matter that metrics.json does not hold.
    known = {v for _, v in _numbers(metrics)}
    stray = [(p, v) for p, v in _numbers(fm) if v not in known]
    assert not stray, stray


def test_the_card_body_shows_the_test_table_and_how_to_use_it(trained_run):
    text = (trained_run / "model" / CARD_FILE).read_text()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert f"| F1 macro | {metrics['test']['f1_macro']:.4f} |" in text
    assert f"genrefusion serve --model {trained_run / 'model'}" in text
    assert f"genrefusion evaluate --model {trained_run / 'model'}" in text
    assert "## Known limitations" in text
    for genre, row in metrics["test"]["per_genre"].items():
        assert f"| {genre} | {row['support']:,} |" in text


def test_the_card_repeats_the_training_data_readme_caveats(tmp_path, trained_run):
    meta = json.loads((trained_run / "model" / "model.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    (tmp_path / "README.md").write_text("# data\n\n## Caveats\n\n* **Labels.** Only dev labels are official. More "
                                        "text.\n\n## Other\n\n* not a caveat\n")
    metrics["data"]["source"] = str(tmp_path)
    text = model_card(meta, metrics)
    assert "From the training data's README: **Labels.** Only dev labels are official." in text
    assert "not a caveat" not in text


def test_a_card_without_metrics_says_no_evaluation_was_recorded(trained_run):
    meta = json.loads((trained_run / "model" / "model.json").read_text())
    text = model_card(meta, None, folder="my-model")
    fm = read_front_matter_text(text)
    assert "model-index" not in fm
    assert "No evaluation was recorded" in text and "genrefusion evaluate --model my-model" in text


def test_a_teacher_and_languages_are_reported_when_recorded(trained_run):
    meta = json.loads((trained_run / "model" / "model.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    meta["encoders"]["text"]["languages"] = ["en", "ko"]
    metrics["teacher"] = {"path": "runs/big/model", "fingerprint": "ab" * 32}
    text = model_card(meta, metrics)
    fm = read_front_matter_text(text)
    assert fm["language"] == ["en", "ko"]
    assert fm["genrefusion"]["teacher"]["path"] == "runs/big/model"
    assert "Distilled from the teacher `runs/big/model`" in text


def test_a_file_without_front_matter_is_named(tmp_path):
    (tmp_path / "README.md").write_text("# no front matter\n")
    with pytest.raises(ValueError, match="no YAML front matter"):
        read_front_matter(tmp_path / "README.md")


def read_front_matter_text(text: str) -> dict:
    import yaml

    return yaml.safe_load(text.split("---\n")[1])


def test_per_genre_thresholds_and_scores_at_half_are_listed_by_genre(trained_run):
    meta = json.loads((trained_run / "model" / "model.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    thr = [round(0.05 + 0.04 * j, 2) for j in range(len(meta["genres"]))]
    meta["thresholds"], metrics["thresholds"] = thr, thr
    metrics["config"]["threshold_mode"] = meta["config"]["threshold_mode"] = "per_genre"
    metrics["test_at_0.5"] = {**metrics["test"], "f1_macro": 0.123, "f1_micro": 0.456}
    text = model_card(meta, metrics)
    fm = read_front_matter_text(text)
    assert fm["genrefusion"]["thresholds"] == dict(zip(meta["genres"], thr))
    shown = {m["name"]: m["value"] for m in fm["model-index"][0]["results"][0]["metrics"]}
    assert shown["F1 macro at threshold 0.5"] == 0.123 and shown["F1 micro at threshold 0.5"] == 0.456
    assert "| F1 macro | " in text and " 0.1230 |" in text
    assert f"| {meta['genres'][3]} |" in text and f"| {thr[3]:.2f} |" in text
    assert "tuned on the validation split" in text
