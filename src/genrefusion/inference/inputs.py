"""What a prediction accepts: the checks on a movie's plot and poster shared by the predict CLI, the service and
explain, and the errors they raise. An InputError carries the HTTP status and error code the service answers with,
and the input at fault.

Imported by the CLI parser and by the service's modules, so only PIL is imported here.
"""
from __future__ import annotations

from PIL import Image

from ..data.posters import DECODE_SIDE, POSTER_FORMATS, PosterError
from ..data.posters import MAX_POSTER_PIXELS as MAX_IMAGE_PIXELS  # PIL only: cheap to import
from ..data.posters import decode_poster as decode
from ..data.visible import is_blank  # the service's schema pattern is the same rule (not_blank_pattern)

MAX_PLOT_CHARS = 20_000  # MM-IMDb's longest plot is ~13k characters; the encoders read at most 512 tokens anyway


class InputError(ValueError):
    """Input a prediction cannot use. `status` is the HTTP status the server answers with, `code` the error code
    of its body, and `field` the input at fault ("plot", "movies[2].poster_base64"; None: the input as a whole)."""

    status = 422
    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnsupportedInput(InputError):
    status = 415
    code = "unsupported_media_type"


class InputTooLarge(InputError):
    status = 413
    code = "too_large"


def decode_poster(data: bytes, name: str = "poster", max_pixels: int = MAX_IMAGE_PIXELS,
                  field: str | None = "poster") -> Image.Image:
    """Bytes of an uploaded poster -> RGB image, decoded by the one poster decoder (posters.decode_poster: the
    declared size is checked before decoding, so a decompression bomb is refused without allocating it). Its
    PosterError becomes the InputError (with an HTTP status) the service answers with."""
    try:
        return decode(data, name, max_pixels=max_pixels)
    except PosterError as e:
        cls = {"too_large": InputTooLarge, "not_image": UnsupportedInput}.get(e.kind, InputError)
        raise cls(str(e), field=field) from None


def poster_decode_pixels(data: bytes) -> int:
    """How many pixels decoding this poster will allocate, from its header alone (nothing is decoded): the
    declared size, or for a JPEG the size draft mode decodes it at (posters.decode_poster). 0 when the header
    cannot be read: decode_poster then refuses the file with the reason. The service budgets decoding by this."""
    import io

    try:
        with Image.open(io.BytesIO(data), formats=POSTER_FORMATS) as img:
            if img.format == "JPEG":
                img.draft("RGB", (DECODE_SIDE, DECODE_SIDE))  # sets the decode size; reads no pixel data
            return img.width * img.height
    except Exception:  # noqa: BLE001 - any unreadable header: the decoder names the problem
        return 0


def check_plot(plot: str | None, max_chars: int = MAX_PLOT_CHARS, name: str = "plot") -> str | None:
    """None stays None (no plot); an empty plot is an error, not a silent 'no plot': one with no visible character
    (whitespace, U+200B and the other invisible characters of data/visible.py) is refused as empty, like "   ". Over
    `max_chars` characters (a documented field limit, so 422 like any other invalid field) or text that is not
    valid Unicode (a lone surrogate from a JSON escape, which no tokenizer can read) are errors too."""
    if plot is None:
        return None
    if not isinstance(plot, str):
        raise InputError(f"{name}: expected text, got {type(plot).__name__}", field=name)
    if not plot.strip() or (len(plot) <= max_chars and is_blank(plot)):  # str.strip first: C-fast on any length
        raise InputError(f"{name}: is empty", field=name)
    if len(plot) > max_chars:
        raise InputError(f"{name}: {len(plot):,} characters, over the limit of {max_chars:,}", field=name)
    try:
        plot.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{name}: not valid Unicode text (a lone surrogate at character {e.start:,})",
                         field=name) from None
    return plot
