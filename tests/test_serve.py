"""The HTTP service for real: uvicorn on loopback, every endpoint, every kind of bad input, and the page driven in
headless Chromium (Debian's `chromium`, through Playwright)."""
from __future__ import annotations

import base64
import io
import os
import threading
import time
from pathlib import Path

import httpx2
import pytest
from PIL import Image

from genrefusion.predict import load_model
from genrefusion.serving import create_app

CHROMIUM = Path("/usr/bin/chromium")
MAX_BODY = 2 * 1024 * 1024  # small, so the oversized-upload tests stay fast


class LoopbackServer:
    """uvicorn in a background thread on 127.0.0.1, on a free port the OS picks."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def predictor(trained_run):
    return load_model(trained_run / "model")


@pytest.fixture(scope="module")
def base_url(predictor):
    with LoopbackServer(create_app(predictor, max_body_bytes=MAX_BODY)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx2.Client(base_url=base_url, timeout=60, trust_env=False) as c:  # trust_env: never via a proxy
        yield c


def _jpeg(colour=(30, 60, 170), size=(80, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_health_model_and_openapi(client, predictor):
    assert client.get("/health").json() == {"status": "ok", "fusion": "gmu"}
    info = client.get("/model").json()
    assert info["fusion"] == "gmu" and info["genres"] == list(predictor.genres)
    assert set(info["encoders"]) == {"text", "image"} and len(info["thresholds"]) == 23
    assert info["missing_modality_ok"] == {"text": True, "image": True}
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/explain", "/health", "/model"} <= set(schema["paths"])
    form = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    assert client.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN
    page = client.get("/")
    assert page.status_code == 200 and "genrefusion" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_predict_matches_the_library(client, predictor):
    r = client.post("/predict", files={"poster": ("p.jpg", _jpeg(), "image/jpeg")}, data={"plot": "space ship alien"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predictor.predict_one(Image.open(io.BytesIO(_jpeg())).convert("RGB"), "space ship alien")
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    assert body["predicted"] == expected["predicted"] and body["genres"][0]["genre"] == "Sci-Fi"
    assert body["fusion"]["kind"] == "gmu_gate" and set(body["contribution"]) == {"text", "image"}
    only_plot = client.post("/predict", data={"plot": "space ship alien"}).json()
    assert only_plot["used"] == {"text": True, "image": False}


def test_batch(client, predictor):
    movies = [{"id": "a", "plot": "ghost night dark"},
              {"id": "b", "poster_base64": base64.b64encode(_jpeg()).decode()},
              {"plot": "funny friends", "poster_base64": base64.b64encode(_jpeg((230, 200, 40))).decode()}]
    r = client.post("/predict/batch", json={"movies": movies})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == ["a", "b", None]
    single = client.post("/predict", data={"plot": "ghost night dark"}).json()
    assert results[0]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
    bad = client.post("/predict/batch", json={"movies": [movies[0], {"id": "x", "poster_base64": "!!!"}]})
    assert bad.status_code == 422 and "movies[1] (id x).poster_base64: not valid base64" in bad.json()["detail"]
    broken = base64.b64encode(_jpeg()[:300]).decode()
    bad = client.post("/predict/batch", json={"movies": [{"poster_base64": broken}]})
    assert bad.status_code == 422 and "movies[0].poster" in bad.json()["detail"]
    too_many = client.post("/predict/batch", json={"movies": [movies[0]] * 33})
    assert too_many.status_code == 422
    assert client.post("/predict/batch", json={"movies": []}).status_code == 422
    wrong = client.post("/predict/batch", data={"movies": "x"})
    assert wrong.status_code == 415 and "application/json" in wrong.json()["detail"]


def test_explain_endpoint(client):
    r = client.post("/explain", files={"poster": ("p.jpg", _jpeg(), "image/jpeg")},
                    data={"plot": "space ship alien and a ghost", "genre": "Sci-Fi", "steps": "8"})
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["genre"] == "Sci-Fi" and len(e["poster"]["grid"]) == 7 and len(e["poster"]["grid"][0]) == 7
    assert [w["word"] for w in e["plot"]["words"]] == "space ship alien and a ghost".split()
    r = client.post("/explain", data={"plot": "space", "genre": "Cartoon"})
    assert r.status_code == 422 and "unknown genre 'Cartoon'" in r.json()["detail"]


BAD_REQUESTS = {
    # name: (request kwargs, expected status, words the message must contain)
    "not an image": (dict(files={"poster": ("notes.txt", b"just some text", "text/plain")}), 415, "not an image"),
    "corrupt image": (dict(files={"poster": ("cut.jpg", _jpeg()[:300], "image/jpeg")}), 422, "truncated or corrupt"),
    "empty file": (dict(files={"poster": ("empty.jpg", b"", "image/jpeg")}), 422, "empty"),
    "decompression bomb": (dict(files={"poster": ("bomb.png", _png(Image.new("1", (8000, 8000))), "image/png")}),
                           413, "decompression bomb"),
    "oversized upload": (dict(files={"poster": ("big.jpg", b"\xff" * (MAX_BODY + 10), "image/jpeg")}), 413,
                         "over the limit"),
    "empty plot": (dict(data={"plot": ""}, files={"poster": ("p.jpg", _jpeg(), "image/jpeg")}), 422, "plot: is empty"),
    "blank plot": (dict(data={"plot": "   \n"}), 422, "plot: is empty"),
    "oversized plot": (dict(data={"plot": "word " * 5000}), 413, "over the limit"),
    "missing fields": (dict(files={"other": ("x.txt", b"x", "text/plain")}), 422, "nothing to predict from"),
    "no body": (dict(), 415, "multipart/form-data"),
    "wrong content type": (dict(json={"plot": "space ship"}), 415, "multipart/form-data"),
    "poster as text": (dict(data={"poster": "not a file", "plot": "x"}), 422, "poster"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(client, name):
    kwargs, status, words = BAD_REQUESTS[name]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in (detail if isinstance(detail, str) else str(detail))
    assert client.get("/health").status_code == 200
    assert client.post("/predict", data={"plot": "space ship"}).status_code == 200


def test_a_streamed_body_is_cut_off_at_the_limit(client):
    def chunks():  # no Content-Length: the limit has to be enforced while the body arrives
        yield (b'--abc\r\nContent-Disposition: form-data; name="poster"; filename="big.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(40):
            yield b"x" * 100_000

    r = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=abc"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert client.get("/health").status_code == 200


def test_concurrent_requests_are_answered_correctly(base_url, client):
    expected = {p: client.post("/predict", data={"plot": p}).json()["probabilities"]
                for p in ("space ship alien", "ghost night dark", "funny friends school")}
    results, errors = [], []

    def worker(plot):
        try:
            with httpx2.Client(base_url=base_url, timeout=60, trust_env=False) as c:
                for _ in range(3):
                    results.append((plot, c.post("/predict", data={"plot": plot}).json()["probabilities"]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(p,)) for p in list(expected) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 18
    for plot, probs in results:
        assert probs == pytest.approx(expected[plot], abs=1e-5)


def test_serve_command_starts_the_server(trained_run, tmp_path):
    """`genrefusion serve` as a person runs it: a separate process, answering on the port it was given."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys; from genrefusion import cli; "
            "cli.PLUGIN_MODULES = tuple(dict.fromkeys(cli.PLUGIN_MODULES + ('genrefusion.serving',))); "
            "sys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", str(trained_run / "model"),
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False)
                break
            except httpx2.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = proc.stdout.read() if proc.poll() is not None else ""
                    raise AssertionError(f"server did not come up:\n{output}")
                time.sleep(0.25)
        assert r.json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# --- the page, in headless Chromium --------------------------------------------------------------------------------
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run must `apt-get install chromium`")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_page_in_headless_chromium(browser, base_url, client, tmp_path, request):
    poster = tmp_path / "poster.jpg"
    poster.write_bytes(_jpeg())
    plot = "space ship alien world battle and a ghost"
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(base_url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('gmu')")
    page.set_input_files("#poster", str(poster))
    page.fill("#plot", plot)
    page.click("#submit")
    page.wait_for_selector("body[data-state=explained]", timeout=60_000)

    rows = page.locator("#bars .row")
    assert rows.count() == 23
    shown = {rows.nth(i).get_attribute("data-genre"): float(rows.nth(i).get_attribute("data-probability"))
             for i in range(23)}
    api = client.post("/predict", files={"poster": ("p.jpg", _jpeg(), "image/jpeg")}, data={"plot": plot}).json()
    assert shown == pytest.approx(api["probabilities"], abs=1e-3)
    assert page.locator("#bars .threshold").count() == 23
    assert page.locator("#predicted .chip").all_inner_texts() == api["predicted"]
    assert page.locator("#occlusion .stack").get_attribute("data-text") == f"{api['contribution']['text']:.4f}"
    assert page.locator("#fusion-weights").is_visible()
    assert page.locator("#heatmap").get_attribute("data-grid") == "7x7"
    assert page.locator("#words span").count() == len(plot.split()) and page.locator("#top-words li").count() > 0
    shot = Path(os.environ.get("GENREFUSION_SCREENSHOT_DIR", tmp_path)) / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000

    # a bad upload shows the server's message, and the page still works afterwards
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"this is not a jpeg")
    page.set_input_files("#poster", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    page.set_input_files("#poster", str(poster))
    page.click("#submit")
    page.wait_for_selector("body[data-state=explained]", timeout=60_000)
    assert page.locator("#error").is_hidden()
    page.close()
