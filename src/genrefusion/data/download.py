"""`genrefusion data download`: fetch the official MM-IMDb archive, verify it, extract it safely, summarise it.

The archive (`mmimdb.tar.gz`, about 8 GB, from the dataset page http://lisi1.unal.edu.co/mmimdb/) is fetched into
`DEST/mmimdb.tar.gz.part` and renamed only once it is complete and, when a checksum is configured, verified. A cut
connection is retried with an HTTP Range request from where it stopped, and a later run resumes a `.part` left by
an earlier one; `If-Range` (the server's ETag / Last-Modified, kept beside the `.part`) makes sure the bytes
appended belong to the same file, and a server that ignores Range simply restarts the download.

Extraction goes into a temporary folder inside DEST that is renamed to `DEST/mmimdb` at the end, so `DEST/mmimdb`
either is complete or does not exist. Every member is checked before it is written (no absolute path, no `..`, no
link whose target leaves the destination, no device or FIFO), on top of tarfile's own `filter="data"`; the first
bad member stops the extraction with an error that names it, and nothing is left behind.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from tqdm.auto import tqdm

from ..files import sha256_file

DEFAULT_URL = "http://lisi1.unal.edu.co/mmimdb/mmimdb.tar.gz"
URL_ENV, SHA256_ENV = "GENREFUSION_MMIMDB_URL", "GENREFUSION_MMIMDB_SHA256"
ARCHIVE_NAME, FOLDER_NAME = "mmimdb.tar.gz", "mmimdb"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The archive could not be fetched or did not verify."""


class UnsafeArchiveError(ValueError):
    """An archive member that would write outside the destination (or is not a plain file/folder/link)."""


# -- download ----------------------------------------------------------------------------------------------------
def _validators(headers) -> dict[str, str]:
    return {k: headers[k] for k in ("ETag", "Last-Modified") if headers.get(k)}


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000); anything else -> (None, None)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = int(span.split("-")[0]) if span != "*" and span.split("-")[0].isdigit() else None
    return start, int(total) if total.isdigit() else None


def _fetch_once(url: str, part: Path, meta_path: Path, progress: bool, timeout: float) -> None:
    """One HTTP request that appends to `part` from its current size; raises OSError-family errors on a cut."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except ValueError:  # a side file cut by a crash: the .part cannot be trusted to belong to this URL
        meta = {}
    if offset and meta.get("url") != url:  # a .part of another address: not resumable
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": "genrefusion", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        validator = meta.get("validators", {}).get("ETag") or meta.get("validators", {}).get("Last-Modified")
        if validator:  # the server sends the whole file instead of a range if it changed since
            request.add_header("If-Range", validator)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: complete already, or the file shrank
            _, total = _content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return
            part.unlink()
            raise ConnectionError(f"{url}: server refused to resume at byte {offset:,}; restarting") from None
        if exc.code >= 500:  # the server's trouble, often passing: retried
            raise ConnectionError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"{url}: asked for bytes from {offset:,}, got a range starting at {start}")
            mode = "ab"
        else:  # 200: the server ignored Range (or the file changed): start over
            offset, total, mode = 0, None, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        meta_path.write_text(json.dumps({"url": url, "validators": _validators(response.headers)}))
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                   desc=ARCHIVE_NAME, disable=not progress)
        written = offset
        with open(part, mode) as f, bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and written != total:
        raise ConnectionError(f"{url}: connection closed after {written:,} of {total:,} bytes")


def download(url: str, target: str | Path, sha256: str | None = None, *, retries: int = 5, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Fetch `url` to `target` through `target.part` (resumed across calls and retries), verify, rename.

    A cut connection is retried up to `retries` times, each time from the byte where it stopped. A checksum
    mismatch deletes the download (its bytes are wrong; resuming cannot fix them) and raises DownloadError.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    meta_path = target.with_name(target.name + ".part.json")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, meta_path, progress, timeout)
            break
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException) as exc:  # cut, reset, timeout, refused (URLError is an OSError)
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                kept = f"{have:,} bytes kept in {part}, run again to resume" if have else "nothing downloaded"
                raise DownloadError(f"{url}: download failed after {retries + 1} attempt(s) ({exc}); {kept}") from None
            print(f"download interrupted ({exc}); retrying from byte {have:,}", flush=True)
            time.sleep(min(2.0 ** attempt, 30.0) if attempt else 0.0)
    if sha256:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink()
            meta_path.unlink(missing_ok=True)
            raise DownloadError(f"{url}: SHA-256 mismatch: expected {sha256.lower()}, got {got}; "
                                f"the download was deleted")
    os.replace(part, target)
    meta_path.unlink(missing_ok=True)
    return target


# -- safe extraction ---------------------------------------------------------------------------------------------
def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_member(member: tarfile.TarInfo, dest: str | Path) -> None:
    """Raise UnsafeArchiveError unless `member` stays inside `dest` (absolute `dest`) once extracted."""
    dest = os.path.realpath(dest)
    name = member.name

    def refuse(reason: str):
        raise UnsafeArchiveError(f"archive member {name!r}: {reason}")

    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        refuse("absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        refuse("path with '..' would escape the destination")
    if not _inside(dest, os.path.realpath(os.path.join(dest, name))):
        refuse("path resolves outside the destination (through a link)")
    if member.isdev():
        refuse("device file or FIFO")
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith(("/", "\\")) or PureWindowsPath(link).drive:
            refuse(f"link to the absolute path {link!r}")
        # a symlink is relative to its own folder; a hard link names another member (relative to the root)
        base = os.path.dirname(os.path.join(dest, name)) if member.issym() else dest
        if not _inside(dest, os.path.normpath(os.path.join(base, link))) or \
                not _inside(dest, os.path.realpath(os.path.join(base, link))):
            refuse(f"link to {link!r}, outside the destination")
    elif not (member.isfile() or member.isdir()):
        refuse(f"unsupported member type {member.type!r}")


class _CountingReader:
    """File wrapper that advances a progress bar by the compressed bytes read."""

    def __init__(self, f: BinaryIO, bar):
        self.f, self.bar = f, bar

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bar.update(len(data))
        return data


def _find_root(folder: Path) -> Path:
    """The MM-IMDb folder inside an extraction: `mmimdb/`, the folder itself, or its only subfolder with dataset/."""
    if (folder / FOLDER_NAME / "dataset").is_dir():
        return folder / FOLDER_NAME
    if (folder / "dataset").is_dir():
        return folder
    found = [d for d in folder.iterdir() if (d / "dataset").is_dir()]
    if len(found) != 1:
        raise DownloadError(f"the archive holds no MM-IMDb folder (a folder with dataset/ and split.json); "
                            f"top level: {sorted(p.name for p in folder.iterdir())[:10]}")
    return found[0]


def extract(archive: str | Path, dest: str | Path, *, progress: bool = True) -> Path:
    """Extract an MM-IMDb archive safely into `dest/mmimdb` (see the module docstring); returns that folder."""
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError("safe extraction needs Python 3.11.4 or newer (tarfile extraction filters)")
    archive, dest = Path(archive), Path(dest).resolve()
    final = dest / FOLDER_NAME
    tmp = dest / f".tmp-extract-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def safe_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        check_member(member, path)
        return tarfile.data_filter(member, path)  # the standard library's own rules on top of ours

    try:
        with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                              unit_divisor=1024, desc="extract", disable=not progress) as bar:
            try:
                with tarfile.open(fileobj=_CountingReader(raw, bar), mode="r|*") as tar:
                    tar.extractall(tmp, filter=safe_filter)
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"{archive}: {exc}") from None
            except UnsafeArchiveError as exc:
                raise UnsafeArchiveError(f"{archive}: {exc}") from None
            except (tarfile.ReadError, tarfile.CompressionError, tarfile.StreamError, EOFError, zlib.error) as exc:
                raise DownloadError(f"{archive}: not a readable tar archive ({exc})") from None
        root = _find_root(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(root, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- the command -------------------------------------------------------------------------------------------------
def download_mmimdb(dest: str | Path = "data", url: str | None = None, sha256: str | None = None, *,
                    force: bool = False, keep_archive: bool = True, progress: bool = True,
                    retries: int = 5) -> Path:
    """Download (or resume), verify and extract MM-IMDb into `dest/mmimdb`; returns that folder.

    url / sha256 default to $GENREFUSION_MMIMDB_URL / $GENREFUSION_MMIMDB_SHA256 and then to the official address
    (which publishes no checksum). An existing `dest/mmimdb` is kept unless `force`."""
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    sha256 = sha256 or os.environ.get(SHA256_ENV) or None
    if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise ValueError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    dest = Path(dest)
    final = dest / FOLDER_NAME
    if (final / "dataset").is_dir() and not force:
        print(f"{final} already exists (use --force to download and extract again)")
        return final
    archive = dest / ARCHIVE_NAME
    if archive.exists() and not force:
        if sha256 and sha256_file(archive) != sha256.lower():
            raise DownloadError(f"{archive}: exists but does not match --sha256 {sha256.lower()}; delete it first")
        print(f"using the archive already downloaded: {archive}")
    else:
        print(f"downloading {url} -> {archive}" + ("" if sha256 else " (no checksum configured: not verified)"))
        download(url, archive, sha256, retries=retries, progress=progress)
    folder = extract(archive, dest, progress=progress)
    if not keep_archive:
        archive.unlink()
    return folder
