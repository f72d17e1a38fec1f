"""Text that is not English: the Unicode-aware thesis normalisation, script detection, and the warning a prediction
carries when its plot is in a script the model's text encoder cannot read (library, CLI, API, page)."""
from __future__ import annotations

import json
import re
import unicodedata

import pytest

from genrefusion.encoders import normalise_text
from genrefusion.data.languages import (ENGLISH, USE_LANGUAGES, XLMR_LANGUAGES, letter_scripts, script_warnings,
                                   scripts_of)

KOREAN = "한강 둔치에서 아버지의 매점 일을 돕고 있는 강두는 한강 다리에 매달린 괴물을 발견한다."


# --- normalisation -------------------------------------------------------------------------------------------------
def test_normalisation_keeps_hangul_kana_kanji_and_accents():
    assert normalise_text("괴물(2006): 한강에 나타난 괴물!") == "괴물 2006 한강에 나타난 괴물!"
    assert normalise_text("「千と千尋の神隠し」は、少女の物語です。") == "千と千尋の神隠し は 少女の物語です。"
    assert normalise_text("ラーメン・ヒーロー") == "ラーメン ヒーロー"  # the prolonged sound mark is a letter
    assert normalise_text("Amélie à Montmartre, déçue?") == "amélie à montmartre, déçue?"
    # an accent typed as a base letter + a combining mark is the same text (NFC), not "ame lie"
    decomposed = unicodedata.normalize("NFD", "Amélie Poulain")
    assert decomposed != "Amélie Poulain" and normalise_text(decomposed) == "amélie poulain"
    # combining marks that are the letters of other scripts survive: Hindi vowel signs, Thai vowels
    assert normalise_text("एक लड़का") == "एक लड़का" and normalise_text("เด็กชาย") == "เด็กชาย"
    assert normalise_text("ｆｕｌｌ－ｗｉｄｔｈ！") == "ｆｕｌｌ ｗｉｄｔｈ！"  # NFC, not NFKC: no compatibility folding
    assert normalise_text("İstanbul") == "i̇stanbul"  # lower-case İ decomposes; NFC keeps its dot above


def test_normalisation_of_the_old_regex_is_kept_for_english():
    assert normalise_text("  The MOVIE's plot:\n<b>Hero</b> -- saves_the day!!  (1999) ") == \
        "the movie's plot b hero b -- saves the day!! 1999"


_THESIS = re.compile(r"[^\w\s.,!?'\-]|_")  # the thesis' regex, before it was made Unicode-aware


def _thesis(text: str) -> str:
    return " ".join(_THESIS.sub(" ", text.lower()).split())


def test_english_sample_plots_normalise_exactly_as_before(sample_root):
    """The feature cache keys on the text an encoder reads: a changed English normalisation would silently
    re-encode the dataset and shift results. Every plot of the real sample (all its paragraphs) comes out the same."""
    from genrefusion.data.loader import load_dataset

    plots = [m.plot for m in load_dataset(sample_root, "official", "any", plot_mode="join").movies if m.plot]
    assert len(plots) > 3000 and any(any(ord(c) > 127 for c in p) for p in plots)  # accents among them
    assert [normalise_text(p) for p in plots] == [_thesis(p) for p in plots]


def test_the_old_regex_destroyed_combining_marks():
    """Why the normalisation changed: the thesis' regex treats combining marks as special characters."""
    assert _thesis("एक लड़का") != "एक लड़का"
    assert _thesis(unicodedata.normalize("NFD", "Amélie")) == "ame lie"


# --- scripts and warnings ------------------------------------------------------------------------------------------
def test_scripts_of_letters():
    counts = letter_scripts("괴물 漢字 ひらがな カタカナー Привет Ελλάδα, 42 ★ 😀 hello")
    assert counts == {"Hangul": 2, "Han": 2, "Hiragana": 4, "Katakana": 4, "Cyrillic": 6, "Greek": 6, "Latin": 5}
    assert scripts_of(ENGLISH) == ["Latin"] and set(scripts_of(["ko"])) == {"Hangul", "Han"}
    assert {"Hangul", "Hiragana", "Katakana", "Han", "Cyrillic", "Thai", "Arabic"} <= set(scripts_of(USE_LANGUAGES))
    assert len(scripts_of(XLMR_LANGUAGES)) > 20


def test_script_warnings():
    [w] = script_warnings(KOREAN, ENGLISH, "minilm-l6")
    assert w["code"] == "unreadable_script" and w["field"] == "plot"
    assert "Hangul" in w["message"] and "minilm-l6" in w["message"] and "100%" in w["message"]
    assert script_warnings(KOREAN, XLMR_LANGUAGES, "multilingual-e5-small") == []
    assert script_warnings(KOREAN, USE_LANGUAGES, "use-multilingual") == []
    assert script_warnings("Bong Joon-ho's 괴물 (The Host) is a monster movie set in Seoul.", ENGLISH, "x") == []
    assert script_warnings("괴물", ENGLISH, "x") == []  # too short to judge
    assert script_warnings("12345 !!! 2006", ENGLISH, "x") == []  # no letters
    assert script_warnings(KOREAN, None, "/models/mine") == []  # languages not declared: nothing is claimed
    assert script_warnings(None, ENGLISH, "x") == []
    [w] = script_warnings("Молодой человек влюбляется в девушку из другого города.", USE_LANGUAGES[:3], "x")
    assert "Cyrillic" in w["message"]


# --- a model with an English-only text encoder -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def english_run(tmp_path_factory, synthetic_catalog):
    from genrefusion.config import load_config
    from genrefusion.training.experiment import run_experiment

    root = tmp_path_factory.mktemp("english-run")
    cfg = load_config(preset="recommended", overrides={
        "data": str(synthetic_catalog), "split": "official", "model": "text", "text_encoder": "minilm-l6",
        "epochs": 3, "cache_dir": str(root / "cache")})
    run_experiment(cfg, run_dir=root / "run", log=None)
    return root / "run"


@pytest.fixture(scope="module")
def english_model(english_run):
    from genrefusion.cli.predict import load_model

    return load_model(english_run / "model")


def test_a_korean_plot_into_an_english_model_is_warned(english_model, english_run):
    meta = json.loads((english_run / "model" / "model.json").read_text())
    assert meta["encoders"]["text"]["languages"] == ["en"]  # the folder says it, for the model card
    assert english_model.info()["languages"] == ["en"]
    [korean] = english_model.predict_one(plot=KOREAN)["warnings"]
    assert korean["code"] == "unreadable_script" and "Hangul" in korean["message"]
    assert english_model.predict_one(plot="A ghost haunts a dark house at night.")["warnings"] == []
    batch = english_model.predict([None, None], ["space ship alien battle", KOREAN])
    assert [len(r["warnings"]) for r in batch] == [0, 1]


def test_languages_recorded_in_model_json_are_checked(english_run, tmp_path):
    import shutil

    from genrefusion.inference.checkpoint import ModelFolderError, load_head
    from genrefusion.inference.integrity import seal

    folder = tmp_path / "model"
    shutil.copytree(english_run / "model", folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["encoders"]["text"]["languages"] = "en"  # not a list (as a writer might have saved it)
    (folder / "model.json").write_text(json.dumps(seal(meta)))
    with pytest.raises(ModelFolderError, match="languages"):
        load_head(folder)
    del meta["encoders"]["text"]["languages"]  # a folder from before: the registry says
    del meta["fields_sha256"]  # (nor had it the fields' digests)
    (folder / "model.json").write_text(json.dumps(meta))
    from genrefusion.cli.predict import load_model

    assert load_model(folder).languages == ["en"]


def test_cli_predict_prints_the_warning(english_run, serving_cli, capsys):
    assert serving_cli(["predict", "--model", str(english_run / "model"), "--plot", KOREAN]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "Hangul" in err
    assert serving_cli(["predict", "--model", str(english_run / "model"), "--plot", KOREAN, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"][0]["code"] == "unreadable_script"


def test_the_api_and_the_page_show_the_warning(english_model, tmp_path):
    import httpx2

    from genrefusion.serving import create_app
    from serving_helpers import LoopbackServer

    with LoopbackServer(create_app(english_model)) as url, httpx2.Client(base_url=url, timeout=60,
                                                                         trust_env=False) as client:
        info = client.get("/model").json()
        assert info["languages"] == {"text": ["en"]} and info["scripts"] == {"text": ["Latin"]}
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "warnings" in schema["Prediction"]["required"] and "InputWarning" in schema
        r = client.post("/predict", data={"plot": KOREAN})
        assert r.status_code == 200 and r.json()["warnings"][0]["code"] == "unreadable_script"
        assert client.post("/predict", data={"plot": "space ship alien"}).json()["warnings"] == []
        r = client.post("/predict/batch", json={"movies": [{"id": "ko", "plot": KOREAN}, {"plot": "a funny game"}]})
        assert [len(x["warnings"]) for x in r.json()["results"]] == [1, 0]
        _page_shows_warning(url)


def _page_shows_warning(url: str) -> None:
    from test_serve import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('languages-hint').textContent.includes('Latin')")
        page.fill("#plot", KOREAN)
        page.click("#submit")
        page.wait_for_selector("body[data-state=explained]", timeout=60_000)
        assert page.locator("#warnings").is_visible() and "Hangul" in page.inner_text("#warnings")
        page.fill("#plot", "A ghost haunts a dark house at night.")
        page.click("#submit")
        page.wait_for_function("document.body.dataset.state === 'explained' && "
                               "document.getElementById('warnings').hidden")
        browser.close()
