"""The MM-IMDb reader on hostile input: wrong types, unsafe ids, duplicated and ambiguous ids, odd files.

Every case ends in a clear DataError or a skip that is counted by kind and names the file; none ends in a traceback,
a silent drop, or a movie used twice."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from genrefusion.cli.commands import main
from genrefusion.data.loader import DataError, MovieDataset, load_dataset, load_mmimdb
from genrefusion.data.summary import data_summary

GOOD = {"plot": ["A plot."], "genres": ["Drama"]}


def _jpeg_bytes(size=(40, 60)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_root(tmp_path: Path, movies: dict, split: dict | bytes | None, posters: dict | None = None) -> Path:
    """An MM-IMDb folder: movies = {id: record (JSON-encoded) or raw bytes}, split = split.json's content."""
    root = tmp_path / "mm"
    (root / "dataset").mkdir(parents=True)
    for mid, record in movies.items():
        data = record if isinstance(record, bytes) else json.dumps(record).encode()
        (root / "dataset" / f"{mid}.json").write_bytes(data)
    for name, data in (posters or {}).items():
        (root / "dataset" / name).write_bytes(data)
    if split is not None:
        (root / "split.json").write_bytes(split if isinstance(split, bytes) else json.dumps(split).encode())
    return root


def _kinds(ds) -> dict:
    return dict(ds.report.skipped_by_kind())


# -- wrong types -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("plot", 12345), ("plot", {"first": "para", "second": "para"}), ("plot", True), ("plot", ["ok", 3]),
    ("genres", 5), ("genres", {"Drama": 1}), ("genres", ["Drama", 3]), ("genres", [None]),
    ("title", 5), ("title", ["A", "B"]), ("year", "nineteen ninety"), ("year", 1999.5), ("year", True),
    ("year", [1999]),
])
def test_a_wrong_field_type_skips_the_movie_and_names_the_field(tmp_path, field, value):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": {**GOOD, field: value}},
                     {"train": ["0000001", "0000002"], "dev": [], "test": []})
    ds = load_mmimdb(root)  # no TypeError, no movie made of a dict's keys
    assert [m.id for m in ds.movies] == ["0000001"]
    assert _kinds(ds) == {"bad_field": 1}
    (p,) = ds.report.problems
    assert p.path.endswith("0000002.json") and f"`{field}`" in p.message
    with pytest.raises(DataError, match=rf"0000002\.json: .*`{field}`"):
        load_mmimdb(root, strict=True)


def test_null_title_and_year_are_fine_and_a_year_may_be_an_int(tmp_path):
    root = make_root(tmp_path, {"0000001": {**GOOD, "title": None, "year": None},
                                "0000002": {**GOOD, "title": "Heat", "year": 1995}},
                     {"train": ["0000001", "0000002"], "dev": [], "test": []})
    ds = load_mmimdb(root, strict=True)
    assert [m.title for m in ds.movies] == [None, "Heat"]


@pytest.mark.parametrize("content,what", [(b"[1, 2]", "list"), (b"42", "int"), (b'"a string"', "str"),
                                          (b"null", "null")])
def test_movie_json_that_is_not_an_object(tmp_path, content, what):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": content}, {"train": ["0000001", "0000002"],
                                                                       "dev": [], "test": []})
    ds = load_mmimdb(root)
    assert _kinds(ds) == {"malformed_json": 1}
    assert "expected a JSON object" in str(ds.report.problems[0]) and what in str(ds.report.problems[0])


def test_deeply_nested_json_and_duplicate_keys(tmp_path):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": b"[" * 100_000 + b"]" * 100_000,
                                "0000003": b'{"plot": ["a"], "genres": ["Drama"], "genres": ["Comedy"]}'},
                     {"train": ["0000001", "0000002", "0000003"], "dev": [], "test": []})
    ds = load_mmimdb(root)  # no RecursionError; a key given twice is not silently resolved to its last value
    assert [m.id for m in ds.movies] == ["0000001"]
    assert _kinds(ds) == {"malformed_json": 2}
    assert "genres" in str(ds.report.problems[1]) and "more than once" in str(ds.report.problems[1])


@pytest.mark.parametrize("value,shown", [(5, "int"), ("0114323", "str"), ({"a": 1}, "dict"), (None, "null"),
                                         ([1, 2], "int"), (["0000001", None], "null"), ([["0000001"]], "list")])
def test_a_split_value_that_is_not_a_list_of_ids_is_an_error_naming_the_key(tmp_path, value, shown):
    root = make_root(tmp_path, {"0000001": GOOD}, {"train": value, "dev": [], "test": ["0000001"]})
    with pytest.raises(DataError, match=rf"split\.json: `train` .*{shown}"):
        load_mmimdb(root)
    root2 = make_root(tmp_path / "b", {"0000001": GOOD}, {"train": ["0000001"], "val": value, "test": []})
    with pytest.raises(DataError, match=rf"split\.json: `val` .*{shown}"):
        load_mmimdb(root2)


def test_bad_split_json_through_the_cli_is_an_error_not_a_traceback(tmp_path, capsys):
    root = make_root(tmp_path, {"0000001": GOOD}, {"train": 5, "dev": [], "test": []})
    assert main(["data", "summary", str(root)]) == 2
    assert "split.json: `train`" in capsys.readouterr().err


def test_split_json_with_dev_and_val_extra_keys_or_not_an_object(tmp_path):
    both = make_root(tmp_path / "a", {"0000001": GOOD}, {"train": ["0000001"], "dev": [], "val": [], "test": []})
    with pytest.raises(DataError, match="both `dev` and `val`"):
        load_mmimdb(both)
    extra = make_root(tmp_path / "b", {"0000001": GOOD, "0000002": GOOD},
                      {"train": ["0000001"], "dev": [], "test": [], "extra": ["0000002"]})
    ds = load_mmimdb(extra)  # an unknown key is named (a notice, not a skipped movie); its ids are not loaded
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {}
    assert [p.kind for p in ds.report.problems] == ["unknown_key"] and "'extra'" in ds.report.problems[0].message
    assert data_summary(ds)["unlisted_files"] == 1
    with pytest.raises(DataError, match="extra"):
        load_mmimdb(extra, strict=True)
    for content in (b"[]", b"", b"{not json"):
        (extra / "split.json").write_bytes(content)
        with pytest.raises(DataError, match="split.json"):
            load_mmimdb(extra)


# -- ids: unsafe, duplicated, ambiguous --------------------------------------------------------------------------
def test_an_id_that_climbs_out_of_dataset_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.json").write_text(json.dumps({"plot": ["Secret."], "genres": ["Drama"]}))
    root = make_root(tmp_path, {"0000001": GOOD}, {"train": ["0000001", "../../outside/leak"], "dev": [],
                                                   "test": []})
    assert (root / "dataset" / "../../outside/leak.json").exists()  # the file the old reader loaded
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"bad_id": 1}
    assert "split.json" in ds.report.problems[0].path and "leak" in ds.report.problems[0].message
    with pytest.raises(DataError, match="outside/leak"):
        load_mmimdb(root, strict=True)


@pytest.mark.parametrize("bad", ["a/b", "a\\b", "..", ".hidden", "", "0000\x002", "00\n01", "\x1b[31m", "9" * 300,
                                 " 0000001", "/etc/passwd"])
def test_ids_that_are_not_plain_file_names_are_refused(tmp_path, bad):
    root = make_root(tmp_path, {"0000001": GOOD}, {"train": ["0000001", bad], "dev": [], "test": []})
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"bad_id": 1}
    assert "\x00" not in str(ds.report.problems[0]) and "\x1b" not in str(ds.report.problems[0])  # shown escaped


def test_symlinked_movie_files_are_fine(tmp_path):
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    (elsewhere / "m.json").write_text(json.dumps(GOOD))
    (elsewhere / "m.jpeg").write_bytes(_jpeg_bytes())
    root = make_root(tmp_path, {}, {"train": ["0000001"], "dev": [], "test": []})
    (root / "dataset" / "0000001.json").symlink_to(elsewhere / "m.json")
    (root / "dataset" / "0000001.jpeg").symlink_to(elsewhere / "m.jpeg")
    ds = load_mmimdb(root, strict=True)
    assert ds.movies[0].has_poster and ds.movies[0].plot == "A plot."


def test_an_id_listed_twice_in_one_split_is_used_once(tmp_path):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": GOOD},
                     {"train": ["0000001", "0000002", "0000001"], "dev": [], "test": []})
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001", "0000002"] and ds.splits["train"] == [0, 1]
    assert _kinds(ds) == {"duplicate_id": 1} and "0000001" in ds.report.problems[0].message
    with pytest.raises(DataError, match="0000001"):
        load_mmimdb(root, strict=True)


def test_an_id_in_two_splits_reaches_neither(tmp_path):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": GOOD, "0000003": GOOD},
                     {"train": ["0000001", "0000002"], "dev": ["0000003"], "test": ["0000002", "0000002"]})
    ds = load_dataset(root)
    assert [m.id for m in ds.movies] == ["0000001", "0000003"]
    assert ds.splits == {"train": [0], "dev": [1], "test": []}
    assert _kinds(ds) == {"ambiguous_split": 1}
    assert "train" in ds.report.problems[0].message and "test" in ds.report.problems[0].message


def test_ids_that_differ_only_by_case_are_one_movie(tmp_path):
    # On a case-insensitive file system tt01.json and TT01.json are the same file: never two movies.
    root = make_root(tmp_path, {"tt01": GOOD, "tt02": GOOD}, {"train": ["tt01", "TT01", "tt02"], "dev": [],
                                                              "test": ["TT02"]})
    if not (root / "dataset" / "TT01.json").exists():
        (root / "dataset" / "TT01.json").write_text(json.dumps(GOOD))
        (root / "dataset" / "TT02.json").write_text(json.dumps(GOOD))
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["tt01"] and ds.splits == {"train": [0], "dev": [], "test": []}
    assert _kinds(ds) == {"duplicate_id": 1, "ambiguous_split": 1}
    assert all("case" in p.message for p in ds.report.problems)


def test_the_split_invariant_is_asserted(tmp_path, monkeypatch):
    root = make_root(tmp_path, {f"000000{i}": GOOD for i in range(4)},
                     {"train": ["0000000", "0000001"], "dev": ["0000002"], "test": ["0000003"]})
    ds = load_dataset(root)
    with pytest.raises(AssertionError, match="0000001"):
        MovieDataset(ds.movies, {"train": [0, 1], "dev": [1], "test": []}, ds.report, ds.root)
    with pytest.raises(AssertionError, match="twice"):
        MovieDataset(ds.movies, {"train": [0, 0], "dev": [], "test": []}, ds.report, ds.root)
    # load_dataset checks the split it hands out, whichever way it was drawn
    import genrefusion.data.splits

    monkeypatch.setattr(genrefusion.data.splits, "stratified_split", lambda y, seed: {"train": [0, 1], "dev": [1],
                                                                                 "test": [2]})
    with pytest.raises(AssertionError, match="0000001"):
        load_dataset(root, split="stratified")


# -- odd files ---------------------------------------------------------------------------------------------------
def test_directories_where_files_should_be(tmp_path):
    root = make_root(tmp_path, {"0000001": GOOD, "0000003": GOOD},
                     {"train": ["0000001", "0000002", "0000003"], "dev": [], "test": []})
    (root / "dataset" / "0000002.json").mkdir()
    (root / "dataset" / "0000003.jpeg").mkdir()
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"unreadable": 2}
    paths = sorted(Path(p.path).name for p in ds.report.problems)
    assert paths == ["0000002.json", "0000003.jpeg"]
    assert all("directory" in p.message for p in ds.report.problems)


def test_unreadable_files(tmp_path, monkeypatch):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": GOOD, "0000003": GOOD},
                     {"train": ["0000001", "0000002", "0000003"], "dev": [], "test": []},
                     posters={"0000003.jpeg": _jpeg_bytes()})
    denied = {root / "dataset" / "0000002.json", root / "dataset" / "0000003.jpeg"}
    real = Path.read_bytes

    def read_bytes(self):  # chmod 000 does not stop root, so deny the read itself
        if self in denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"unreadable": 2}
    assert all("Permission denied" in p.message for p in ds.report.problems)


def test_broken_symlink_is_a_missing_file(tmp_path):
    root = make_root(tmp_path, {"0000001": GOOD}, {"train": ["0000001", "0000002"], "dev": [], "test": []})
    (root / "dataset" / "0000002.json").symlink_to(tmp_path / "gone.json")
    ds = load_mmimdb(root)
    assert _kinds(ds) == {"missing_file": 1} and "symlink" in ds.report.problems[0].message


def test_empty_dataset_folder_and_nothing_usable(tmp_path):
    empty = make_root(tmp_path / "a", {}, None)
    with pytest.raises(DataError, match=r"dataset.* no movie files"):
        load_dataset(empty)
    nothing = make_root(tmp_path / "b", {"0000001": b"{", "0000002": {"plot": ["x"], "genres": ["News"]}},
                        {"train": ["0000001", "0000002", "0000003"], "dev": [], "test": []})
    with pytest.raises(DataError) as e:
        load_dataset(nothing)
    msg = str(e.value)
    assert "every movie was skipped" in msg and "malformed_json 1" in msg and "missing_file 1" in msg
    assert "no benchmark genre 1" in msg


def test_a_huge_movie_json_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import genrefusion.data.loader

    monkeypatch.setattr(genrefusion.data.loader, "MAX_MOVIE_JSON_BYTES", 1000)
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": {**GOOD, "plot": ["x" * 5000]}},
                     {"train": ["0000001", "0000002"], "dev": [], "test": []})
    ds = load_mmimdb(root)
    assert _kinds(ds) == {"file_too_large": 1} and "0000002.json" in ds.report.problems[0].path


# -- posters: the reader agrees with the one decoder ---------------------------------------------------------------
def _png_declaring(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose header declares width x height: a few hundred bytes standing for gigapixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_a_poster_declaring_a_huge_size_is_refused(tmp_path):
    bomb = _png_declaring(12000, 12000)
    assert len(bomb) < 1000
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": GOOD}, {"train": ["0000001", "0000002"], "dev": [],
                                                                    "test": []}, posters={"0000002.png": bomb})
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"poster_too_large": 1}
    assert "12000x12000" in ds.report.problems[0].message and ds.report.problems[0].path.endswith("0000002.png")


def test_reader_features_and_predict_agree_on_a_truncated_jpeg(tmp_path):
    from genrefusion.data.images import PosterError, load_poster
    from genrefusion.cli.predict import InputError, decode_poster

    data = _jpeg_bytes((200, 300))
    cut = data[: len(data) * 2 // 3]
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": GOOD}, {"train": ["0000001", "0000002"], "dev": [],
                                                                    "test": []}, posters={"0000002.jpeg": cut})
    ds = load_mmimdb(root)
    assert _kinds(ds) == {"bad_poster": 1} and "truncated" in ds.report.problems[0].message
    with pytest.raises(PosterError, match="0000002.jpeg.*truncated"):  # what feature extraction decodes with
        load_poster(root / "dataset" / "0000002.jpeg")
    with pytest.raises(InputError, match="truncated"):  # what predict and the service decode with
        decode_poster(cut, "0000002.jpeg")
    with pytest.raises(DataError, match="0000002.jpeg"):
        load_mmimdb(root, strict=True)


def test_summary_cli_shows_every_count_and_strict_stops_at_the_first(tmp_path, capsys):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": GOOD, "0000003": {**GOOD, "plot": 7}},
                     {"train": ["0000001", "0000001", "../x", "0000003"], "dev": ["0000002"], "test": ["0000002"]})
    assert main(["data", "summary", str(root)]) == 0
    out = capsys.readouterr().out
    for kind in ("duplicate_id 1", "bad_id 1", "ambiguous_split 1", "bad_field 1"):
        assert kind in out
    assert main(["data", "summary", str(root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["skipped"] == {"duplicate_id": 1, "bad_id": 1, "ambiguous_split": 1, "bad_field": 1}
    assert main(["data", "summary", str(root), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "split.json" in err and err.count("error:") == 1


def test_unpaired_surrogates_are_refused_not_crashed_on(tmp_path, capsys):
    # valid JSON ("\ud800" escapes), but not encodable text: hashing the plot or printing the genre would raise
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": {**GOOD, "plot": ["\ud800"]},
                                "0000003": {**GOOD, "genres": ["Drama", "\udc00x"]}},
                     {"train": ["0000001", "0000002", "0000003", "\ud800"], "dev": [], "test": []})
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"bad_id": 1, "bad_field": 2}
    assert ds.fingerprint() and main(["data", "summary", str(root)]) == 0
    assert "surrogate" in capsys.readouterr().out


def test_a_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "no-such-folder")


def test_devices_and_fifos_are_refused_not_read_forever(tmp_path):
    import os

    root = make_root(tmp_path, {"0000001": GOOD, "0000003": GOOD},
                     {"train": ["0000001", "0000002", "0000003"], "dev": [], "test": []})
    os.mkfifo(root / "dataset" / "0000002.json")  # opening it would block until a writer comes
    (root / "dataset" / "0000003.jpeg").symlink_to("/dev/zero")  # endless bytes
    ds = load_mmimdb(root)
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"unreadable": 2}
    assert all("not a regular file" in p.message for p in ds.report.problems)
    (root / "split.json").unlink()
    (root / "split.json").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="split.json: not a regular file"):
        load_mmimdb(root)


def test_a_file_name_that_is_not_utf8(tmp_path, capsys):
    import os

    root = make_root(tmp_path, {"0000001": GOOD}, None)
    with open(os.path.join(os.fsencode(root / "dataset"), b"\xff\xfe.json"), "w") as f:
        json.dump(GOOD, f)
    ds = load_mmimdb(root)  # its name decodes to surrogates: refused, and the message still prints
    assert [m.id for m in ds.movies] == ["0000001"] and _kinds(ds) == {"bad_id": 1}
    assert main(["data", "summary", str(root), "--split", "stratified"]) == 0
    assert "bad_id 1" in capsys.readouterr().out


def test_modalities_both_with_no_movie_having_both(tmp_path):
    root = make_root(tmp_path, {"0000001": GOOD, "0000002": GOOD}, {"train": ["0000001"], "dev": [],
                                                                    "test": ["0000002"]})
    with pytest.raises(DataError, match="no movie has both a poster and a plot"):
        load_dataset(root, modalities="both")
