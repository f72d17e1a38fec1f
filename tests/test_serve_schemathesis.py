"""schemathesis against the live service: every check, a fixed seed, against the torch and the ONNX servers.

The same command a sceptical user points at the server (`schemathesis run URL/openapi.json --checks all`), run as
a separate process against uvicorn on loopback, serving the tiny trained model (and its ONNX export), with the API
key on (so the `ignored_auth` check runs too). Its coverage phase sends the schema's boundary and negative cases
(missing and unknown fields, wrong types, over-long plots, wrong content types, unsupported methods), its fuzzing
phase random valid and invalid requests; a 5xx, an undocumented status, a body that breaks the documented schema,
valid data refused or invalid data accepted is a failure, with schemathesis's report.

With genrefusion/serving/schemathesis_hooks.py, which makes its valid posters real images (the schema can only say
so in words), it finds nothing. Without the hooks, the one thing it may report is the documented 415 for a poster
of random bytes: schema-valid (a non-empty file, non-empty base64), but not an image.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from genrefusion.cli.predict import load_model
from genrefusion.serving import create_app
from serving_helpers import LoopbackServer

KEY = "schemathesis-test-key-0123456789"
MAX_EXAMPLES = 15  # per operation and phase (the coverage phase adds its boundary cases on top)
NOT_AN_IMAGE = ("- ST202 Schema-valid request rejected", "[415] Unsupported Media Type",
                "not an image PIL can read")  # the documented 415 for random bytes


def run_schemathesis(url: str, cwd: Path, *extra: str, hooks: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1", HF_HUB_OFFLINE="1")
    env.pop("SCHEMATHESIS_HOOKS", None)
    if hooks:
        env["SCHEMATHESIS_HOOKS"] = "genrefusion.serving.schemathesis_hooks"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
           "--seed", "1", "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--wait-for-schema", "30",
           "--request-timeout", "60", "--no-shrink", "--generation-database", "none",
           "--header", f"Authorization: Bearer {KEY}", *extra]
    # cwd: schemathesis writes its .schemathesis/ folder there, which belongs in no checkout
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    from genrefusion.inference.export import export_onnx

    out = tmp_path_factory.mktemp("schemathesis-export") / "onnx"
    export_onnx(trained_run / "model", out, log=None)
    return out


@pytest.fixture(params=["torch", "onnx"])
def served(request, trained_run):
    model = trained_run / "model" if request.param == "torch" else request.getfixturevalue("exported")
    with LoopbackServer(create_app(load_model(model), api_key=KEY)) as url:
        yield url


def test_schemathesis_finds_no_failure(served, tmp_path):
    result = run_schemathesis(served, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20_000:]
    assert "No issues found" in output and " passed" in output, output[-5_000:]


def failures(junit: Path) -> list[str]:
    """Every failing test case in schemathesis's JUnit report, as its text (an operation's failure element holds
    its cases one after another, each starting with its 'Test Case ID')."""
    cases = []
    for failure in ET.parse(junit).getroot().iter("failure"):
        cases += [c for c in re.split(r"\d+\. Test Case ID", failure.text or "") if c.strip()]
    return cases


def test_schemathesis_without_hooks_finds_only_the_documented_415(served, tmp_path):
    """`"poster_base64": ""` was schema-valid and answered 422 "file is empty": the schema says minLength now."""
    junit = tmp_path / "junit.xml"
    result = run_schemathesis(served, tmp_path, "--report", "junit", "--report-junit-path", str(junit), hooks=False)
    output = result.stdout + result.stderr
    assert junit.is_file(), output[-5_000:]
    for case in failures(junit):
        checks = [line for line in case.splitlines() if line.startswith("- ST")]
        assert checks == [NOT_AN_IMAGE[0]] and all(words in case for words in NOT_AN_IMAGE), case[:3_000]
    assert result.returncode in (0, 1), output[-5_000:]
