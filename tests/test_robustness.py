"""Robustness curves: every corruption changes its input as documented and is the identity at level 0; the command
scores saved models on the same movies (the clean score is the run's own test score), reruns give the same
numbers, other seeds other corruptions; the page's tables are the JSON's numbers and it renders in Chromium."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genrefusion.evaluation.robustness import corruptions as C
from genrefusion.evaluation.robustness.measure import parse_levels, relative_robustness

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
PLOT = ("A retired detective returns to the dark city where his brother was killed, and finds the police, the "
        "mayor and an old friend all hiding the same secret about the night of the fire at the harbour. " * 3).strip()


def rng(name="x", seed=0):
    return C.movie_rng(seed, name, "tt0000001")


def poster(w=120, h=180) -> Image.Image:
    """Every pixel tells where it is (red = x, green = y) over a textured blue: crops and patches can be located."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    blue = (np.random.default_rng(0).random((h, w)) * 255)
    return Image.fromarray(np.stack([x * 255 // (w - 1), y * 255 // (h - 1), blue], -1).astype(np.uint8))


def pixels(img):
    return np.asarray(img.convert("RGB"), dtype=np.int16)


# -- level 0 is the identity, levels outside [0, 1] are refused ------------------------------------------------
@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_every_corruption_is_the_identity_at_level_0(name):
    c = C.CORRUPTIONS[name]
    item = PLOT if c.modality == "text" else poster()
    got = c.apply(item, 0.0, rng(name))
    if c.modality == "text":
        assert got == item
    else:
        assert got.size == item.size and np.array_equal(pixels(got), pixels(item))


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_every_corruption_changes_its_input_at_level_1(name):
    c = C.CORRUPTIONS[name]
    item = PLOT if c.modality == "text" else poster()
    got = c.apply(item, 1.0, rng(name))
    if c.removes:
        assert got is None
    elif c.modality == "text":
        assert got != item and got.strip()
    else:
        assert got.size != item.size or not np.array_equal(pixels(got), pixels(item))


@pytest.mark.parametrize("level", [-0.1, 1.01, float("nan")])
def test_levels_outside_0_1_are_refused(level):
    for c in C.CORRUPTIONS.values():
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            c.apply(PLOT if c.modality == "text" else poster(), level, rng())
    with pytest.raises(ValueError):
        parse_levels("0,0.5,2")
    assert parse_levels("0.5,0.2,0.5") == (0.0, 0.2, 0.5)  # sorted, once each, 0 always there


def test_one_movie_generator_is_stable_and_its_own():
    a, b = rng("typos"), rng("typos")
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]
    assert rng("typos").random() != rng("blur").random() != C.movie_rng(0, "blur", "tt2").random()
    # not Python's salted hash(): the same draw in another interpreter
    code = "from genrefusion.evaluation.robustness.corruptions import movie_rng; print(movie_rng(0, 'x', 'tt0000001').random())"
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(C.__file__).parents[3])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert float(out.stdout) == rng().random()


# -- plots -----------------------------------------------------------------------------------------------------
def test_word_dropout_drops_about_level_of_the_words_keeps_order_and_nests():
    words = PLOT.split()
    kept = {s: C.word_dropout(PLOT, s, rng()).split() for s in (0.2, 0.5, 0.8, 1.0)}
    for s, k in kept.items():
        it = iter(words)
        assert all(w in it for w in k)  # a subsequence: order kept, nothing invented
        if s < 1:
            assert abs((1 - len(k) / len(words)) - s) < 0.12
    assert len(kept[1.0]) == 1  # never an empty plot
    # the same generator: what survives 0.5 survives 0.2 (nested), by position
    def positions(level):
        r = rng()
        draws = [r.random() for _ in words]
        return {i for i, u in enumerate(draws) if u >= level}
    assert positions(0.5) <= positions(0.2) and len(kept[0.5]) == len(positions(0.5))


def test_truncation_keeps_the_first_words():
    words = PLOT.split()
    for s in (0.2, 0.5, 0.9, 1.0):
        got = C.truncation(PLOT, s, rng()).split()
        assert got == words[:max(1, math.ceil(round((1 - s) * len(words), 9)))]
    assert C.truncation("one two three four five six seven eight nine ten", 0.2).split() == \
        "one two three four five six seven eight".split()  # 8 of 10, not 9 (float 8.000000000000002)


def _one_edit(a: str, b: str) -> bool:
    """b is a with one letter dropped, doubled, replaced, or two adjacent letters swapped."""
    if len(b) == len(a) - 1:
        return any(a[:i] + a[i + 1:] == b for i in range(len(a)))
    if len(b) == len(a) + 1:
        return any(b[:i] + b[i + 1:] == a and b[i] == b[i - 1 if i else 1] for i in range(len(b)))
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(b) == len(a) and (len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                                    and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]))


def test_typos_change_words_of_3_letters_by_one_edit_and_keep_the_spacing():
    text = "The  ghost of\tan old sailor haunts a lighthouse, and nobody believes Mary."
    got = C.typos(text, 1.0, rng())
    assert re.split(r"\S+", got) == re.split(r"\S+", text)  # whitespace exactly as it was
    for a, b in zip(text.split(), got.split()):
        letters = sum(ch.isalpha() for ch in a)
        assert (a != b and _one_edit(a, b)) if letters >= 3 else a == b, (a, b)
    words = PLOT.split()
    changed = sum(a != b for a, b in zip(words, C.typos(PLOT, 0.3, rng()).split()))
    eligible = sum(sum(ch.isalpha() for ch in w) >= 3 for w in words)
    assert 0.15 < changed / eligible < 0.45


def test_removed_takes_the_item_away_with_probability_level():
    gone = sum(C.removed(PLOT, 0.3, C.movie_rng(0, "missing_plot", f"tt{i}")) is None for i in range(2000))
    assert 0.26 < gone / 2000 < 0.34


# -- posters ---------------------------------------------------------------------------------------------------
def _sharpness(img) -> float:
    g = pixels(img).mean(-1)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def test_blur_smooths_more_as_the_level_grows_and_keeps_the_size():
    img = poster()
    sharp = [_sharpness(C.blur(img, s)) for s in (0, 0.2, 0.5, 1.0)]
    assert sharp == sorted(sharp, reverse=True) and sharp[-1] < 0.3 * sharp[0]
    assert C.blur(img, 0.6).size == img.size


def test_jpeg_recompresses_at_the_documented_quality():
    import io

    img = poster()
    assert [C.jpeg_quality(s) for s in (0.2, 0.5, 0.99, 1.0)] == [80, 50, 1, 1]
    err = [np.abs(pixels(C.jpeg(img, s)) - pixels(img)).mean() for s in (0.2, 0.6, 1.0)]
    assert 0 < err[0] < err[1] < err[2]
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=40)  # the same bytes PIL makes at that quality, decoded
    assert np.array_equal(pixels(C.jpeg(img, 0.6)), pixels(Image.open(io.BytesIO(buf.getvalue()))))


def test_crop_keeps_the_documented_area_of_one_region_with_the_aspect_ratio():
    img = poster()
    for s in (0.3, 1.0):
        got = C.crop(img, s, rng())
        area = got.width * got.height / (img.width * img.height)
        assert abs(area - (1 - 0.9 * s)) < 0.03 and abs(got.width / got.height - img.width / img.height) < 0.03
        # the crop is a contiguous region of the original: the pixels at its corner say where it was taken
        x0 = round(int(pixels(got)[0, 0, 0]) * (img.width - 1) / 255)
        y0 = round(int(pixels(got)[0, 0, 1]) * (img.height - 1) / 255)
        box = next((x, y) for x in range(max(0, x0 - 2), x0 + 3) for y in range(max(0, y0 - 2), y0 + 3)
                   if np.array_equal(pixels(img.crop((x, y, x + got.width, y + got.height))), pixels(got)))
        assert box is not None
    inner, outer = C.crop(img, 0.8, rng()), C.crop(img, 0.4, rng())
    assert inner.width < outer.width  # the same point, a smaller box


def test_occlusion_covers_the_documented_area_in_mean_grey_and_nothing_else():
    img = poster()
    for s in (0.25, 0.6):
        got = pixels(C.occlusion(img, s, rng()))
        grey = (got == np.array(C.MEAN_GREY)).all(-1)
        assert abs(grey.mean() - s) < 0.03
        assert np.array_equal(got[~grey], pixels(img)[~grey])


def test_greyscale_removes_saturation_by_level():
    img = poster()

    def saturation(x):
        p = pixels(x)
        return float((p.max(-1) - p.min(-1)).mean())
    sats = [saturation(C.greyscale(img, s)) for s in (0, 0.3, 0.7, 1.0)]
    assert sats == sorted(sats, reverse=True)
    grey = pixels(C.greyscale(img, 1.0))
    assert (np.abs(grey[..., 0] - grey[..., 1]) <= 1).all() and (np.abs(grey[..., 1] - grey[..., 2]) <= 1).all()


def test_relative_robustness_is_the_mean_score_under_the_curve():
    assert relative_robustness([0, 0.5, 1], [0.6, 0.4, 0.2]) == pytest.approx(0.4)
    assert relative_robustness([0, 1], [0.6, None]) is None


# -- the command on saved models -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory, synthetic_catalog, tiny_bert, trained_run) -> Path:
    """A text-only model on the same catalog as `trained_run` (the GMU), so both go on one chart; its plots are
    already in the GMU's feature cache."""
    from genrefusion.config import Config
    from genrefusion.training.experiment import run_experiment

    root = tmp_path_factory.mktemp("text-run")
    cfg = Config(data=str(synthetic_catalog), split="official", modalities="any", model="text",
                 text_encoder=str(tiny_bert), pooling="mean", epochs=10, lr=3e-3, cache_dir=str(trained_run.parent / "cache"),
                 out=str(root), name="text").validate()
    run_experiment(cfg, run_dir=root / "text", log=None)
    return root / "text"


LEVELS = "0,0.5,1"
CORRUPTIONS = "word_dropout,typos,missing_plot,occlusion,missing_poster"


def _run(cli, models, catalog, out, *extra):
    args = ["robustness", *(a for m in models for a in ("--model", str(m / "model"))), "--data", str(catalog),
            "--modalities", "any", "--levels", LEVELS, "--corruptions", CORRUPTIONS, "--out", str(out), "--quiet",
            *extra]
    assert cli(args) == 0
    return json.loads((out / "robustness.json").read_text())


@pytest.fixture(scope="module")
def study(trained_run, text_run, synthetic_catalog, tmp_path_factory):
    from genrefusion.cli.commands import main

    out = tmp_path_factory.mktemp("robustness") / "out"
    cache = trained_run.parent / "cache"
    return out, _run(main, [trained_run, text_run], synthetic_catalog, out, "--cache-dir", str(cache))


def test_the_clean_score_is_the_runs_own_test_score(trained_run, synthetic_catalog, tmp_path):
    """One model on its own test split, clean features from the run's cache: exactly metrics.json's numbers."""
    from genrefusion.cli.commands import main

    got = _run(main, [trained_run], synthetic_catalog, tmp_path / "one", "--cache-dir",
               str(trained_run.parent / "cache"), "--corruptions", "blur", "--levels", "0.5")
    test = json.loads((trained_run / "metrics.json").read_text())["test"]
    clean = next(iter(got["clean"].values()))
    assert got["data"]["n_movies"] == test["n_samples"]
    assert clean["f1_macro"] == test["f1_macro"] and clean["f1_micro"] == test["f1_micro"]


def test_models_share_movies_and_flat_lines_where_they_do_not_read(study):
    out, res = study
    gmu, text = (m["label"] for m in res["models"])
    assert [m["kind"] for m in res["models"]] == ["fusion", "unimodal"]
    assert res["data"]["excluded"]  # the catalog's movie without a plot: the text model cannot score it
    for name, entry in res["corruptions"].items():
        assert [x["level"] for x in entry["levels"]] == [0.0, 0.5, 1.0]
        assert entry["reads"] == {gmu: True, text: entry["modality"] == "text"}
        for lab, points in entry["scores"].items():
            assert points[0] == {"level": 0.0, **res["clean"][lab]}
            if not entry["reads"][lab]:  # a poster corruption leaves a text model's inputs alone
                assert all({k: v for k, v in p.items() if k != "level"} == res["clean"][lab] for p in points)
    # removing the only modality a model reads: no number, a reason
    assert [p.get("f1_macro") for p in res["corruptions"]["missing_plot"]["scores"][text][1:]] == [None, None]
    assert "cannot score" in res["corruptions"]["missing_plot"]["scores"][text][1]["why"]
    # the fusion is still scored with the plot removed, and loses something when every plot is gone
    assert res["corruptions"]["missing_plot"]["scores"][gmu][2]["f1_micro"] < res["clean"][gmu]["f1_micro"]
    assert res["corruptions"]["missing_plot"]["levels"][2]["removed"] == 1.0
    # "removed" counts the movies that had the modality: the catalog's poster-less movies do not dilute it
    assert res["corruptions"]["missing_poster"]["levels"][2]["removed"] == 1.0
    # the corrupted inputs changed the scores somewhere (the corruptions reached the encoders)
    changed = [n for n, e in res["corruptions"].items() if e["scores"][gmu][2] != e["scores"][gmu][0]]
    assert {"word_dropout", "typos", "occlusion"} <= set(changed)
    assert res["corruptions"]["word_dropout"]["levels"][2]["mean_words"] == 1.0


def test_a_rerun_gives_the_same_numbers_and_another_seed_others(study, trained_run, text_run, synthetic_catalog,
                                                               tmp_path):
    from genrefusion.cli.commands import main

    _, first = study
    cache, some = str(trained_run.parent / "cache"), ("typos", "occlusion")
    models = [trained_run, text_run]
    again = _run(main, models, synthetic_catalog, tmp_path / "again", "--cache-dir", cache, "--corruptions",
                 ",".join(some))
    assert {n: again["corruptions"][n] for n in some} == {n: first["corruptions"][n] for n in some}
    assert again["clean"] == first["clean"]
    other = _run(main, models, synthetic_catalog, tmp_path / "seed", "--cache-dir", cache, "--corruptions",
                 ",".join(some), "--seed", "7")
    assert other["clean"] == first["clean"]
    assert any(other["corruptions"][n]["scores"] != first["corruptions"][n]["scores"] for n in some)


def test_no_cache_leaves_the_feature_cache_alone(trained_run, synthetic_catalog, tmp_path):
    from genrefusion.cli.commands import main

    res = _run(main, [trained_run], synthetic_catalog, tmp_path / "out", "--cache-dir", str(tmp_path / "cache"),
               "--no-cache", "--corruptions", "typos", "--limit", "6")
    assert not (tmp_path / "cache").exists()
    assert res["data"]["n_movies"] == 6 and res["data"]["limit"] == 6


def test_the_page_shows_the_jsons_numbers_and_a_chart_per_corruption(study):
    out, res = study
    md = (out / "robustness.md").read_text()
    gmu = res["models"][0]["label"]
    for name, entry in res["corruptions"].items():
        png = out / f"fig-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(fig-{name}.png)" in md
        for p in entry["scores"][gmu]:
            assert f"{p['f1_macro']:.4f} / {p['f1_micro']:.4f}" in md
        rr = entry["relative_robustness"][gmu]
        assert f"{rr:.4f}" in md
    assert "n/a" in md and "cannot score" in md
    html = (out / "robustness.html").read_text()
    assert html.count("data:image/png;base64,") == len(res["corruptions"])


def test_the_scored_split_is_score_split_and_split_is_no_longer_it():
    """As for evaluate: --score-split picks the movies scored; --split (the split mode elsewhere) does not."""
    from genrefusion.cli.commands import build_parser

    base = ["robustness", "--model", "m", "--data", "d"]
    args = build_parser().parse_args([*base, "--score-split", "dev"])
    assert (args.score_split, args.split_mode) == ("dev", None)
    assert build_parser().parse_args(base).score_split == "test"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--split", "dev"])


def test_bad_arguments_are_one_line_errors(trained_run, synthetic_catalog, tmp_path, capsys):
    from genrefusion.cli.commands import main

    base = ["robustness", "--model", str(trained_run / "model"), "--data", str(synthetic_catalog), "--out",
            str(tmp_path / "o"), "--quiet"]
    for extra, msg in ((["--corruptions", "fog"], "unknown corruption 'fog'"), (["--levels", "0,3"], "[0, 1]"),
                       (["--levels", "a,b"], "not numbers"), (["--limit", "0"], "positive")):
        assert main(base + extra) == 2
        assert msg in capsys.readouterr().err
    assert main(["robustness", "--model", str(tmp_path), "--data", str(synthetic_catalog), "--quiet"]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI installs Debian's chromium)")
def test_the_page_renders_in_headless_chromium(study, tmp_path):
    from playwright.sync_api import sync_playwright

    out, res = study
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((out / "robustness.html").as_uri())
        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        page.screenshot(path=str(tmp_path / "robustness.png"), full_page=True)
        browser.close()
    assert len(sizes) == len(res["corruptions"]) and all(ok and w > 500 for ok, w in sizes)
    assert headings == [e["title"] for e in res["corruptions"].values()]
    assert (tmp_path / "robustness.png").stat().st_size > 10_000


def test_the_page_is_rebuilt_from_the_json_alone_and_a_bad_json_is_named(study, tmp_path):
    from genrefusion.evaluation.robustness.page import read_result, write_page

    out, res = study
    again = tmp_path / "again"
    write_page(read_result(out), again)
    assert (again / "robustness.md").read_text() == (out / "robustness.md").read_text()
    with pytest.raises(FileNotFoundError, match=r"robustness\.json: missing \(run `genrefusion robustness` first\)"):
        read_result(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "robustness.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad/robustness\.json: expected a JSON object, got list"):
        read_result(tmp_path / "bad")
