"""schemathesis hooks for the service's schema: `SCHEMATHESIS_HOOKS=genrefusion.serving.schemathesis_hooks`.

    SCHEMATHESIS_HOOKS=genrefusion.serving.schemathesis_hooks \
        schemathesis run http://127.0.0.1:8000/openapi.json --checks all

Without them, schemathesis fills a poster with its own `binary` values (arbitrary bytes, a PDF, a ZIP), which
the service rightly refuses (415 / 422) and which its positive_data_acceptance check (ST202) then reports as
"schema-valid request rejected". Only schemathesis and hypothesis (the test extra) are needed; nothing in
genrefusion imports this module.

The schema says in words what JSON Schema cannot: a poster must be an image file PIL decodes. schemathesis's own
`binary`/`byte` values are arbitrary bytes, which the server rightly refuses (415), and its positive-data check
would count that against the schema. So valid posters are drawn from small real images (JPEG, PNG, WebP, GIF,
BMP of varied sizes and colours); everything else (negative cases, wrong types, missing fields) is schemathesis's.
"""
from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.transport.serialization import Binary

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def _image(fmt: str, width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return buf.getvalue()


images = st.builds(_image, st.sampled_from(FORMATS), st.integers(1, 64), st.integers(1, 64),
                   st.tuples(*[st.integers(0, 255)] * 3))

# Binary: schemathesis's own wrapper for file contents (a str to its validators, the bytes on the wire).
schemathesis.openapi.format("binary", images.map(Binary))
schemathesis.openapi.format("byte", images.map(lambda b: base64.b64encode(b).decode()))
