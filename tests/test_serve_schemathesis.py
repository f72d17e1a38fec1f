"""schemathesis against the live service: every check, a fixed seed, zero failures.

The same command a sceptical user points at the server (`schemathesis run URL/openapi.json --checks all`), run as
a separate process against uvicorn on loopback, serving the tiny trained model, with the API key on (so the
`ignored_auth` check runs too). Its coverage phase sends the schema's boundary and negative cases (missing and
unknown fields, wrong types, over-long plots, wrong content types, unsupported methods), its fuzzing phase random
valid and invalid requests; a 5xx, an undocumented status, a body that breaks the documented schema, valid data
refused or invalid data accepted fails the test with schemathesis's report. genrefusion/serving/schemathesis_hooks.py makes
its valid posters real images (the schema can only say so in words).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from genrefusion.cli.predict import load_model
from genrefusion.serving import create_app
from serving_helpers import LoopbackServer

KEY = "schemathesis-test-key-0123456789"
MAX_EXAMPLES = 15  # per operation and phase (the coverage phase adds its boundary cases on top)


def run_schemathesis(url: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SCHEMATHESIS_HOOKS="genrefusion.serving.schemathesis_hooks",
               NO_COLOR="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
           "--seed", "1", "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--wait-for-schema", "30",
           "--request-timeout", "60", "--no-shrink", "--generation-database", "none", *extra]
    # cwd: schemathesis writes its .schemathesis/ folder there, which belongs in no checkout
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_schemathesis_finds_no_failure(trained_run, tmp_path):
    app = create_app(load_model(trained_run / "model"), api_key=KEY)
    with LoopbackServer(app) as url:
        result = run_schemathesis(url, tmp_path, "--header", f"Authorization: Bearer {KEY}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20_000:]
    assert "No issues found" in output and " passed" in output, output[-5_000:]
