"""Posters: the one decoder every path uses (dataset reader, feature extraction, predict, the service).

`decode_poster` checks a poster completely before anything uses it: the format must be one of `POSTER_FORMATS`
(never EPS & co., which PIL would hand to Ghostscript), the declared size must stay under `MAX_POSTER_PIXELS`
(checked from the header, before a byte of pixel data is allocated), and the whole file is decoded so that a
truncated or corrupt poster fails here, with its name, instead of deep inside a DataLoader worker. Decoding is
bounded: a JPEG is decoded with DCT scaling (draft mode) to the smallest scale whose longer side is still at
least `DECODE_SIDE`, and anything larger after decoding is reduced, so a 6000 x 6000 poster costs a few MB, not
100. Posters up to `DECODE_SIDE` (every MM-IMDb poster) are decoded at full size, bit for bit as before.

PIL only (no torch), so the CLI and the service can import it cheaply.
"""
from __future__ import annotations

import io
import re
import threading
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

POSTER_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# Declared pixels above which a poster is refused (about 6300 x 6300): far above any real poster (MM-IMDb's are
# ~300 x 450), far below what a decompression bomb declares. Decoding a PNG at this size costs ~160 MB at most.
MAX_POSTER_PIXELS = 40_000_000
# Longer side a poster is decoded at, at most: encoders read 224 px, augmentation crops >= 80% of the image,
# and the explanation page overlays its heat map on the poster, so 1024 px loses nothing anyone sees.
DECODE_SIDE = 1024


class PosterError(ValueError):
    """A poster that exists but cannot be used. `kind`: empty | not_image | too_large | corrupt."""

    KINDS = ("empty", "not_image", "too_large", "corrupt")

    def __init__(self, path: str | PathLike, reason: str, kind: str = "corrupt"):
        self.path = Path(path) if not isinstance(path, Path) else path
        self.name = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.name}: {reason}")


_TRUNCATION_LOCK = threading.Lock()


@contextmanager
def _strict_decoding():
    # Any library may flip PIL's process-wide LOAD_TRUNCATED_IMAGES switch; with it on, a cut-off JPEG decodes
    # "successfully" with a grey bottom. Force it off while we decode, and put back whatever the process had.
    with _TRUNCATION_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decode_poster(source: bytes | str | PathLike, name: str | None = None, *,
                  max_pixels: int = MAX_POSTER_PIXELS, max_side: int = DECODE_SIDE) -> Image.Image:
    """Bytes or a file -> a fully decoded RGB image whose longer side is at most about `max_side` (see the
    module docstring). Raises FileNotFoundError for a missing file and PosterError (a ValueError naming `name`,
    default the path) for an empty, unreadable, over-large, truncated or corrupt poster.

    A small `max_side` (e.g. 64) validates a JPEG quickly: draft mode still walks the whole entropy-coded
    stream, so truncation is caught at a fraction of the cost of a full decode."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "poster"
    else:
        path = Path(source)
        name = name or str(path)
        data = path.read_bytes()  # FileNotFoundError (with the path) for a missing file
    if not data:
        raise PosterError(name, "file is empty (0 bytes)", "empty")
    try:
        with _strict_decoding(), Image.open(io.BytesIO(data), formats=POSTER_FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise _too_large(name, w * h, max_pixels, (w, h))
            if img.format == "JPEG":  # DCT scaling: decodes at 1/2, 1/4 or 1/8 while staying >= max_side
                img.draft("RGB", (max_side, max_side))
            img.load()  # Image.open reads only the header; load() decodes every byte, so truncation shows now
            out = img.convert("RGB")
    except PosterError:
        raise
    except UnidentifiedImageError:
        raise PosterError(name, f"not an image PIL can read (supported: {', '.join(POSTER_FORMATS)})",
                          "not_image") from None
    except Image.DecompressionBombError as e:  # over PIL's own limit, checked inside Image.open: our words, not PIL's
        raise _pil_bomb(name, data, e, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:  # PIL raises all of these for bad data
        raise PosterError(name, f"truncated or corrupt image ({e})", "corrupt") from None
    if max(out.size) > max_side:  # non-JPEG formats, or a JPEG draft mode could not shrink far enough
        scale = max_side / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.BILINEAR,
                         reducing_gap=2.0)
    return out


def _too_large(name: str, pixels: int, limit: int, size: tuple[int, int] | None = None) -> PosterError:
    """The one message for a poster that declares too many pixels (kind too_large: problem kind poster_too_large
    in the data readers, 413 in the service)."""
    shown = f"{size[0]}x{size[1]} = {pixels:,}" if size else f"{pixels:,}"
    return PosterError(name, f"image is {shown} pixels, over the limit of {limit:,} (refused as a possible "
                             "decompression bomb)", "too_large")


def _pil_bomb(name: str, data: bytes, error: Exception, max_pixels: int) -> PosterError:
    """PIL refuses, inside Image.open, an image declaring more than twice its Image.MAX_IMAGE_PIXELS, with its own
    words ("... could be decompression bomb DOS attack."). Say it as for any other over-large poster: the declared
    size (read from the header by the format's own reader, which decodes nothing) and the limit that applied, ours
    or PIL's where it is lower."""
    size = None
    for fmt in POSTER_FORMATS:  # as Image.open finds the format, without its size check
        factory, accept = Image.OPEN.get(fmt, (None, None))
        try:
            accepted = accept is None or accept(data[:16])
            if factory is None or isinstance(accepted, str) or not accepted:  # a str: PIL's "maybe" warning
                continue
            with factory(io.BytesIO(data), "") as img:
                size = img.size
                break
        except Exception:  # noqa: BLE001 - the size is only for the message; PIL's own count below will do
            continue
    if size is not None:
        pixels: int | None = size[0] * size[1]
    else:
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found.group(1)) if found else None
    pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels
    limit = min(max_pixels, pil_limit)
    if pixels is None:  # not expected: PIL's message has always carried the count
        return PosterError(name, f"image declares more than {limit:,} pixels, the limit (refused as a possible "
                                 "decompression bomb)", "too_large")
    return _too_large(name, pixels, limit, size)


def load_poster(path: str | PathLike) -> Image.Image:
    """A poster file, decoded by `decode_poster` (the one decoder)."""
    return decode_poster(path)
