"""schemathesis hooks for the service's schema: `SCHEMATHESIS_HOOKS=genrefusion.serving.schemathesis_hooks`.

    SCHEMATHESIS_HOOKS=genrefusion.serving.schemathesis_hooks \
        schemathesis run http://127.0.0.1:8000/openapi.json --checks all

The schema says in words what JSON Schema cannot: a poster must be an image file PIL decodes. schemathesis's own
`binary`/`byte` values are arbitrary bytes, which the server rightly refuses (415), and its positive-data check
would count that against the schema. So valid posters are drawn from small real images (JPEG, PNG, WebP, GIF,
BMP of varied sizes and colours); everything else (negative cases, wrong types, missing fields) is schemathesis's.

One generated case cannot be sent at all: a multipart field whose value is an empty list becomes no part on the
wire, so schemathesis checks a body with an extra field while the server receives one without it (and rightly
answers 200); such cases are dropped rather than reported as "schema-violating request accepted" (ST201).
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


@schemathesis.hook
def filter_case(context, case) -> bool:
    """Drop multipart cases holding an empty list: it has no multipart encoding (nothing is sent for it)."""
    if not (case.media_type or "").startswith("multipart/") or not isinstance(case.body, dict):
        return True
    return not any(isinstance(v, list) and not v for v in case.body.values())
