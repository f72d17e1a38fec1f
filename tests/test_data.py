"""The data layer on the real sample and on every kind of bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genrefusion.cli.commands import main
from genrefusion.data.loader import DataError, load_catalog, load_dataset, load_mmimdb
from genrefusion.data.labels import GENRES
from genrefusion.data.splits import stratified_split
from genrefusion.data.summary import data_summary


# -- the real sample -------------------------------------------------------------------------------------------
def test_sample_counts_match_its_readme(sample_root):
    ds = load_dataset(sample_root)
    assert len(ds) == 3216
    assert sum(m.has_poster for m in ds.movies) == 1305
    assert {s: len(ix) for s, ix in ds.splits.items()} == {"train": 761, "dev": 2078, "test": 377}
    assert all(m.has_plot for m in ds.movies)
    assert not ds.report.problems and not ds.report.excluded_no_label
    y = ds.labels()
    assert y.shape == (3216, 23)
    counts = dict(zip(GENRES, y.sum(axis=0).astype(int)))
    assert counts["Drama"] == 1923 and counts["Short"] == 42 and counts["Film-Noir"] == 59


def test_modalities_both_and_stratified_split(sample_root):
    ds = load_dataset(sample_root, split="stratified", modalities="both")
    assert len(ds) == 1305 and all(m.has_poster and m.has_plot for m in ds.movies)
    sizes = {s: len(ix) for s, ix in ds.splits.items()}
    assert sum(sizes.values()) == 1305
    assert abs(sizes["test"] / 1305 - 0.3) < 0.03 and abs(sizes["dev"] / 1305 - 0.1) < 0.03
    all_idx = [i for ix in ds.splits.values() for i in ix]
    assert len(all_idx) == len(set(all_idx))  # disjoint
    again = load_dataset(sample_root, split="stratified", modalities="both")
    assert again.splits == ds.splits and again.fingerprint() == ds.fingerprint()
    other = load_dataset(sample_root, split="stratified", modalities="both", seed=7)
    assert other.splits != ds.splits


def test_stratified_split_keeps_rare_genres_in_every_split():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 5)) < [0.6, 0.3, 0.1, 0.05, 0.02]).astype(int)
    y[y.sum(axis=1) == 0, 0] = 1
    splits = stratified_split(y, seed=3)
    for label in range(5):
        members = set(np.nonzero(y[:, label])[0])
        for s in ("train", "dev", "test"):
            assert members & set(splits[s]), (label, s)
    # the rarest genre is split first, with ceil() for test and dev
    rare = np.nonzero(y[:, 4])[0]
    assert sum(i in splits["test"] for i in rare) == int(np.ceil(len(rare) * 0.3))


def test_summary_command_prints_counts_and_table(sample_root, capsys):
    assert main(["data", "summary", str(sample_root)]) == 0
    out = capsys.readouterr().out
    assert "3,216" in out and "1,305" in out and "Drama" in out and "1,923" in out
    assert main(["data", "summary", str(sample_root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["splits"]["total"] == {"movies": 3216, "with_poster": 1305, "with_plot": 3216, "both": 1305,
                                    "poster_only": 0, "plot_only": 1911}
    assert s["genres"]["Western"] == {"train": 19, "dev": 57, "test": 11, "total": 87}


# -- bad input -------------------------------------------------------------------------------------------------
def _jpeg(path: Path, color=(200, 30, 30)) -> None:
    Image.new("RGB", (40, 60), color).save(path, "JPEG")


@pytest.fixture
def broken_root(tmp_path):
    """A tiny MM-IMDb folder with one good movie and one of every kind of bad input."""
    root = tmp_path / "mm"
    d = root / "dataset"
    d.mkdir(parents=True)

    def movie(mid, record, poster=True):
        (d / f"{mid}.json").write_text(json.dumps(record))
        if poster:
            _jpeg(d / f"{mid}.jpeg")

    movie("0000001", {"plot": ["A good movie.", "Second paragraph."], "genres": ["Drama", "Comedy"]})
    movie("0000002", {"plot": ["No poster here."], "genres": ["Horror", "Reality-TV"]}, poster=False)
    movie("0000003", {"plot": ["Only dropped genres."], "genres": ["News", "Talk-Show"]})
    (d / "0000004.json").write_text('{"plot": ["broken", "genres": [}')  # malformed JSON
    (d / "0000005.json").write_bytes(b'{"plot": ["caf\xe9"], "genres": ["Drama"]}')  # latin-1, not UTF-8
    movie("0000006", {"plot": ["Truncated poster."], "genres": ["Drama"]}, poster=False)
    _jpeg(d / "0000006.jpeg")
    data = (d / "0000006.jpeg").read_bytes()
    (d / "0000006.jpeg").write_bytes(data[: len(data) // 2])
    movie("0000007", {"plot": ["Zero-byte poster."], "genres": ["Drama"]}, poster=False)
    (d / "0000007.jpeg").write_bytes(b"")
    (d / "0000008.json").write_bytes(b"")  # zero-byte JSON
    movie("0000009", {"plot": ["Garbage poster."], "genres": ["Drama"]}, poster=False)
    (d / "0000009.jpeg").write_bytes(b"this is not a jpeg at all" * 10)
    movie("0000010", {"plot": [], "genres": ["War"]})  # poster only: kept, text masked
    split = {"train": ["0000001", "0000002", "0000003", "0000004", "0000005"],
             "val": ["0000006", "0000007", "0000008", "0000009", "0000010"],
             "test": ["0000011"]}  # listed, no file
    (root / "split.json").write_text(json.dumps(split))
    return root


def test_every_bad_input_is_skipped_counted_and_named(broken_root):
    ds = load_mmimdb(broken_root)
    assert [m.id for m in ds.movies] == ["0000001", "0000002", "0000010"]
    kinds = {p.movie_id: p.kind for p in ds.report.problems}
    assert kinds == {"0000004": "malformed_json", "0000005": "not_utf8", "0000006": "bad_poster",
                     "0000007": "empty_file", "0000008": "empty_file", "0000009": "bad_poster",
                     "0000011": "missing_file"}
    for p in ds.report.problems:  # every message names the file
        assert p.path.endswith((".json", ".jpeg")) and p.movie_id in p.path
    assert ds.report.dropped_genres == {"Reality-TV": 1, "News": 1, "Talk-Show": 1}
    assert ds.report.excluded_no_label == ["0000003"]
    m1, m2, m10 = ds.movies
    assert m1.plot == "A good movie. Second paragraph." and m1.genres == ("Drama", "Comedy")
    assert m2.has_plot and not m2.has_poster
    assert m10.has_poster and not m10.has_plot
    assert ds.splits == {"train": [0, 1], "dev": [2], "test": []}  # `val` accepted for dev
    s = data_summary(ds)
    assert s["skipped"] == {"malformed_json": 1, "not_utf8": 1, "bad_poster": 2, "empty_file": 2, "missing_file": 1}
    assert s["excluded_no_label"] == 1 and s["splits"]["total"]["poster_only"] == 1


@pytest.mark.parametrize("bad", ["0000004", "0000005", "0000006", "0000007", "0000008", "0000009", "0000011"])
def test_strict_mode_raises_naming_the_file(broken_root, bad):
    # keep only the good movie and one bad one, so the error must come from that one
    split = {"train": ["0000001", bad], "dev": [], "test": []}
    (broken_root / "split.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match=bad):
        load_mmimdb(broken_root, strict=True)
    assert len(load_mmimdb(broken_root).movies) == 1


def test_summary_cli_lists_problems_and_strict_exits_nonzero(broken_root, capsys):
    assert main(["data", "summary", str(broken_root)]) == 0
    out = capsys.readouterr().out
    assert "Skipped (bad input): 7 (" in out and "0000005.json: not valid UTF-8" in out
    assert "Excluded movies left with no benchmark genre: 1" in out
    assert main(["data", "summary", str(broken_root), "--strict"]) == 2
    assert "error:" in capsys.readouterr().err


def test_longest_plot_mode(broken_root):
    ds = load_mmimdb(broken_root, plot_mode="longest")
    assert ds.movies[0].plot == "Second paragraph."


def test_not_an_mmimdb_folder(tmp_path):
    with pytest.raises(DataError, match="no dataset/ subfolder"):
        load_mmimdb(tmp_path)


# -- catalogs --------------------------------------------------------------------------------------------------
def test_csv_catalog_with_relative_posters_and_unknown_column(tmp_path):
    (tmp_path / "img").mkdir()
    _jpeg(tmp_path / "img" / "a.jpg")
    cat = tmp_path / "movies.csv"
    cat.write_text("id,plot,genres,poster,rating\n"
                   "a,A spy story.,Action|Thriller,img/a.jpg,7\n"
                   "b,A love story.,Romance|Soap,,5\n"
                   "c,No genres we know.,Soap,,1\n"
                   "d,Missing poster file.,Drama,img/none.jpg,3\n", encoding="utf-8")
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["a", "b"]
    assert ds.movies[0].poster == tmp_path / "img" / "a.jpg" and ds.movies[0].genres == ("Thriller", "Action")
    assert not ds.movies[1].has_poster
    kinds = sorted(p.kind for p in ds.report.problems)
    assert kinds == ["missing_file", "unknown_column"]
    assert "rating" in str(ds.report.problems[0]) or "rating" in str(ds.report.problems[1])
    with pytest.raises(DataError, match="rating"):
        load_catalog(cat, strict=True)
    with pytest.raises(DataError, match="no official split"):
        load_dataset(cat)
    assert load_dataset(cat, split="stratified").split_mode == "stratified"


def test_jsonl_catalog_lists_and_splits(tmp_path):
    cat = tmp_path / "movies.jsonl"
    rows = [{"id": "x", "plot": "A western.", "genres": ["Western"], "split": "train"},
            {"id": "y", "plot": "A horror.", "genres": ["Horror"], "split": "val"},
            {"id": "z", "plot": "A war film.", "genres": "War|History", "split": "test"}]
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json}\n", encoding="utf-8")
    ds = load_dataset(cat)
    assert ds.splits == {"train": [0], "dev": [1], "test": [2]}
    assert ds.movies[2].genres == ("War", "History")
    assert [p.kind for p in ds.report.problems] == ["malformed_json"]
    assert ":4" in ds.report.problems[0].path  # names the line


def test_non_utf8_catalog(tmp_path):
    cat = tmp_path / "bad.csv"
    cat.write_bytes(b"id,plot,genres\n1,caf\xe9,Drama\n")
    with pytest.raises(DataError, match="bad.csv: not valid UTF-8"):
        load_catalog(cat)
