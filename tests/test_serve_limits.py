"""The service under hostile clients, over real sockets: slow headers and bodies, too many connections, /health
while every prediction slot is taken, the decode budget, the API key. Each server here gets small limits so that
the tests take a second or two; no assertion is on a timing (the socket timeouts only bound how long a broken
server could keep a test waiting)."""
from __future__ import annotations

import select
import threading
import time

import httpx2
import pytest
from PIL import Image

from genrefusion.cli.predict import load_model
from genrefusion.serving import create_app
from serving_helpers import LoopbackServer, connect, jpeg, png, read_response


@pytest.fixture(scope="module")
def predictor(trained_run):
    return load_model(trained_run / "model")


def trickle(s, data: bytes, times: int = 200) -> None:
    """Send `data` every 0.1 s until the server answers (at most `times` times)."""
    for _ in range(times):
        s.sendall(data)
        if select.select([s], [], [], 0.1)[0]:
            return


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _body(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1]


def test_slow_headers_are_cut_off(predictor):
    """Headers sent a byte at a time used to keep a connection open forever (800 sockets held)."""
    with LoopbackServer(create_app(predictor, header_timeout_s=0.5)) as url:
        port = int(url.rsplit(":", 1)[1])
        with connect(port) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            trickle(s, b"X-Slow: y\r\n")  # a header line every 0.1 s, never the blank line that ends them
            raw = read_response(s)
        assert _status(raw) == 408 and b"request_timeout" in _body(raw), raw
        with connect(port) as s:  # a connection that never sends anything is closed too
            assert _status(read_response(s)) == 408
        assert httpx2.get(url + "/health", trust_env=False).status_code == 200


def test_slow_body_is_cut_off(predictor):
    with LoopbackServer(create_app(predictor, body_timeout_s=0.5)) as url:
        port = int(url.rsplit(":", 1)[1])
        with connect(port) as s:
            s.sendall(b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"movies\": [")
            trickle(s, b" ")
            raw = read_response(s)
        assert _status(raw) == 408 and b"body not complete" in _body(raw), raw
        assert httpx2.get(url + "/health", trust_env=False).status_code == 200


def partial_request(port: int, source: str = "127.0.0.1"):
    """A socket that connected and sent the start of a request whose headers never end."""
    s = connect(port, source=source)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n")
    return s


def test_idle_sockets_do_not_lock_clients_out(predictor):
    """About 100 idle sockets (a connect and a partial request each) locked every client out, /health included:
    503 for the whole header timeout (10 s), and again as soon as they were reopened. With the default limits and
    120 such sockets open, twice over: /health answers 200 within a second and a real /predict succeeds."""
    with LoopbackServer(create_app(predictor)) as url:  # the default limits: 100 connections, 10 s for headers
        port = int(url.rsplit(":", 1)[1])
        idle = []
        try:
            for _ in range(2):
                idle += [partial_request(port) for _ in range(120)]
                time.sleep(0.3)  # let the server take them all
                with httpx2.Client(base_url=url, timeout=5, trust_env=False) as c:
                    t0 = time.monotonic()
                    r = c.get("/health")
                    took = time.monotonic() - t0
                    assert r.status_code == 200 and took < 1.0, (r.status_code, r.text, f"{took:.2f} s")
                    r = c.post("/predict", data={"plot": "space ship alien"},
                               files={"poster": ("p.jpg", jpeg(), "image/jpeg")})
                    assert r.status_code == 200, r.text
            # The sockets that made room were answered 408 and closed: the server never held more than its limit.
            answered = [s for s in idle if select.select([s], [], [], 0)[0]]
            assert len(answered) >= len(idle) - 100, len(answered)
            raw = read_response(answered[0])
            assert _status(raw) == 408 and b"make room" in _body(raw), raw
        finally:
            for s in idle:
                s.close()


def test_health_is_answered_when_every_connection_is_busy(predictor):
    """Past the limits, with every connection busy with a request, a newcomer is refused at once with 503 +
    Retry-After; but /health is still answered (a load balancer must not see a dead server)."""
    app = create_app(predictor, max_connections=4, queue_timeout_s=30)
    with LoopbackServer(app) as url:
        port = int(url.rsplit(":", 1)[1])
        statuses = []

        def client():
            with httpx2.Client(base_url=url, timeout=60, trust_env=False) as c:
                statuses.append(c.post("/predict", data={"plot": "space ship"}).status_code)

        threads = [threading.Thread(target=client) for _ in range(4)]
        with predictor.lock:  # inference cannot start: the four requests hold their connections
            for t in threads:
                t.start()
            for _ in range(250):
                if app.active == 4:
                    break
                time.sleep(0.02)
            assert app.active == 4
            with httpx2.Client(base_url=url, timeout=5, trust_env=False) as c:
                assert c.get("/health").json()["status"] == "ok"
            for request in (b"GET /model HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /predict HTTP/1.1\r\nHost: x\r\n"):
                with connect(port) as s:
                    s.sendall(request)
                    raw = read_response(s)
                assert _status(raw) == 503 and b"retry-after: 2" in raw.lower() and b"busy" in _body(raw), raw
                assert b"the server has 4 connections open" in _body(raw), raw
        for t in threads:
            t.join()
        assert statuses == [200] * 4


def test_one_client_address_cannot_take_every_connection(predictor):
    """A client address holds at most max_client_connections: past it, its own longest-idle connection makes room,
    or, all busy, it gets 503, while other addresses are served. (Loopback has many addresses: 127.0.0.x.)"""
    app = create_app(predictor, max_connections=8, max_client_connections=3, queue_timeout_s=30, body_timeout_s=30)
    with LoopbackServer(app) as url:
        port = int(url.rsplit(":", 1)[1])
        hog, idle = [connect(port, source="127.0.0.2") for _ in range(3)], []
        try:
            for s in hog:  # three requests whose bodies never finish: busy connections
                s.sendall(b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{")
            time.sleep(0.3)
            with connect(port, source="127.0.0.2") as s:
                s.sendall(b"GET /model HTTP/1.1\r\nHost: x\r\n\r\n")
                raw = read_response(s)
            assert _status(raw) == 503 and b"this client has 3 connections open" in _body(raw), raw
            idle = [partial_request(port, source="127.0.0.3") for _ in range(3)]
            time.sleep(0.3)
            with connect(port, source="127.0.0.3") as s:  # its oldest idle socket makes room
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert _status(read_response(s)) == 200
            time.sleep(0.1)
            assert [bool(select.select([s], [], [], 0)[0]) for s in idle] == [True, False, False]
            assert _status(read_response(idle[0])) == 408
            r = httpx2.post(url + "/predict", data={"plot": "space ship"}, timeout=60, trust_env=False)
            assert r.status_code == 200, r.text
        finally:
            for s in hog + idle:
                s.close()


def test_broken_http_gets_the_error_body(predictor):
    with LoopbackServer(create_app(predictor)) as url:
        with connect(int(url.rsplit(":", 1)[1])) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            raw = read_response(s)
        assert _status(raw) == 400 and b'"code": "invalid_request"' in _body(raw), raw


def test_health_and_model_answer_while_every_slot_is_busy(predictor):
    """/health took up to 8 s under 200 clients: it shared the saturated thread pool with the predictions."""
    with LoopbackServer(create_app(predictor, queue_timeout_s=30)) as url:
        statuses = []

        def client():
            with httpx2.Client(base_url=url, timeout=60, trust_env=False) as c:
                statuses.append(c.post("/predict", data={"plot": "space ship"}).status_code)

        threads = [threading.Thread(target=client) for _ in range(48)]
        with predictor.lock:  # inference cannot start: every prediction waits
            for t in threads:
                t.start()
            time.sleep(1.5)  # let them all arrive and take their slots (and, before the fix, the thread pool)
            with httpx2.Client(base_url=url, timeout=5, trust_env=False) as c:
                assert c.get("/health").json()["status"] == "ok"
                assert c.get("/model").status_code == 200
        for t in threads:
            t.join()
        assert statuses.count(200) == 48


def test_predictions_past_the_slots_get_503_with_retry_after(predictor):
    app = create_app(predictor, max_inflight=1, queue_timeout_s=0.3)
    with LoopbackServer(app) as url:
        first = []
        with predictor.lock:
            t = threading.Thread(target=lambda: first.append(
                httpx2.post(url + "/predict", data={"plot": "space"}, timeout=60, trust_env=False)))
            t.start()
            for _ in range(200):  # until the first request holds the only slot
                if app.active == 1:
                    break
                time.sleep(0.02)
            r = httpx2.post(url + "/predict", data={"plot": "space"}, timeout=60, trust_env=False)
            assert r.status_code == 503 and r.headers["retry-after"] == "2" and r.json()["code"] == "busy"
        t.join()
        assert first[0].status_code == 200


def test_decoding_waits_for_the_pixel_budget(predictor):
    """Eight concurrent 36-megapixel posters took 2.6 GB: decoding now draws on a server-wide pixel budget."""
    app = create_app(predictor, decode_pixels=100_000, queue_timeout_s=0.3)
    poster = png(Image.new("RGB", (400, 400), (200, 30, 30)))  # 160,000 pixels: needs the whole budget
    with LoopbackServer(app) as url:
        with app.state.pixel_budget.hold(1, timeout=1):  # another request is decoding
            r = httpx2.post(url + "/predict", files={"poster": ("p.png", poster, "image/png")}, timeout=60,
                            trust_env=False)
            assert r.status_code == 503 and r.json()["code"] == "busy" and "retry-after" in r.headers
        r = httpx2.post(url + "/predict", files={"poster": ("p.png", poster, "image/png")}, timeout=60,
                        trust_env=False)
        assert r.status_code == 200, r.text
        assert app.state.pixel_budget.free == app.state.pixel_budget.total


def test_the_pixel_cost_is_read_from_the_header():
    from genrefusion.cli.predict import poster_decode_pixels

    big_png = png(Image.new("RGB", (3000, 2000)))
    assert poster_decode_pixels(big_png) == 6_000_000
    big_jpeg = jpeg(size=(4000, 4000))
    assert poster_decode_pixels(big_jpeg) == 2000 * 2000  # draft mode: 1/2, the smallest scale still >= 1024 px
    assert poster_decode_pixels(b"not an image") == 0


# --- the API key -------------------------------------------------------------------------------------------------
KEY = "s3cret-key-for-tests-0123456789"


@pytest.fixture(scope="module")
def keyed_url(predictor):
    with LoopbackServer(create_app(predictor, api_key=KEY)) as url:
        yield url


def test_the_api_key_is_required_everywhere_but_health(keyed_url):
    with httpx2.Client(base_url=keyed_url, timeout=60, trust_env=False) as c:
        assert c.get("/health").status_code == 200
        for method, path in (("GET", "/model"), ("GET", "/openapi.json"), ("POST", "/predict"),
                             ("POST", "/predict/batch"), ("POST", "/explain"), ("GET", "/nothing")):
            r = c.request(method, path)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["field"] == "Authorization"
        wrong = c.get("/model", headers={"Authorization": "Bearer not-the-key"})
        assert wrong.status_code == 401 and "wrong" in wrong.json()["message"]
        assert c.get("/model", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        ok = {"Authorization": f"Bearer {KEY}"}
        info = c.get("/model", headers=ok).json()
        assert info["api_key_required"] is True
        assert c.post("/predict", data={"plot": "space ship"}, headers=ok).status_code == 200
        schema = c.get("/openapi.json", headers=ok).json()
        assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        assert schema["paths"]["/predict"]["post"]["security"] == [{"apiKey": []}]
        assert schema["paths"]["/health"]["get"]["security"] == []
        assert "401" in schema["paths"]["/model"]["get"]["responses"]
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # the page is public


def test_key_files_are_checked(tmp_path):
    from genrefusion.serving import read_api_key

    with pytest.raises(ValueError, match="no such file"):
        read_api_key(tmp_path / "missing.key", environ={})
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_api_key(empty, environ={})
    key = tmp_path / "api.key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    warnings = []
    assert read_api_key(key, environ={}, warn=lambda *a, **k: warnings.append(a[0])) == KEY and not warnings
    key.chmod(0o644)
    assert read_api_key(key, environ={}, warn=lambda *a, **k: warnings.append(a[0])) == KEY
    assert "readable by every user" in warnings[0]
    assert read_api_key(None, environ={"GENREFUSION_API_KEY_FILE": str(key)}, warn=lambda *a, **k: None) == KEY
    assert read_api_key(None, environ={"GENREFUSION_API_KEY": KEY}) == KEY
    assert read_api_key(None, environ={}) is None


def test_serving_beyond_loopback_without_a_key_warns(trained_run, serving_cli, monkeypatch, capsys):
    import uvicorn

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: ran.append(self.config))
    monkeypatch.delenv("GENREFUSION_API_KEY", raising=False)
    monkeypatch.delenv("GENREFUSION_API_KEY_FILE", raising=False)
    assert serving_cli(["serve", "--model", str(trained_run / "model"), "--host", "0.0.0.0", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "without an API key" in err and "--api-key-file" in err
    assert ran[0].timeout_keep_alive == 5 and ran[0].http.limits.header_timeout_s == 10
    assert serving_cli(["serve", "--model", str(trained_run / "model"), "--port", "0"]) == 0
    assert "without an API key" not in capsys.readouterr().err
    assert serving_cli(["serve", "--model", str(trained_run / "model"), "--api-key-file", "/no/such.key"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [
    (["--max-connections", "0"], "--max-connections (max_connections) must be a whole number >= 1, got 0"),
    (["--max-batch", "0"], "--max-batch (max_batch) must be a whole number >= 1, got 0"),
    (["--max-inflight", "-1"], "--max-inflight (max_inflight) must be a whole number >= 1, got -1"),
    (["--max-inflight", "0"], "--max-inflight"),
    (["--header-timeout", "0"], "--header-timeout (header_timeout_s) must be a finite number of seconds > 0"),
    (["--body-timeout", "nan"], "--body-timeout"),
    (["--queue-timeout", "-1"], "--queue-timeout (queue_timeout_s) must be a finite number of seconds >= 0"),
    (["--max-body-mb", "inf"], "--max-body-mb must be a finite number > 0, got inf"),
    (["--max-body-mb", "0"], "--max-body-mb"),
    (["--decode-megapixels", "-2"], "--decode-megapixels"),
    (["--max-batch", "0", "--max-connections", "0"], "--max-batch (max_batch) must be a whole number >= 1, got 0; "
                                                     "--max-connections"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_limits_are_checked_at_start_up(trained_run, serving_cli, monkeypatch, capsys, flags, words):
    """--max-connections 0 or --max-batch 0 started a server that refused everything, --max-inflight -1 died with
    asyncio's "Semaphore initial value must be >= 0": one line naming the option, exit code 2, no server."""
    import uvicorn

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: ran.append(self.config))
    assert serving_cli(["serve", "--model", str(trained_run / "model"), "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid limits: ") and err.count("\n") == 1 and words in err, err
    assert not ran
    assert serving_cli(["serve", "--model", str(trained_run / "model"), "--port", "0", "--queue-timeout", "0"]) == 0
    assert ran and ran[0].http.limits.queue_timeout_s == 0  # never waiting for a slot is a valid choice


def test_limits_are_checked_in_the_library_too(predictor):
    with pytest.raises(ValueError, match=r"--max-inflight \(max_inflight\) must be a whole number >= 1, got 0"):
        create_app(predictor, max_inflight=0)
    with pytest.raises(ValueError, match=r"max_header_bytes must be a whole number of bytes >= 1024, got 10"):
        create_app(predictor, max_header_bytes=10)
    with pytest.raises(ValueError, match=r"keep_alive_s must be a whole number of seconds >= 0, got 1.5"):
        create_app(predictor, keep_alive_s=1.5)


def test_concurrent_huge_posters_stay_within_memory(trained_run, tmp_path):
    """8 concurrent 36-megapixel posters took the server from 0.4 to 2.4 GB resident, and it kept 2.4 GB after.
    Measured on the server's own process (`genrefusion serve`, its /proc status): the peak stays well under
    1 GB above idle (measured ~0.4 GB) and the memory goes back once the burst is over."""
    import io
    import socket
    import subprocess
    import sys

    from PIL import ImageDraw

    img = Image.new("RGB", (6000, 6000), (200, 30, 30))
    ImageDraw.Draw(img).rectangle((1000, 1000, 2000, 5000), fill=(20, 20, 150))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    poster = buf.getvalue()  # ~100 KB that decodes to 108 MB
    del img
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys; from genrefusion.cli import commands as cli; "
            "cli.PLUGIN_MODULES = tuple(dict.fromkeys(cli.PLUGIN_MODULES + ('genrefusion.serving',))); "
            "sys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", str(trained_run / "model"),
                             "--port", str(port), "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"

    def rss(key="VmRSS"):
        for line in open(f"/proc/{proc.pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    try:
        for _ in range(400):
            try:
                httpx2.post(url + "/predict", data={"plot": "space"}, timeout=30, trust_env=False).raise_for_status()
                break
            except httpx2.TransportError:
                assert proc.poll() is None, "server exited"
                time.sleep(0.25)
        idle, peak = rss(), [0.0]
        statuses = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.02)

        def upload():
            r = httpx2.post(url + "/predict", files={"poster": ("huge.png", poster, "image/png")}, timeout=300,
                            trust_env=False)
            statuses.append(r.status_code)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=upload) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        sampler.join()
        time.sleep(1)  # the server trims freed memory once no prediction is in flight
        after = rss()
        peak_mb = max(peak[0], rss("VmHWM"))  # the kernel's high-water mark catches what sampling missed
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, statuses
    assert peak_mb - idle < 1024, f"idle {idle:.0f} MB, peak {peak_mb:.0f} MB"
    assert after - idle < 256, f"idle {idle:.0f} MB, {after:.0f} MB after the burst"


def test_an_onnx_encoder_gives_back_what_a_batch_needed(tmp_path):
    """After a batch of sixteen 6000 x 6000 posters an ONNX server stayed ~130 MB above idle for good: onnxruntime's
    CPU arena kept what the image encoder's largest run needed. An exported encoder part run on a batch now gives
    that back when the run ends. Here a stand-in image encoder whose run on 16 posters needs ~150 MB of activations
    (Tile to 24 channels at 224 x 224, Relu, mean) leaves the process where it was."""
    import gc

    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from genrefusion.inference.onnx_predictor import _Part
    from genrefusion.serving.limits import release_memory, tune_malloc

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

    pixels = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, 224, 224])
    pooled = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["n", 24])
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [4], [1, 8, 1, 1])
    nodes = [helper.make_node("Tile", ["pixel_values", "repeats"], ["wide"]), helper.make_node("Relu", ["wide"], ["r"]),
             helper.make_node("Exp", ["r"], ["e"]), helper.make_node("ReduceMean", ["e"], ["pooled"], axes=[2, 3],
                                                                      keepdims=0)]
    graph = helper.make_graph(nodes, "stand-in", [pixels], [pooled], [repeats])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              tmp_path / "image.0.onnx")
    record = {"kind": "image", "file": "image.0.onnx", "dim": 24, "size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
              "inputs": [{"name": "pixel_values", "shape": ["n", 3, 224, 224], "type": "tensor(float)"}],
              "outputs": [{"name": "pooled", "shape": ["n", 24], "type": "tensor(float)"}]}
    tune_malloc()  # as `genrefusion serve` does
    part = _Part(tmp_path, record, threads=1, sequences=False)
    posters = [Image.new("RGB", (224, 224), (200, 30, 30 + i)) for i in range(16)]
    part.run(posters[:1])
    gc.collect()
    release_memory()
    before = rss_mb()
    assert part.run(posters)[0].shape == (16, 24)
    gc.collect()
    release_memory()
    assert rss_mb() - before < 32, f"{before:.0f} MB before the run, {rss_mb():.0f} MB after"


def test_every_limit_is_documented():
    """docs/limits.md lists every limit the service enforces (each Limits field, by its `serve` option where it has
    one), every option of `serve` that sets one, and every error code a client can see."""
    import argparse
    import dataclasses

    from conftest import REPO
    from genrefusion.serving import protocol
    from genrefusion.serving.cli import add_cli
    from genrefusion.serving.errors import CODES
    from genrefusion.serving.limits import FLAGS, Limits

    doc = (REPO / "docs" / "limits.md").read_text(encoding="utf-8")
    for field in dataclasses.fields(Limits):
        assert f"`{FLAGS.get(field.name, field.name)}`" in doc, field.name
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    serve = parser._subparsers._group_actions[0].choices["serve"]
    options = [o for a in serve._actions for o in a.option_strings if o.startswith("--") and o not in (
        "--help", "--model", "--host", "--port", "--device", "--log-level")]
    for option in options:
        assert f"`{option}`" in doc or f"`{option} " in doc, option
    for code in set(CODES.values()):
        assert f"`{code}`" in doc, code
    assert f"{protocol.HEALTH_RESERVE} more connections" in doc and f"{protocol.HEALTH_HEADER_S:g} s" in doc
