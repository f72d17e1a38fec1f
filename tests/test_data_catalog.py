"""Users' CSV / JSONL catalogs on hostile input: wrong types, duplicated ids, odd separators and encodings."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from genrefusion.data.loader import DataError, load_catalog, load_dataset


def _jsonl(path: Path, rows: list, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def _kinds(ds) -> dict:
    return dict(ds.report.skipped_by_kind())


ROW = {"id": "a", "plot": "A plot.", "genres": ["Drama"]}


# -- wrong types -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("plot", 12345), ("plot", {"k": "v"}), ("genres", {"Drama": True}), ("genres", 3), ("poster", 7),
    ("poster", ["a.jpg"]), ("split", 1), ("split", ["train"]), ("title", 1917), ("year", "soon"), ("year", 2.5),
    ("id", 114323), ("id", ["a"]), ("id", None),
])
def test_jsonl_wrong_field_types_are_named_and_the_row_skipped(tmp_path, field, value):
    cat = _jsonl(tmp_path / "c.jsonl", [{**ROW, "id": "ok"}, {**ROW, "id": "b", field: value}])
    ds = load_catalog(cat)  # no TypeError, no silently ignored poster
    assert [m.id for m in ds.movies] == ["ok"]
    assert _kinds(ds) == {"bad_field": 1}
    (p,) = ds.report.problems
    assert p.path.endswith("c.jsonl:2") and f"`{field}`" in p.message
    with pytest.raises(DataError, match=rf"c\.jsonl:2: .*`{field}`"):
        load_catalog(cat, strict=True)


def test_jsonl_plot_as_a_list_of_paragraphs_and_a_year_as_an_int_are_fine(tmp_path):
    cat = _jsonl(tmp_path / "c.jsonl", [{**ROW, "plot": ["One.", "Two."], "year": 2006, "title": "괴물"}])
    ds = load_catalog(cat, strict=True)
    assert ds.movies[0].plot == "One. Two." and ds.movies[0].title == "괴물"


def test_a_jsonl_plot_holding_a_unicode_line_separator_is_one_row(tmp_path):
    # str.splitlines() also splits at U+2028, U+0085, \x0c ...; a JSONL file is split at \n only
    cat = _jsonl(tmp_path / "c.jsonl", [{**ROW, "plot": "First\u2028second\x85third\x0cfourth."}, {**ROW, "id": "b"}])
    ds = load_catalog(cat, strict=True)
    assert [m.id for m in ds.movies] == ["a", "b"] and "\u2028" in ds.movies[0].plot


def test_jsonl_with_a_truncated_last_line(tmp_path):
    cat = _jsonl(tmp_path / "c.jsonl", [ROW], tail='{"id": "b", "plot": "cut of')
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["a"] and _kinds(ds) == {"malformed_json": 1}
    assert ds.report.problems[0].path.endswith(":2") and "truncated" in ds.report.problems[0].message


# -- duplicated ids ----------------------------------------------------------------------------------------------
def test_catalog_duplicate_ids_follow_the_split_rules(tmp_path):
    rows = [{**ROW, "id": "a", "split": "train"}, {**ROW, "id": "b", "split": "train"},
            {**ROW, "id": "a", "split": "train", "plot": "Another plot."},  # same split: used once
            {**ROW, "id": "c", "split": "train"}, {**ROW, "id": "c", "split": "test"},  # two splits: neither
            {**ROW, "id": "D", "split": "dev"}, {**ROW, "id": "d", "split": "test"},  # only case differs
            {**ROW, "id": "e", "split": "test"}]
    ds = load_dataset(_jsonl(tmp_path / "c.jsonl", rows))
    assert [m.id for m in ds.movies] == ["a", "b", "e"] and ds.movies[0].plot == "A plot."
    assert ds.splits == {"train": [0, 1], "dev": [], "test": [2]}
    assert _kinds(ds) == {"duplicate_id": 1, "ambiguous_split": 2}
    dup = next(p for p in ds.report.problems if p.kind == "duplicate_id")
    assert dup.path.endswith("c.jsonl:3") and "line 1" in dup.message


def test_catalog_duplicate_ids_without_a_split_column(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text("id,plot,genres\na,One.,Drama\na,Two.,Comedy\nb,Three.,War\n", encoding="utf-8")
    ds = load_dataset(cat, split="stratified")
    assert [m.id for m in ds.movies] == ["a", "b"] and ds.movies[0].genres == ("Drama",)
    assert _kinds(ds) == {"duplicate_id": 1}


def test_a_split_column_filled_on_some_rows_only(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text("id,plot,genres,split\na,One.,Drama,train\nb,Two.,Drama,\nc,Three.,War,test\n", encoding="utf-8")
    ds = load_dataset(cat)  # b would silently be in no split: it is named and counted instead
    assert [m.id for m in ds.movies] == ["a", "c"] and _kinds(ds) == {"no_split": 1}
    assert ds.report.problems[0].path.endswith("c.csv:3")


# -- the file's structure ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sep,suffix", [(";", ".csv"), ("\t", ".csv"), ("\t", ".tsv")])
def test_semicolon_and_tab_separated_catalogs_are_read(tmp_path, sep, suffix):
    cat = tmp_path / f"c{suffix}"
    cat.write_text(sep.join(["id", "plot", "genres", "split"]) + "\n"
                   + sep.join(["a", "A plot, with commas.", "Drama|War", "train"]) + "\n"
                   + sep.join(["b", "Another.", "Comedy", "test"]) + "\n", encoding="utf-8")
    ds = load_dataset(cat, strict=True)
    assert [m.id for m in ds.movies] == ["a", "b"] and ds.movies[0].plot == "A plot, with commas."
    assert ds.movies[0].genres == ("Drama", "War") and ds.splits == {"train": [0], "dev": [], "test": [1]}


def test_missing_columns_are_named_with_the_columns_found(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text("id,plot,tags\na,One.,Drama\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.csv: no `genres` column \(columns found: 'id', 'plot', 'tags'\)"):
        load_catalog(cat)
    assert len(load_catalog(cat, require_labels=False).movies) == 1  # predict needs no labels
    cat.write_text("name|plot|genres\na|One.|Drama\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no `id` column \(columns found: 'name\|plot\|genres'\).*separator"):
        load_catalog(cat)
    cat.write_text("id,genres,title\na,Drama,T\n", encoding="utf-8")
    with pytest.raises(DataError, match="neither a `plot` nor a `poster` column"):
        load_catalog(cat)


def test_every_row_skipped_says_so_with_the_top_reasons(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text("id,plot,genres,poster\na,One.,Soap,\nb,Two.,Drama,missing.jpg\nc,Three.,Drama,gone.jpg\n",
                   encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_dataset(cat, split="stratified")
    msg = str(e.value)
    assert "every movie was skipped" in msg and "missing_file 2" in msg and "no benchmark genre 1" in msg
    assert "missing.jpg" in msg


@pytest.mark.parametrize("content,message", [
    (b"", "empty"), (b"  \n\n", "empty"), (b"id,plot,genres\n", "no rows"), (b"id,plot,genres\r\n\r\n", "no rows"),
    (b"id,plot,genres,plot\na,b,Drama,c\n", "column 'plot' appears 2 times"),
    (b"id,plot,genres\na,caf\xe9,Drama\n", r"not valid UTF-8 .*line 2"),
])
def test_broken_csv_files_are_clear_errors(tmp_path, content, message):
    cat = tmp_path / "c.csv"
    cat.write_bytes(content)
    with pytest.raises(DataError, match=rf"c\.csv: .*{message}"):
        load_catalog(cat)


def test_empty_jsonl_and_a_catalog_that_is_a_directory(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(b"\n\n")
    with pytest.raises(DataError, match="c.jsonl: .*empty"):
        load_catalog(tmp_path / "c.jsonl")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DataError, match="d.csv"):
        load_catalog(tmp_path / "d.csv")


def test_bom_and_crlf_line_endings(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_bytes("id,plot,genres,split\r\na,\"Two\r\nlines.\",Drama,train\r\nb,Plot.,War,test\r\n"
                    .encode("utf-8-sig"))
    ds = load_dataset(cat, strict=True)
    assert [m.id for m in ds.movies] == ["a", "b"] and ds.splits == {"train": [0], "dev": [], "test": [1]}
    assert ds.movies[0].plot == "Two\r\nlines."


def test_rows_with_the_wrong_number_of_fields(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text("id,plot,genres\na,One.,Drama\nb,Two, with a comma,Drama\nc,Three.\nd,Four.,War,,\n",
                   encoding="utf-8")
    ds = load_catalog(cat)  # extra empty trailing fields (spreadsheet exports) are harmless
    assert [m.id for m in ds.movies] == ["a", "d"] and _kinds(ds) == {"bad_field": 2}
    assert [Path(p.path).name for p in ds.report.problems] == ["c.csv:3", "c.csv:4"]
    assert "4 fields" in ds.report.problems[0].message and "the header has 3" in ds.report.problems[0].message


def test_an_unnamed_index_column_and_header_case(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text(",ID,Plot,Genres\n0,a,One.,Drama\n", encoding="utf-8")  # what pandas' to_csv writes
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["a"] and ds.movies[0].plot == "One."
    assert [p.kind for p in ds.report.problems] == ["unknown_column"]


def test_catalog_ids_are_checked_like_file_names(tmp_path):
    cat = _jsonl(tmp_path / "c.jsonl", [ROW, {**ROW, "id": "x\x00y"}, {**ROW, "id": "../b"},
                                        {**ROW, "id": "tmdb:603"}])  # ':' is fine (the Korean catalog's ids)
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["a", "tmdb:603"] and _kinds(ds) == {"bad_id": 2}


def test_a_poster_that_is_a_directory_or_huge(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (30, 40)).save(buf, "JPEG")
    (tmp_path / "ok.jpg").write_bytes(buf.getvalue())
    cat = _jsonl(tmp_path / "c.jsonl", [{**ROW, "poster": "ok.jpg"}, {**ROW, "id": "b", "poster": "dir.jpg"}])
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["a"] and _kinds(ds) == {"unreadable": 1}
    assert ds.report.problems[0].path.endswith("dir.jpg") and "directory" in ds.report.problems[0].message


def test_years_as_spreadsheets_and_pandas_write_them(tmp_path):
    cat = _jsonl(tmp_path / "c.jsonl", [{**ROW, "year": 1999.0}, {**ROW, "id": "b", "year": "2001.0"},
                                        {**ROW, "id": "c", "year": " 2003 "}])
    assert len(load_catalog(cat, strict=True).movies) == 3


def test_a_csv_field_over_the_csv_size_limit_is_an_error_naming_the_line(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_text("id,plot,genres\na,One.,Drama\nb," + "x" * 200_000 + ",Drama\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.csv:3: .*field larger than field limit"):
        load_catalog(cat)


def test_a_poster_path_holding_a_nul_is_a_named_skip(tmp_path):
    cat = _jsonl(tmp_path / "c.jsonl", [ROW, {**ROW, "id": "b", "poster": "x\u0000.jpg"}])
    ds = load_catalog(cat)
    assert [m.id for m in ds.movies] == ["a"] and _kinds(ds) == {"unreadable": 1}
    assert "\x00" not in str(ds.report.problems[0])


def test_a_catalog_to_predict_ignores_its_split_column(tmp_path):
    # predict reads catalogs without labels; which split a row was in does not matter there
    cat = tmp_path / "c.csv"
    cat.write_text("id,plot,split\na,One.,train\nb,Two.,\nc,Three.,test\nc,Three.,train\n", encoding="utf-8")
    ds = load_catalog(cat, require_labels=False)
    assert [m.id for m in ds.movies] == ["a", "b", "c"] and _kinds(ds) == {"duplicate_id": 1}
