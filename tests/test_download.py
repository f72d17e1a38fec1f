"""`genrefusion data download` against a real HTTP server on loopback: a full download, a cut download resumed
with Range, a wrong checksum, and malicious archive members rejected with nothing written."""
from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from genrefusion.cli import download as download_cli
from genrefusion.data import download as dl
from genrefusion.data.loader import load_mmimdb
from genrefusion.data.labels import GENRES

MOVIES = {  # id -> (genres, has poster)
    "0000001": (["Drama"], True), "0000002": (["Comedy", "Romance"], True), "0000003": (["Horror"], False),
    "0000004": (["Action", "Sci-Fi"], True), "0000005": (["Drama", "Crime"], True), "0000006": (["Comedy"], True),
}
SPLIT = {"train": ["0000001", "0000002", "0000003"], "dev": ["0000004"], "test": ["0000005", "0000006"]}


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 18), (40 * seed % 256, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_archive(extra: list[tarfile.TarInfo] | None = None, filler: int = 0) -> bytes:
    """A small archive in the official layout: mmimdb/split.json + mmimdb/dataset/<id>.json|.jpeg.
    `filler` bytes of incompressible padding make it big enough to be cut mid-transfer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "mmimdb/split.json", json.dumps(SPLIT).encode())
        for n, (mid, (genres, poster)) in enumerate(MOVIES.items()):
            record = {"imdb_id": mid, "title": f"Movie {n}", "plot": [f"A story number {n}."], "genres": genres}
            _add(tar, f"mmimdb/dataset/{mid}.json", json.dumps(record).encode())
            if poster:
                _add(tar, f"mmimdb/dataset/{mid}.jpeg", _jpeg(n))
        if filler:
            import random

            _add(tar, "mmimdb/README.txt", random.Random(0).randbytes(filler))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"evil" * (info.size // 4)) if info.isfile() else None)
    return buf.getvalue()


class Server:
    """A threaded HTTP server serving one file at /mmimdb.tar.gz with Range support. `cut_after`: the first
    `cuts` responses stop after that many body bytes and drop the connection. `ignore_range`: always send 200."""

    def __init__(self, payload: bytes, cut_after: int | None = None, cuts: int = 0, ignore_range: bool = False):
        self.payload, self.cut_after, self.cuts, self.ignore_range = payload, cut_after, cuts, ignore_range
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.requests.append(dict(self.headers))
                if self.path != "/mmimdb.tar.gz":
                    self.send_error(404)
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                body = data[start:]
                if server.cuts > 0 and server.cut_after is not None:
                    server.cuts -= 1
                    self.wfile.write(body[:server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mmimdb.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_verifies_extracts_and_ends_with_the_summary(tmp_path, capsys):
    payload = build_archive()
    with Server(payload) as srv:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        sub.add_parser("data").add_subparsers(dest="data_command")
        download_cli.add_cli(sub)  # lands in the existing `data` group
        args = parser.parse_args(["data", "download", "--dest", str(tmp_path), "--url", srv.url,
                                  "--sha256", _sha(payload), "--no-progress"])
        assert args.func(args) == 0
    out = capsys.readouterr().out
    root = tmp_path / "mmimdb"
    assert (root / "split.json").is_file() and (tmp_path / "mmimdb.tar.gz").read_bytes() == payload
    assert not list(tmp_path.glob("*.part*")) and not list(tmp_path.glob(".tmp-*"))
    ds = load_mmimdb(root)
    assert len(ds) == 6 and sum(m.has_poster for m in ds.movies) == 5
    # it ends with the data summary: counts per split, then the per-genre table as the last lines
    assert out.index("MM-IMDb is in") < out.index("Data: ") < out.index("Per-genre distribution")
    assert out.rstrip().splitlines()[-1].split()[0] in GENRES


def test_cut_download_resumes_with_range_on_the_next_call(tmp_path):
    payload = build_archive(filler=300_000)
    with Server(payload, cut_after=100_000, cuts=1) as srv:
        with pytest.raises(dl.DownloadError, match="run again to resume"):
            dl.download(srv.url, tmp_path / "a.tar.gz", retries=0, progress=False)
        part = tmp_path / "a.tar.gz.part"
        assert part.stat().st_size == 100_000 and not (tmp_path / "a.tar.gz").exists()
        dl.download(srv.url, tmp_path / "a.tar.gz", _sha(payload), progress=False)
    assert (tmp_path / "a.tar.gz").read_bytes() == payload and not part.exists()
    assert srv.requests[1]["Range"] == "bytes=100000-" and srv.requests[1]["If-Range"] == '"v1"'


def test_cut_connection_is_retried_from_where_it_stopped(tmp_path):
    payload = build_archive(filler=300_000)
    with Server(payload, cut_after=50_000, cuts=2) as srv:
        dl.download(srv.url, tmp_path / "a.tar.gz", _sha(payload), retries=3, progress=False)
    assert (tmp_path / "a.tar.gz").read_bytes() == payload
    assert [r.get("Range") for r in srv.requests] == [None, "bytes=50000-", "bytes=100000-"]


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    payload = build_archive(filler=200_000)
    (tmp_path / "a.tar.gz.part").write_bytes(b"stale bytes of another file")
    (tmp_path / "a.tar.gz.part.json").write_text(json.dumps({"url": "x"}))  # another address: not resumed
    with Server(payload, ignore_range=True) as srv:
        dl.download(srv.url, tmp_path / "a.tar.gz", _sha(payload), progress=False)
    assert (tmp_path / "a.tar.gz").read_bytes() == payload and "Range" not in srv.requests[0]


def test_wrong_checksum_fails_and_extracts_nothing(tmp_path):
    payload = build_archive()
    with Server(payload) as srv, pytest.raises(dl.DownloadError, match="SHA-256 mismatch"):
        dl.download_mmimdb(tmp_path, srv.url, "0" * 64, progress=False)
    assert not (tmp_path / "mmimdb").exists() and not (tmp_path / "mmimdb.tar.gz").exists()
    assert not list(tmp_path.glob("*.part*"))
    with pytest.raises(ValueError, match="64 hexadecimal"):
        dl.download_mmimdb(tmp_path, "http://127.0.0.1:1/x", "abc", progress=False)


def test_url_and_checksum_come_from_the_environment(tmp_path, monkeypatch):
    payload = build_archive()
    with Server(payload) as srv:
        monkeypatch.setenv(dl.URL_ENV, srv.url)
        monkeypatch.setenv(dl.SHA256_ENV, "f" * 64)
        with pytest.raises(dl.DownloadError, match="SHA-256 mismatch"):
            dl.download_mmimdb(tmp_path, progress=False)
        monkeypatch.setenv(dl.SHA256_ENV, _sha(payload))
        assert dl.download_mmimdb(tmp_path, progress=False) == tmp_path / "mmimdb"


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member, reason", [
    (_member("mmimdb/../../x"), "'..'"),
    (_member("/tmp/genrefusion-evil"), "absolute path"),
    (_member("mmimdb/dataset/link", tarfile.SYMTYPE, "/etc/passwd"), "absolute path"),
    (_member("mmimdb/dataset/link", tarfile.SYMTYPE, "../../../outside"), "outside the destination"),
    (_member("mmimdb/hard", tarfile.LNKTYPE, "../outside"), "outside the destination"),
    (_member("mmimdb/dev", tarfile.CHRTYPE), "device"),
], ids=["dotdot", "absolute", "symlink-absolute", "symlink-relative", "hardlink", "device"])
def test_malicious_members_are_rejected_and_nothing_is_left(tmp_path, member, reason):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(build_archive(extra=[member]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(dl.UnsafeArchiveError, match=reason) as err:
        dl.extract(archive, dest, progress=False)
    assert repr(member.name) in str(err.value) and str(archive) in str(err.value)  # names the member and file
    assert list(dest.iterdir()) == []  # no mmimdb/, no temporary folder
    assert not (tmp_path / "x").exists() and not (tmp_path / "outside").exists()


def test_links_that_stay_inside_are_allowed(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(build_archive(extra=[_member("mmimdb/latest.jpeg", tarfile.SYMTYPE, "dataset/0000001.jpeg")]))
    root = dl.extract(archive, tmp_path, progress=False)
    assert (root / "latest.jpeg").is_symlink() and (root / "latest.jpeg").read_bytes() == _jpeg(0)


def test_an_archive_without_the_mmimdb_layout_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "something/else.txt", b"hello")
    (tmp_path / "a.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(dl.DownloadError, match="no MM-IMDb folder"):
        dl.extract(tmp_path / "a.tar.gz", tmp_path / "d", progress=False)
    (tmp_path / "b.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(dl.DownloadError, match="not a readable tar archive"):
        dl.extract(tmp_path / "b.tar.gz", tmp_path / "d", progress=False)
    assert list((tmp_path / "d").iterdir()) == []
