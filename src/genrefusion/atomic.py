"""Atomic writes: the one place that writes a file or a folder so that a reader never sees it half-written.

Everything goes to a temporary name in the target's own folder (same filesystem, so the final `os.replace` is
atomic), is flushed to disk, and is renamed into place; on any error the temporary is removed and the target is
left as it was. Temporary names carry the host and process id (`.tmp-<host>-<pid>-<name>`), so a writer never
touches another live writer's file (several processes may share one feature cache), and `remove_stale_tmp`
can tell files left by killed writers from those still being written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

TMP_PREFIX = ".tmp-"


def tmp_path(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.parent / f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{target.name}"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`: what the block writes there is flushed to disk and renamed onto `target`;
    if the block (or the rename) fails, the temporary is removed and `target` is left as it was."""
    tmp = tmp_path(target)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    target = Path(target)
    with _replacing(target) as tmp:
        tmp.write_bytes(data)
    return target


def write_chunks(target: str | os.PathLike, chunks: Iterable[bytes]) -> Path:
    """Write the concatenation of `chunks` atomically, one chunk in memory at a time (a file larger than memory)."""
    target = Path(target)
    with _replacing(target) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    return target


def write_text(target: str | os.PathLike, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=indent, **kwargs) + ("\n" if indent is not None else ""))


def save_safetensors(tensors: dict, target: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """safetensors.torch.save_file, atomically. A write that fails (a full disk) is an OSError naming `target`."""
    from safetensors import SafetensorError  # lazy: safetensors.torch imports torch, which the atomic text writes
    from safetensors.torch import save_file  # of a torch-free command must not pay for

    target = Path(target)
    with _replacing(target) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            raise _os_error(exc, target) from None
    return target


def _os_error(exc: Exception, target: Path) -> OSError:
    """safetensors reports an I/O failure as its own error with the OS's code in the text ("... (os error 28)"); the
    commands name OSErrors in one line, so give it back as one, with the file it was writing."""
    code = re.search(r"\(os error (\d+)\)", str(exc))
    if code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(target))
    return OSError(f"could not write {target}: {exc}")


@contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name; on success it replaces `target` (an existing folder of that name is
    removed first), on error it is deleted and `target` is untouched.

        with staging_dir(run / "model") as tmp:
            (tmp / "model.json").write_text(...)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            # rename the old folder aside first: a reader sees the old folder or the new one, never a mix
            old = tmp_path(target.with_name(target.name + ".old"))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


_TMP_RE = re.compile(rf"{re.escape(TMP_PREFIX)}(.+)-(\d+)-(.+)")


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete temporaries left in `directory` by killed writers on this host (they are never read; this only frees
    space). A temporary whose writer is still alive, or that another host wrote, is left alone. Returns how many
    were removed."""
    host, removed = socket.gethostname(), 0
    for tmp in Path(directory).glob(f"{TMP_PREFIX}*"):
        m = _TMP_RE.fullmatch(tmp.name)
        if m is None or m.group(1) != host:
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
        except PermissionError:
            pass  # alive, owned by another user
    return removed


def check_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` (and its parents) and check that a file can be written in it, so that a command whose output
    folder is read-only or unwritable stops before any work instead of after hours of it. Raises OSError naming
    the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TMP_PREFIX + "probe-"):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write into the output folder ({exc.strerror or exc})", str(folder)) from None
    return folder


@contextmanager
def exclusive(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold `folder`'s lock for the block: a second writer into the same folder (two grids with one --out) is
    refused at once instead of silently overwriting the first one's results. The lock is an flock, so it dies with
    its process: a killed run leaves no lock behind."""
    folder = check_writable(folder)
    lock = FileLock(folder / ".genrefusion.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OSError(f"{folder}: another {what} is writing into this folder; wait for it to finish or choose "
                      "another output folder") from None
    try:
        yield folder
    finally:
        lock.release()
