"""What the service tests share: a real uvicorn server on loopback, small posters made on the fly, raw sockets."""
from __future__ import annotations

import io
import socket
import threading
import time

from PIL import Image


class LoopbackServer:
    """uvicorn in a background thread on 127.0.0.1, on a free port the OS picks, with the service's connection
    layer (serving.protocol) exactly as `genrefusion serve` runs it."""

    def __init__(self, app):
        import uvicorn

        try:
            from genrefusion.serving.protocol import uvicorn_config
        except ImportError:  # the service before its connection layer existed (to show a test failing on it)
            self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        else:
            self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, app.state.limits, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def jpeg(colour=(30, 60, 170), size=(80, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def connect(port: int, timeout: float = 20, source: str = "127.0.0.1") -> socket.socket:
    """A socket to the server on loopback, from `source` (any 127.x.y.z: loopback has many addresses)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def read_response(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket's timeout: socket.timeout)."""
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
