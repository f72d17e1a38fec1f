"""What the service refuses, and the ASGI middleware that refuses it before a byte of the body is read.

Memory is bounded at three levels, so no request, burst or slow client can make the server hold more than a
known amount (docs/limits.md gives the numbers, and what a client sees when it hits each):
- a request: its body is cut off at `max_body_bytes` while it streams in, a batch holds at most `max_batch`
  posters, and each poster is decoded at a bounded size (posters.decode_poster: at most ~1024 px a side);
- the server: at most `max_inflight` predictions (/predict, /predict/batch, /explain) are received or computed at
  once; the next ones wait up to `queue_timeout_s` for a slot *before their body is read* (a waiting request
  holds only what uvicorn buffered, 64 KB), then get 503 + Retry-After. Decoding draws on a server-wide budget of
  `decode_pixels` pixels (a 6000 x 6000 PNG is decoded at full size before it is reduced, ~110 MB each), so
  concurrent huge posters take turns instead of adding up;
- connections: see protocol.py (header, body and keep-alive timeouts, `max_connections`,
  `max_client_connections`).
"""
from __future__ import annotations

import asyncio
import ctypes
import hashlib
import hmac
import math
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from ..data.posters import MAX_POSTER_PIXELS
from ..inference.inputs import MAX_PLOT_CHARS
from .errors import ServiceError, error_response

# Routes that decode posters and run the model, with the content types each accepts.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
HEAVY_ROUTES = {"/predict": FORM_TYPES, "/explain": FORM_TYPES, "/predict/batch": ("application/json",)}
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")  # and /static/...: the page itself holds nothing secret


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 10 * 1024 * 1024  # a poster is ~50 KB; room for a large PNG or a batch of 32
    max_plot_chars: int = MAX_PLOT_CHARS
    max_image_pixels: int = MAX_POSTER_PIXELS  # declared size; refused (413) before decoding
    max_batch: int = 32
    max_inflight: int = 4  # inference is serialised anyway; more in flight would only hold more bodies
    queue_timeout_s: float = 10.0  # how long a prediction waits for a slot (or decode budget) before 503
    decode_pixels: int = 64_000_000  # pixels decoded at once, server-wide: one poster at the limit + small ones
    header_timeout_s: float = 10.0  # from the first byte of a request to the end of its headers
    body_timeout_s: float = 60.0  # from the end of the headers to the last byte of the body
    keep_alive_s: int = 5  # an idle connection between requests
    max_connections: int = 100  # open sockets; past it a newcomer replaces an idle one, else gets 503 (protocol.py)
    max_client_connections: int = 50  # open sockets of one client address, likewise
    max_header_bytes: int = 16 * 1024
    retry_after_s: int = 2

    def __post_init__(self):
        wrong = [f"{_name(f)} must be {what}, got {getattr(self, f)!r}" for f, (ok, what) in RULES.items()
                 if not ok(getattr(self, f))]
        if wrong:  # all of them in one message: a server that would refuse everything (or crash) never starts
            raise ValueError("invalid limits: " + "; ".join(wrong))

    def public(self) -> dict:
        return asdict(self)


def _whole(least: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least


def _seconds(zero_ok: bool):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v >= 0 if zero_ok else v > 0)


# What each limit must be; below it the server would refuse every request (0 connections, slots or batch size, a
# zero timeout), crash (a negative semaphore) or not limit at all (NaN compares false with everything).
RULES = {
    "max_body_bytes": (_whole(1), "a whole number of bytes >= 1"),
    "max_plot_chars": (_whole(1), "a whole number >= 1"),
    "max_image_pixels": (_whole(1), "a whole number >= 1"),
    "max_batch": (_whole(1), "a whole number >= 1"),
    "max_inflight": (_whole(1), "a whole number >= 1"),
    "queue_timeout_s": (_seconds(True), "a finite number of seconds >= 0"),
    "decode_pixels": (_whole(1), "a whole number of pixels >= 1"),
    "header_timeout_s": (_seconds(False), "a finite number of seconds > 0"),
    "body_timeout_s": (_seconds(False), "a finite number of seconds > 0"),
    "keep_alive_s": (_whole(0), "a whole number of seconds >= 0"),
    "max_connections": (_whole(1), "a whole number >= 1"),
    "max_client_connections": (_whole(1), "a whole number >= 1"),
    "max_header_bytes": (_whole(1024), "a whole number of bytes >= 1024"),  # a request line and a Host header
    "retry_after_s": (_whole(0), "a whole number of seconds >= 0"),
}
# The `serve` option that sets each limit, named in the error (limits without one are named by their field).
FLAGS = {"max_body_bytes": "--max-body-mb", "max_batch": "--max-batch", "max_inflight": "--max-inflight",
         "queue_timeout_s": "--queue-timeout", "decode_pixels": "--decode-megapixels",
         "max_connections": "--max-connections", "max_client_connections": "--max-client-connections",
         "header_timeout_s": "--header-timeout",
         "body_timeout_s": "--body-timeout"}


def _name(field: str) -> str:
    return f"{FLAGS[field]} ({field})" if field in FLAGS else field


def busy(message: str, retry_after: int) -> ServiceError:
    return ServiceError(503, message, headers={"Retry-After": str(retry_after)})


class PixelBudget:
    """A server-wide budget of pixels being decoded. A poster larger than the whole budget still gets it, alone."""

    def __init__(self, total: int):
        self.total = self.free = total
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, timeout: float, retry_after: int = 2):
        n = min(max(pixels, 0), self.total)
        with self._cond:
            if not self._cond.wait_for(lambda: self.free >= n, timeout):
                raise busy(f"the server is decoding other large posters (budget {self.total:,} pixels); "
                           f"retry in {retry_after} s", retry_after)
            self.free -= n
        try:
            yield
        finally:
            with self._cond:
                self.free += n
                self._cond.notify_all()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 4 * 1024 * 1024


def tune_malloc() -> None:
    """Make large allocations come straight from the OS and go straight back. PIL decodes a poster in 16 MB
    blocks; glibc's default threshold rises past that after the first big free, so the blocks then come from
    per-thread arenas, which keep them: each worker thread ends up holding its largest decode. Measured with
    benchmarks/serve_load.py (8 concurrent 6000 x 6000 PNGs, tiny model): peak 1674 MB -> 780 MB (idle 425)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc
        pass


def release_memory() -> None:
    """Hand freed heap back to the OS. glibc keeps what a burst of large posters freed in its per-thread arenas,
    so without this the server's RSS stays at its peak after the burst (measured: benchmarks/serve_load.py)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _main_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class Guard:
    """ASGI middleware in front of the app: API key (401), declared or streamed body size (413), content type
    (415) and the in-flight slots (503), all before the body is read."""

    def __init__(self, app, limits: Limits, api_key: str | None = None):
        self.app, self.limits = app, limits
        self._key = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.slots = asyncio.Semaphore(limits.max_inflight)
        self.active = 0

    def __getattr__(self, name):  # the wrapped FastAPI app's attributes (state, openapi, routes) stay reachable
        return getattr(self.app, name)

    def authorized(self, headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # Digests of equal length, compared in constant time: neither the key nor its length leaks through timing.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest(), self._key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        path, method, headers, lim = scope["path"], scope["method"], Headers(scope=scope), self.limits
        try:
            if self._key is not None and not (path in PUBLIC_PATHS or path.startswith("/static/")) \
                    and not self.authorized(headers):
                raise ServiceError(401, "this server needs an API key: send 'Authorization: Bearer <key>'" if
                                   "authorization" not in headers else "the API key is wrong",
                                   field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="genrefusion"'})
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > lim.max_body_bytes:
                raise ServiceError(413, f"request body of {int(length):,} bytes, over the limit of "
                                        f"{lim.max_body_bytes:,}")
            heavy = method == "POST" and path in HEAVY_ROUTES
            if heavy and _main_type(headers.get("content-type", "")) not in HEAVY_ROUTES[path]:
                what = " or ".join(HEAVY_ROUTES[path])
                got = headers.get("content-type") or "(none)"
                raise ServiceError(415, f"expected {what}, got content type {got[:100]!r}", field="Content-Type")
            if heavy:
                try:
                    await asyncio.wait_for(self.slots.acquire(), lim.queue_timeout_s)
                except TimeoutError:
                    raise busy(f"the server is busy ({lim.max_inflight} predictions in progress); retry in "
                               f"{lim.retry_after_s} s", lim.retry_after_s) from None
        except ServiceError as e:
            return await error_response(e.status_code, e.message, e.code, e.field, e.headers)(scope, receive, send)

        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > lim.max_body_bytes:  # a streamed body (no Content-Length) is cut off as it arrives
                raise ServiceError(413, f"request body over the limit of {lim.max_body_bytes:,} bytes")
            return message

        if not heavy:
            return await self.app(scope, limited_receive, send)
        self.active += 1
        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.active -= 1
            self.slots.release()
            if self.active == 0:  # the burst is over: give its memory back, off the event loop
                asyncio.get_running_loop().run_in_executor(None, release_memory)
