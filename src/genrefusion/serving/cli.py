"""`genrefusion serve`: load a model, read the API key, bind, and run uvicorn with the connection limits."""
from __future__ import annotations

import ipaddress
import math
import os
import stat
import sys
from pathlib import Path

from ..inference.predictor import load_model
from .limits import Limits, tune_malloc

KEY_FILE_ENV, KEY_ENV = "GENREFUSION_API_KEY_FILE", "GENREFUSION_API_KEY"


def read_api_key(path: str | Path | None = None, environ=os.environ, warn=print) -> str | None:
    """The API key: from `path`, else from the file $GENREFUSION_API_KEY_FILE names, else $GENREFUSION_API_KEY;
    None when none is set. A key file that is missing or empty is an error (ValueError: the server must not start
    open when a key was asked for); one that others may read is started with a warning."""
    path = path or environ.get(KEY_FILE_ENV)
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"API key file {p}: no such file")
        mode = p.stat().st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            warn(f"warning: API key file {p} is readable by every user of this machine "
                 f"(mode {stat.filemode(mode)}); chmod 600 {p}", file=sys.stderr)
        key = p.read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"API key file {p}: is empty")
        if any(c.isspace() for c in key):
            raise ValueError(f"API key file {p}: the key must be one line without spaces")
        return key
    key = environ.get(KEY_ENV, "").strip()
    return key or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          limits: Limits | None = None, api_key_file: str | Path | None = None, log_level: str = "info") -> None:
    """Load a saved model and serve it until interrupted."""
    import uvicorn

    from .app import create_app  # FastAPI: `genrefusion --help` imports this module, never FastAPI
    from .protocol import uvicorn_config  # uvicorn and h11, likewise

    limits = limits or Limits()
    api_key = read_api_key(api_key_file)
    tune_malloc()
    predictor = load_model(model, device=device)
    app = create_app(predictor, limits, api_key=api_key)
    print(f"genrefusion: {predictor.fusion} model from {model} at http://{host}:{port}/ "
          f"(OpenAPI schema: /openapi.json; API key {'required' if api_key else 'off'})", flush=True)
    if api_key is None and not is_loopback(host):
        print(f"warning: serving on {host} without an API key: anyone who can reach port {port} can use it. "
              f"Pass --api-key-file FILE (or set {KEY_FILE_ENV}) to require 'Authorization: Bearer <key>'.",
              file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn_config(app, host, port, limits, log_level=log_level)).run()


def _scaled(value: float, unit: float, flag: str) -> int:
    """A size given in MB or megapixels as a whole number of bytes or pixels (Limits checks the range)."""
    if not math.isfinite(value) or value * unit >= 2 ** 63:
        raise ValueError(f"invalid limits: {flag} must be a finite number > 0, got {value!r}")
    return int(value * unit)


def cmd_serve(args) -> int:
    # Limits() checks every limit, before the model is loaded: a bad value ends here with one line and exit code 2.
    limits = Limits(max_body_bytes=_scaled(args.max_body_mb, 1024 * 1024, "--max-body-mb"),
                    max_batch=args.max_batch, max_inflight=args.max_inflight, max_connections=args.max_connections,
                    max_client_connections=args.max_client_connections,
                    header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                    queue_timeout_s=args.queue_timeout,
                    decode_pixels=_scaled(args.decode_megapixels, 1e6, "--decode-megapixels"))
    serve(args.model, args.host, args.port, args.device, limits, args.api_key_file, args.log_level)
    return 0


def add_cli(sub) -> None:
    d = Limits()
    p = sub.add_parser("serve", help="HTTP API and web page for a saved model",
                       description="Serve a saved model over HTTP. The limits, and what a client sees when it "
                                   "hits one, are in docs/limits.md; GET /model shows the ones in force.")
    p.add_argument("--model", required=True,
                   help="saved model folder (a run's model/), or one written by `genrefusion export` (no torch)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: loopback only; another address without an API key warns)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--api-key-file", default=None,
                   help=f"file holding the API key every endpoint but /health requires as 'Authorization: Bearer "
                        f"<key>' (or ${KEY_FILE_ENV}, or the key itself in ${KEY_ENV})")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 1024 / 1024,
                   help="largest request accepted (poster upload or batch)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="movies per /predict/batch request")
    p.add_argument("--max-inflight", type=int, default=d.max_inflight,
                   help="predictions received or computed at once; more wait --queue-timeout, then get 503")
    p.add_argument("--queue-timeout", type=float, default=d.queue_timeout_s,
                   help="seconds a prediction waits for a slot or for decode budget before 503")
    p.add_argument("--decode-megapixels", type=float, default=d.decode_pixels / 1e6,
                   help="poster pixels decoded at once, server-wide")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections; past it a new one replaces the longest-idle one (of the client holding "
                        "the most), or, when every one is busy, is answered 503 and closed (/health excepted)")
    p.add_argument("--max-client-connections", type=int, default=d.max_client_connections,
                   help="open connections of one client address (behind a reverse proxy, every client has the "
                        "proxy's: raise it to --max-connections); past it likewise")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds a request's headers may take to arrive")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                   help="seconds a request's body may take to arrive after its headers")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
