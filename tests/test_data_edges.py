"""Input edges of the data layer (issue 27, items 13-17): invisible plots, ids that differ only by Unicode form,
catalog posters outside the catalog's folder, an over-large split.json, posters over PIL's own pixel limit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from genrefusion.data.loader import load_catalog, load_mmimdb
from genrefusion.data.summary import data_summary
from genrefusion.data.visible import is_blank
from genrefusion.inference.inputs import InputError, check_plot

INVISIBLE_PLOTS = ("\u200b", "\u200b\u200c\u200d\u2060", "\ufeff \u200b\n", "\u00ad\u180e", "\u3164\u2800",
                   "\U000e0041\U000e0042", "\x00\x1b")


def _jpeg(path: Path, size=(40, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path, "JPEG")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _kinds(ds) -> dict:
    return dict(ds.report.skipped_by_kind())


def _messages(ds, kind: str) -> list[str]:
    return [str(p) for p in ds.report.problems if p.kind == kind]


# -- 13: a plot with no visible character is empty ------------------------------------------------------------------
@pytest.mark.parametrize("plot", INVISIBLE_PLOTS)
def test_an_invisible_plot_is_refused_with_the_message_of_a_blank_one(plot):
    with pytest.raises(InputError) as blank:
        check_plot("   ")
    with pytest.raises(InputError) as invisible:
        check_plot(plot)
    assert str(invisible.value) == str(blank.value) == "plot: is empty"
    assert invisible.value.status == 422 and invisible.value.field == "plot"


def test_visible_text_around_invisible_characters_is_a_plot():
    for plot in ("\u200bA ghost\u200b", "é", "\u0301", "\U0001f47b", "x\u200b"):
        assert not is_blank(plot) and check_plot(plot) == plot
    with pytest.raises(InputError, match="over the limit"):  # an over-long invisible plot: its length is the reason
        check_plot("\u200b" * 30, max_chars=20)


def test_an_invisible_plot_is_a_missing_plot_in_a_catalog_and_counted(tmp_path):
    _jpeg(tmp_path / "p.jpg")
    cat = _jsonl(tmp_path / "c.jsonl", [
        {"id": "poster-and-zwsp", "plot": "\u200b\u2060", "poster": "p.jpg", "genres": "Drama"},
        {"id": "zwsp-only", "plot": "\u200b", "genres": "Drama"},  # no plot, no poster: skipped
        {"id": "paragraphs", "plot": ["\ufeff", "\u200b \u200b"], "genres": "Drama"},  # skipped as well
        {"id": "fine", "plot": "\u200bA real plot.", "genres": "Comedy"},
    ])
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["poster-and-zwsp", "fine"]
    assert ds.movies[0].plot is None and not ds.movies[0].has_plot
    assert _kinds(ds) == {"bad_field": 2}
    assert all("neither a plot nor a poster" in m for m in _messages(ds, "bad_field"))
    row = data_summary(ds)["splits"]["total"]
    assert (row["with_plot"], row["poster_only"], row["plot_only"]) == (1, 1, 1)
    assert data_summary(ds)["skipped"] == {"bad_field": 2}


def test_an_invisible_plot_is_a_missing_plot_in_an_mmimdb_folder(tmp_path):
    (tmp_path / "dataset").mkdir()
    for mid, plot in (("1", ["\u200b"]), ("2", "A plot."), ("3", ["\u2060", " "])):
        (tmp_path / "dataset" / f"{mid}.json").write_text(json.dumps({"plot": plot, "genres": ["Drama"]}))
    _jpeg(tmp_path / "dataset" / "3.jpeg")
    ds = load_mmimdb(tmp_path)
    assert {m.id: m.has_plot for m in ds.movies} == {"2": True, "3": False}
    assert _kinds(ds) == {"bad_field": 1}


def test_predict_refuses_an_invisible_plot_like_a_blank_one(serving_cli, trained_run, capsys):
    model = str(trained_run / "model")
    errors = []
    for plot in ("   ", "\u200b\u200b"):
        assert serving_cli(["predict", "--model", model, "--plot", plot]) == 2
        errors.append(capsys.readouterr().err.strip())
    assert errors[0] == errors[1] == "error: plot: is empty"
