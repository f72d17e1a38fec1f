"""Input edges of the data layer (issue 27, items 13-17): invisible plots, ids that differ only by Unicode form,
catalog posters outside the catalog's folder, an over-large split.json, posters over PIL's own pixel limit."""
from __future__ import annotations

import io
import json
import os
import struct
import time
import unicodedata
import zlib
from pathlib import Path

import pytest
from PIL import Image

from genrefusion.cli.commands import build_parser, main
from genrefusion.data.catalog import ALLOW_OUTSIDE_POSTERS_ENV, outside_posters_allowed
from genrefusion.data.loader import DataError, MovieDataset, load_catalog, load_dataset, load_mmimdb
from genrefusion.data.posters import PosterError, decode_poster
from genrefusion.data.records import LoadReport, Movie, id_key
from genrefusion.data.summary import data_summary
from genrefusion.data.visible import is_blank
from genrefusion.inference.inputs import InputError, InputTooLarge, check_plot
from genrefusion.inference.inputs import decode_poster as decode_upload

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


# -- 14: ids compared after Unicode normalisation -------------------------------------------------------------------
NFC, NFD = unicodedata.normalize("NFC", "été"), unicodedata.normalize("NFD", "été")


def test_id_key_normalises_form_width_and_case():
    assert NFC != NFD and id_key(NFC) == id_key(NFD)
    assert id_key("\uff11\uff12\uff13") == id_key("123")  # full-width digits
    assert id_key("\uff34\uff34\uff10\uff11") == id_key("tt01") == id_key("TT01")
    assert id_key(" tt01 ") == id_key("tt01")
    assert id_key("tt01") != id_key("tt1")


def test_catalog_ids_differing_only_by_unicode_form_are_duplicates(tmp_path):
    cat = _jsonl(tmp_path / "c.jsonl", [
        {"id": NFC, "plot": "a", "genres": "Drama"}, {"id": NFD, "plot": "b", "genres": "Drama"},
        {"id": "123", "plot": "c", "genres": "Drama"}, {"id": "\uff11\uff12\uff13", "plot": "d", "genres": "Drama"},
    ])
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == [NFC, "123"]
    assert _kinds(ds) == {"duplicate_id": 2}
    assert all("Unicode form" in m for m in _messages(ds, "duplicate_id"))


def test_an_id_in_two_splits_under_two_unicode_forms_reaches_neither(tmp_path):
    cat = _jsonl(tmp_path / "c.jsonl", [
        {"id": NFC, "plot": "a", "genres": "Drama", "split": "train"},
        {"id": NFD, "plot": "a", "genres": "Drama", "split": "test"},
        {"id": "x", "plot": "b", "genres": "Drama", "split": "train"},
        {"id": "y", "plot": "c", "genres": "Drama", "split": "test"},
    ])
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["x", "y"] and _kinds(ds) == {"ambiguous_split": 1}


def test_mmimdb_split_listing_one_movie_in_nfc_and_nfd_is_ambiguous(tmp_path):
    (tmp_path / "dataset").mkdir()
    for mid in (NFC, NFD, "a", "b"):
        (tmp_path / "dataset" / f"{mid}.json").write_text(json.dumps({"plot": "p", "genres": ["Drama"]}))
    (tmp_path / "split.json").write_text(json.dumps({"train": [NFC, "a"], "dev": [], "test": [NFD, "b"]}))
    ds = load_mmimdb(tmp_path)
    assert sorted(m.id for m in ds.movies) == ["a", "b"] and _kinds(ds) == {"ambiguous_split": 1}


def test_the_dataset_invariant_compares_normalised_ids(tmp_path):
    movies = [Movie(NFC, "a", ("Drama",), None), Movie(NFD, "b", ("Drama",), None)]
    with pytest.raises(AssertionError, match="appears 2 times"):
        MovieDataset(movies, {}, LoadReport("x"), tmp_path, "none")


# -- 15: a catalog's posters stay inside its folder -----------------------------------------------------------------
@pytest.fixture
def outside_catalog(tmp_path):
    """cat/c.jsonl whose posters are: inside, '../outside.jpg', an absolute path, '../../..' to /etc/passwd, and a
    symlink inside the folder that leads outside; plus a symlink that stays inside."""
    folder = tmp_path / "cat"
    _jpeg(folder / "posters" / "in.jpg")
    outside = _jpeg(tmp_path / "outside.jpg")
    (folder / "link.jpg").symlink_to(outside)
    (folder / "inner-link.jpg").symlink_to(folder / "posters" / "in.jpg")
    climb = "../" * (len(folder.resolve().parts) + 2) + "etc/passwd"
    rows = [("inside", "posters/in.jpg"), ("parent", "../outside.jpg"), ("absolute", "/etc/hostname"),
            ("climb", climb), ("symlink", "link.jpg"), ("inner-symlink", "inner-link.jpg"),
            ("absolute-inside", str(folder / "posters" / "in.jpg"))]
    return _jsonl(folder / "c.jsonl", [{"id": i, "poster": p, "genres": "Drama"} for i, p in rows])


def test_posters_outside_the_catalogs_folder_are_skipped_counted_and_named(outside_catalog):
    ds = load_catalog(outside_catalog)
    assert sorted(m.id for m in ds.movies) == ["absolute-inside", "inner-symlink", "inside"]
    assert _kinds(ds) == {"poster_outside": 4}
    named = {p.movie_id: str(p) for p in ds.report.problems}
    assert set(named) == {"parent", "absolute", "climb", "symlink"}
    for message in named.values():
        assert "outside the catalog's folder" in message and "--allow-outside-posters" in message
    assert "resolves to /etc/passwd" in named["climb"] and "resolves to /etc/hostname" in named["absolute"]
    assert "through a symlink" in named["symlink"] and "through a symlink" not in named["parent"]
    summary = data_summary(ds)
    assert summary["skipped"] == {"poster_outside": 4} and len(summary["problems"]) == 4
    with pytest.raises(DataError, match="outside the catalog's folder"):
        load_catalog(outside_catalog, strict=True)


def test_posters_outside_are_read_when_the_user_opts_in(outside_catalog, monkeypatch):
    def check(ds):
        assert {"parent", "symlink", "inside"} <= {m.id for m in ds.movies}
        assert "poster_outside" not in _kinds(ds)
        assert {p.movie_id: p.kind for p in ds.report.problems} == {"absolute": "bad_poster", "climb": "bad_poster"}

    check(load_catalog(outside_catalog, allow_outside_posters=True))
    with outside_posters_allowed():
        check(load_catalog(outside_catalog))
        assert _kinds(load_catalog(outside_catalog, allow_outside_posters=False)) == {"poster_outside": 4}
    assert _kinds(load_catalog(outside_catalog)) == {"poster_outside": 4}  # the block's setting ended with it
    monkeypatch.setenv(ALLOW_OUTSIDE_POSTERS_ENV, "1")
    check(load_dataset(outside_catalog, split="stratified"))


def test_the_cli_confines_posters_unless_told_otherwise(outside_catalog, capsys):
    assert main(["data", "summary", str(outside_catalog), "--split", "stratified"]) == 0
    out = capsys.readouterr().out
    assert "poster_outside 4" in out and "--allow-outside-posters" in out
    assert main(["data", "summary", str(outside_catalog), "--split", "stratified", "--allow-outside-posters"]) == 0
    out = capsys.readouterr().out
    assert "poster_outside" not in out and "bad_poster 2" in out
    assert main(["data", "summary", str(outside_catalog), "--split", "stratified"]) == 0  # not left switched on
    assert "poster_outside 4" in capsys.readouterr().out


def test_every_command_that_reads_data_takes_the_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("features", "train", "grid", "evaluate", "robustness", "distill", "export", "demo", "predict"):
        assert "--allow-outside-posters" in sub[name]._option_string_actions, name
    data = next(a for a in sub["data"]._actions if a.dest == "data_command").choices
    assert "--allow-outside-posters" in data["summary"]._option_string_actions


def test_predict_input_confines_posters_unless_told_otherwise(serving_cli, trained_run, outside_catalog, capsys):
    model = str(trained_run / "model")
    assert serving_cli(["predict", "--model", model, "--input", str(outside_catalog)]) == 0
    out, err = capsys.readouterr()
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == ["absolute-inside", "inner-symlink", "inside"]
    assert err.count("outside the catalog's folder") == 4 and "--allow-outside-posters" in err
    assert serving_cli(["predict", "--model", model, "--input", str(outside_catalog), "--allow-outside-posters"]) == 0
    out, err = capsys.readouterr()
    assert {"parent", "symlink"} <= {json.loads(line)["id"] for line in out.splitlines()}
    assert "outside the catalog's folder" not in err


# -- 16: split.json has a size limit --------------------------------------------------------------------------------
def test_an_over_large_split_json_is_refused_unread_naming_the_file_and_the_limit(tmp_path):
    (tmp_path / "dataset").mkdir()
    split = tmp_path / "split.json"
    with open(split, "wb") as fh:  # sparse: 42 MB on paper, nothing on disk
        fh.truncate(42 * 2**20)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_mmimdb(tmp_path)
    assert time.perf_counter() - t0 < 2
    message = str(e.value)
    assert str(split) in message and "44,040,192 bytes" in message and "over the limit of 8,388,608" in message


def test_a_split_json_under_the_limit_is_read(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "a.json").write_text(json.dumps({"plot": "p", "genres": ["Drama"]}))
    ids = [f"{i:0190d}" for i in range(20_000)]  # ~4 MB (long ids: few lookups), far above MM-IMDb's 0.5 MB
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a"], "dev": [], "test": ids}))
    assert os.path.getsize(tmp_path / "split.json") > 3_800_000
    ds = load_mmimdb(tmp_path)
    assert [m.id for m in ds.movies] == ["a"] and _kinds(ds) == {"missing_file": 20_000}


# -- 17: a poster over PIL's own pixel limit gets the project's message ---------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG declaring width x height pixels (1-bit grey): what PIL's Image.open reads."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_a_poster_over_pils_own_limit_is_refused_in_the_projects_words():
    bomb = _png_header(20_000, 20_000)  # 400 megapixels: over PIL's 179M, which PIL checks inside Image.open
    with pytest.raises(PosterError) as e:
        decode_poster(bomb, "bomb.png")
    assert e.value.kind == "too_large"
    assert str(e.value) == ("bomb.png: image is 20000x20000 = 400,000,000 pixels, over the limit of 40,000,000 "
                            "(refused as a possible decompression bomb)")
    assert "DOS attack" not in str(e.value)
    under_pils = _png_header(8_000, 8_000)  # 64 megapixels: refused by our own check, in the same words
    with pytest.raises(PosterError, match=r"image is 8000x8000 = 64,000,000 pixels, over the limit of 40,000,000"):
        decode_poster(under_pils, "big.png")
    with pytest.raises(InputTooLarge, match="image is 20000x20000") as e:  # the service: 413, same words
        decode_upload(bomb)
    assert e.value.status == 413 and "DOS attack" not in str(e.value)


def test_a_gif_over_pils_own_limit_names_its_size():
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF")
    gif = bytearray(buf.getvalue())
    gif[6:10] = struct.pack("<HH", 60_000, 60_000)  # the logical screen size
    with pytest.raises(PosterError, match=r"image is 60000x60000 = 3,600,000,000 pixels, over the limit") as e:
        decode_poster(bytes(gif), "bomb.gif")
    assert "DOS attack" not in str(e.value)


def test_a_catalog_poster_over_pils_own_limit_is_a_poster_too_large_skip(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header(30_000, 30_000))
    _jpeg(tmp_path / "ok.jpg")
    cat = _jsonl(tmp_path / "c.jsonl", [{"id": "bomb", "poster": "bomb.png", "genres": "Drama"},
                                        {"id": "ok", "poster": "ok.jpg", "genres": "Drama"}])
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["ok"] and _kinds(ds) == {"poster_too_large": 1}
    (message,) = _messages(ds, "poster_too_large")
    assert "image is 30000x30000 = 900,000,000 pixels, over the limit of 40,000,000" in message
    assert "DOS attack" not in message
