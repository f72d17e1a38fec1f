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

from genrefusion.cli.predict import load_model
from genrefusion.serving import create_app
from serving_helpers import LoopbackServer
from serving_helpers import jpeg as _jpeg
from serving_helpers import png as _png

CHROMIUM = Path("/usr/bin/chromium")
MAX_BODY = 2 * 1024 * 1024  # small, so the oversized-upload tests stay fast
ERROR_KEYS = {"code", "message", "field"}


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


@pytest.fixture(scope="module")
def openapi(client):
    return client.get("/openapi.json").json()


def assert_error(r, status: int, words: str, openapi: dict, path: str, method: str = "post") -> dict:
    """The one error body, a status the schema documents for this route, and the expected words."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == ERROR_KEYS and isinstance(body["message"], str), body
    codes = openapi["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
    assert body["code"] in codes
    assert str(status) in openapi["paths"][path][method]["responses"], f"{status} not documented for {path}"
    assert words in body["message"], body
    return body


def test_health_model_and_openapi(client, predictor):
    assert client.get("/health").json() == {"status": "ok", "fusion": "gmu"}
    info = client.get("/model").json()
    assert info["limits"]["max_body_bytes"] == MAX_BODY and info["api_key_required"] is False
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


def test_batch(client, predictor, openapi):
    movies = [{"id": "a", "plot": "ghost night dark"},
              {"id": "b", "poster_base64": base64.b64encode(_jpeg()).decode()},
              {"plot": "funny friends", "poster_base64": base64.b64encode(_jpeg((230, 200, 40))).decode()}]
    r = client.post("/predict/batch", json={"movies": movies})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == ["a", "b", None]
    single = client.post("/predict", data={"plot": "ghost night dark"}).json()
    assert results[0]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
    bad = client.post("/predict/batch", json={"movies": [movies[0], {"id": "x", "poster_base64": "!!!!"}]})
    body = assert_error(bad, 422, "movies[1].poster_base64: not valid base64", openapi, "/predict/batch")
    assert body["field"] == "movies[1].poster_base64"
    broken = base64.b64encode(_jpeg()[:300]).decode()
    bad = client.post("/predict/batch", json={"movies": [{"poster_base64": broken}]})
    assert assert_error(bad, 422, "truncated or corrupt", openapi, "/predict/batch")["field"] == \
        "movies[0].poster_base64"
    too_many = client.post("/predict/batch", json={"movies": [movies[0]] * 33})
    assert_error(too_many, 422, "at most 32", openapi, "/predict/batch")
    assert_error(client.post("/predict/batch", json={"movies": []}), 422, "movies", openapi, "/predict/batch")
    nothing = client.post("/predict/batch", json={"movies": [{"id": "a"}]})
    assert assert_error(nothing, 422, "needs plot or poster_base64", openapi, "/predict/batch")["field"] == \
        "movies[0]"
    wrong = client.post("/predict/batch", data={"movies": "x"})
    assert_error(wrong, 415, "application/json", openapi, "/predict/batch")
    not_json = client.post("/predict/batch", content=b'{"movies": [', headers={"content-type": "application/json"})
    assert_error(not_json, 400, "not valid JSON", openapi, "/predict/batch")


def test_explain_endpoint(client, openapi):
    r = client.post("/explain", files={"poster": ("p.jpg", _jpeg(), "image/jpeg")},
                    data={"plot": "space ship alien and a ghost"}, params={"genre": "Sci-Fi", "steps": 8})
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["genre"] == "Sci-Fi" and len(e["poster"]["grid"]) == 7 and len(e["poster"]["grid"][0]) == 7
    assert [w["word"] for w in e["plot"]["words"]] == "space ship alien and a ghost".split()
    r = client.post("/explain", data={"plot": "space"}, params={"genre": "Cartoon"})
    assert assert_error(r, 422, "unknown genre 'Cartoon'", openapi, "/explain")["field"] == "genre"
    r = client.post("/explain", data={"plot": "space"}, params={"steps": 65})
    assert assert_error(r, 422, "less than or equal to 64", openapi, "/explain")["field"] == "steps"
    r = client.post("/explain", data={"plot": "space", "genre": "Sci-Fi"})  # genre is a query parameter
    assert assert_error(r, 422, "genre: unknown field", openapi, "/explain")["field"] == "genre"


EMPTY_FORM = dict(content=b"--abc--\r\n", headers={"content-type": "multipart/form-data; boundary=abc"})
BAD_REQUESTS = {
    # name: (request kwargs, expected status, words the message must contain, the field named)
    "base64 is for the batch": (dict(data={"poster_base64": "AAAA"}), 422, "unknown field", "poster_base64"),
    "not an image": (dict(files={"poster": ("notes.txt", b"just some text", "text/plain")}), 415, "not an image",
                     "poster"),
    "corrupt image": (dict(files={"poster": ("cut.jpg", _jpeg()[:300], "image/jpeg")}), 422, "truncated or corrupt",
                      "poster"),
    "empty file": (dict(files={"poster": ("empty.jpg", b"", "image/jpeg")}), 422, "empty", "poster"),
    "decompression bomb": (dict(files={"poster": ("bomb.png", _png(Image.new("1", (8000, 8000))), "image/png")}),
                           413, "decompression bomb", "poster"),
    "oversized upload": (dict(files={"poster": ("big.jpg", b"\xff" * (MAX_BODY + 10), "image/jpeg")}), 413,
                         "over the limit", None),
    "empty plot": (dict(data={"plot": ""}, files={"poster": ("p.jpg", _jpeg(), "image/jpeg")}), 422, "plot: is empty",
                   "plot"),
    "blank plot": (dict(data={"plot": "   \n"}), 422, "plot: is empty", "plot"),
    "invisible plot": (dict(data={"plot": "\u200b\u2060\ufeff \u200b"}), 422, "plot: is empty", "plot"),
    "oversized plot": (dict(data={"plot": "word " * 5000}), 422, "over the limit of 20,000", "plot"),
    "unknown field": (dict(files={"other": ("x.txt", b"x", "text/plain")}), 422, "other: unknown field", "other"),
    "plot twice": (dict(data={"plot": ["a", "b"]}), 422, "plot: given 2 times", "plot"),
    # FormData.append("plot", null) in a browser sends the text "null"; schemathesis found the server took it as a plot
    "plot 'null'": (dict(data={"plot": "null"}, files={"poster": ("p.jpg", _jpeg(), "image/jpeg")}), 422,
                    "non-text value", "plot"),
    "plot 'undefined'": (dict(data={"plot": "undefined"}), 422, "non-text value", "plot"),
    "plot a bare number": (dict(data={"plot": "-7.09e+16"}), 422, "non-text value", "plot"),
    "nothing": (EMPTY_FORM, 422, "nothing to predict from", None),
    "no body": (dict(), 415, "multipart/form-data", "Content-Type"),
    "wrong content type": (dict(json={"plot": "space ship"}), 415, "multipart/form-data", "Content-Type"),
    "poster as text": (dict(data={"poster": "not a file", "plot": "x"}), 422, "poster: expected a file", "poster"),
    "broken multipart": (dict(content=b"xx", headers={"content-type": "multipart/form-data"}), 400, "boundary",
                         None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(client, openapi, name):
    kwargs, status, words, field = BAD_REQUESTS[name]
    r = client.post("/predict", **kwargs)
    assert assert_error(r, status, words, openapi, "/predict")["field"] == field
    assert client.get("/health").status_code == 200
    assert client.post("/predict", data={"plot": "space ship"}).status_code == 200


def test_non_ascii_base64_is_a_422_not_a_500(client, openapi):
    """schemathesis found it: base64.b64decode raises ValueError, not binascii.Error, for non-ASCII text."""
    for text in ("éééé", "ab\u00ffcdef", "\u6f22\u5b57\u6f22\u5b57"):
        r = client.post("/predict/batch", json={"movies": [{"poster_base64": text}]})
        assert assert_error(r, 422, "not valid base64", openapi, "/predict/batch")["field"] == \
            "movies[0].poster_base64"


def test_an_empty_poster_is_refused_as_the_schema_says(client, openapi):
    """`"poster_base64": ""` was schema-valid and refused with 422 "file is empty": the schema says minLength now (4,
    the base64 of one byte), and so does the multipart poster (1 byte)."""
    movie = openapi["components"]["schemas"]["BatchMovie"]["properties"]["poster_base64"]["anyOf"][0]
    assert movie["minLength"] == 4 and movie["format"] == "byte"
    form = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["poster"]["minLength"] == 1
    for text in ("", "AA="):
        r = client.post("/predict/batch", json={"movies": [{"poster_base64": text}]})
        body = assert_error(r, 422, "empty: a poster file has at least one byte", openapi, "/predict/batch")
        assert body["field"] == "movies[0].poster_base64"


def test_a_blank_batch_plot_is_empty_as_in_a_form(client, openapi):
    """A blank plot in a batch was refused with pydantic's "String should match pattern '[^\\u0009\\u000a...]'"
    (a 400-character regex); a form says "plot: is empty"."""
    for plot in ("   ", "\u3000\n", ""):
        r = client.post("/predict/batch", json={"movies": [{"plot": plot}]})
        body = assert_error(r, 422, "movies[0].plot: is empty", openapi, "/predict/batch")
        assert body["field"] == "movies[0].plot" and body["message"] == "movies[0].plot: is empty", body


def test_errors_never_echo_large_inputs(client, openapi):
    """A 10,000-movie batch used to come back whole inside FastAPI's 422 (459 KB)."""
    r = client.post("/predict/batch", json={"movies": [{"id": f"movie-{i}", "plot": "x" * 10} for i in range(10_000)]})
    assert_error(r, 422, "at most 32", openapi, "/predict/batch")
    assert len(r.content) < 1000 and "movie-1" not in r.text
    huge_key = "k" * 50_000  # an unknown field's name is repeated only in part
    r = client.post("/predict/batch", json={"movies": [{"plot": "a", huge_key: 1}]})
    assert_error(r, 422, "Extra inputs", openapi, "/predict/batch")
    assert len(r.content) < 1000
    r = client.post("/predict", files={huge_key[:1000]: ("x.txt", b"x", "text/plain")})
    assert_error(r, 422, "unknown field", openapi, "/predict")
    assert len(r.content) < 1000
    r = client.post("/predict/batch", json={"movies": [{"plot": "x" * 30_000}]})
    assert_error(r, 422, "movies[0].plot", openapi, "/predict/batch")
    assert len(r.content) < 1000


def test_model_info_shows_no_server_paths(client, trained_run):
    """/model used to return the training config: the data's path, the cache dir, the encoder folders."""
    text = client.get("/model").text
    root = str(trained_run.parent)
    assert root not in text and "/tmp" not in text and "cache" not in text, text
    info = client.get("/model").json()
    assert set(info["encoders"].values()) <= {"bert", "vit"} or all("/" not in v for v in info["encoders"].values())
    assert info["training"]["model"] == "gmu" and "data" not in info["training"]
    assert client.get("/openapi.json").text.count(root) == 0


def test_every_route_documents_the_error_body(openapi):
    """One error body for every 4xx, every status documented, nothing of FastAPI's own 422 left."""
    schemas = openapi["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["Error"]["required"]) == ERROR_KEYS
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert {"400", "408", "413", "503"} <= statuses, (path, method)
            if method == "post":
                assert {"415", "422"} <= statuses, path
            for status, resp in op["responses"].items():
                if status != "200":
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
            assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True


def test_the_schema_says_what_a_movie_needs(openapi):
    """This fusion model learned stand-ins for both modalities: a plot or a poster (not neither)."""
    form = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["minProperties"] == 1 and set(form["properties"]) == {"plot", "poster"}
    assert form["additionalProperties"] is False and form["properties"]["plot"]["maxLength"] == 20_000
    movie = openapi["components"]["schemas"]["BatchMovie"]
    assert [b["required"] for b in movie["anyOf"]] == [["plot"], ["poster_base64"]]
    assert openapi["components"]["schemas"]["BatchRequest"]["properties"]["movies"]["maxItems"] == 32
    genre = [p for p in openapi["paths"]["/explain"]["post"]["parameters"] if p["name"] == "genre"][0]
    assert genre["in"] == "query" and "Sci-Fi" in genre["schema"]["anyOf"][0]["enum"]


class _Model:
    """Just what the schema needs of a Predictor (its modalities and what it may lack)."""

    def __init__(self, modalities, can_miss):
        self.modalities, self._can_miss, self.genres = modalities, can_miss, ("Drama", "Comedy")

    def can_miss(self, m):
        return self._can_miss


def test_the_schema_follows_the_model():
    from genrefusion.serving import schema
    from genrefusion.serving.limits import Limits

    text_only = schema.form_body(_Model(("text",), False), Limits())["content"]
    assert text_only["multipart/form-data"]["schema"]["required"] == ["plot"]
    assert "poster" not in text_only["multipart/form-data"]["schema"]["properties"]
    assert "application/x-www-form-urlencoded" in text_only
    image_only = schema.form_body(_Model(("image",), False), Limits())["content"]
    assert image_only["multipart/form-data"]["schema"]["required"] == ["poster"]
    assert "application/x-www-form-urlencoded" not in image_only
    both = schema.form_body(_Model(("text", "image"), False), Limits())["content"]["multipart/form-data"]["schema"]
    assert sorted(both["required"]) == ["plot", "poster"] and "minProperties" not in both
    assert schema.requirement(["plot", "poster_base64"], False, non_null=True)["anyOf"][0] == {
        "required": ["plot"], "properties": {"plot": {"type": "string"}}}


@pytest.mark.parametrize("modalities, can_miss", [(("text",), False), (("image",), False),
                                                  (("text", "image"), False), (("text", "image"), True)],
                         ids=["text", "image", "both required", "either"])
def test_the_batch_schema_accepts_what_the_server_accepts(modalities, can_miss):
    """For a model needing one input or all of them, the batch movie's schema replaced its `properties` with
    {name: {type: string}}: it lost `id` (so a movie with an id broke the schema, which forbids other fields), the
    plot's length and blankness and the poster's format. The JSON schema and the server's validation agree on
    every movie here, for every kind of model."""
    import jsonschema_rs

    from genrefusion.serving.limits import Limits
    from genrefusion.serving.models import batch_request

    model = _Model(modalities, can_miss)
    model.fusion = "gmu"
    request = batch_request(model, Limits(max_plot_chars=50))
    validator = jsonschema_rs.Draft202012Validator(request.model_json_schema())
    movies = [{"id": "a", "plot": "space ship"}, {"plot": "space ship", "poster_base64": "AAAA"},
              {"poster_base64": "AAAA"}, {"id": "b", "poster_base64": "AAAA", "plot": "ghost"},
              {"plot": None, "poster_base64": "AAAA"}, {"plot": "ghost", "poster_base64": None}, {"plot": "   "},
              {"plot": "x" * 51, "poster_base64": "AAAA"}, {"poster_base64": ""}, {}, {"id": "c"},
              {"plot": "ghost", "other": 1}]
    for movie in movies:
        body = {"movies": [movie]}
        try:
            request.model_validate(body)
            server = True
        except ValueError:
            server = False
        assert validator.is_valid(body) == server, (movie, server)


def test_blank_means_the_same_to_the_schema_and_the_server():
    """The plot pattern's idea of blank is check_plot's (no visible character: whitespace and invisible characters
    such as U+200B), for every regex engine reading it."""
    import re

    from genrefusion.data.visible import is_blank
    from genrefusion.serving.schema import NOT_BLANK_PATTERN

    pattern = re.compile(NOT_BLANK_PATTERN)
    blank = (" ", "\t\n", "\x1c\x1f", "\u3000\u00a0", "\u2028", "\ufeff", "\x00", "\u200b", "\u200b\u2060\u00ad",
             "\u3164\u2800", "\ufe0f")
    for text in blank + ("a", " b ", "\u200bx", "é", "\U0001f600"):
        assert bool(pattern.search(text)) == (not is_blank(text)) == (text not in blank), repr(text)


def test_an_invisible_plot_in_a_batch_is_refused_like_a_blank_one(client, openapi):
    for plot in ("   ", "\u200b\u200b"):
        r = client.post("/predict/batch", json={"movies": [{"plot": plot}]})
        body = assert_error(r, 422, "movies[0].plot", openapi, "/predict/batch")
        assert body["field"] == "movies[0].plot"
    assert r.json()["message"] == client.post("/predict/batch", json={"movies": [{"plot": "  "}]}).json()["message"]


def test_a_streamed_body_is_cut_off_at_the_limit(client):
    def chunks():  # no Content-Length: the limit has to be enforced while the body arrives
        yield (b'--abc\r\nContent-Disposition: form-data; name="poster"; filename="big.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(40):
            yield b"x" * 100_000

    r = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=abc"})
    assert r.status_code == 413 and "over the limit" in r.json()["message"]
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
    code = ("import sys; from genrefusion.cli import commands as cli; "
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


def test_page_asks_for_the_api_key(browser, predictor):
    """With an API key on, the page (public) asks for the key, then predicts with it; a busy or refused request shows
    the server's message."""
    key = "page-test-key-0123456789"
    with LoopbackServer(create_app(predictor, api_key=key)) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#key-box:not([hidden])")
        assert "needs an API key" in page.inner_text("#model-info")
        page.fill("#plot", "space ship alien world")
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])")
        assert "API key" in page.inner_text("#error")
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('gmu')")
        page.click("#submit")
        page.wait_for_selector("body[data-state=explained]", timeout=60_000)
        assert page.locator("#bars .row").count() == 23 and page.locator("#error").is_hidden()
        page.close()


def test_unknown_query_parameters_are_refused(client, openapi):
    """schemathesis found /explain?genere=Horror (any undeclared parameter) answered as if it were not there."""
    r = client.post("/explain?genere=Horror", data={"plot": "space ship"})
    assert assert_error(r, 422, "unknown query parameter", openapi, "/explain")["field"] == "genere"
    r = client.get("/model?verbose=1")
    assert assert_error(r, 422, "it takes none", openapi, "/model", "get")["field"] == "verbose"
    assert client.post("/explain?genre=Horror&steps=2", data={"plot": "space ship"}).status_code == 200


def test_the_app_factory_only_wires():
    """create_app was a 301-line closure defining every schema and route: they live at module level now (models.py,
    routes.py, service.py), create_app defines no class nor function, and no function in serving/ is over 80 lines."""
    import ast

    import genrefusion.serving

    root = Path(genrefusion.serving.__file__).parent
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 80, f"{path.name}: {node.name} is over 80 lines"
            if isinstance(node, ast.FunctionDef) and node.name == "create_app" and path.name == "app.py":
                nested = [n.name for n in ast.walk(node) if n is not node and isinstance(n, defs)]
                assert not nested, f"create_app defines {nested}"
