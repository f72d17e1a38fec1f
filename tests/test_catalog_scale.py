"""`genrefusion predict --input CATALOG --output OUT` at scale: killed with SIGKILL and run again it continues from
its parts and writes the bytes of an uninterrupted run; parts of another model, catalog or options are not resumed;
every movie without a prediction is counted and listed; two ranks under torchrun (gloo, CPU) write the bytes of one
process.

Runs that are compared byte for byte run in subprocesses with one thread each (as torchrun's ranks do), so that the
same chunks go through the same kernels."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from genrefusion import atomic
from genrefusion.data.loader import load_catalog
from genrefusion.inference import catalog as engine
from genrefusion.inference.catalog import parts_dir, predict_catalog, skipped_file
from genrefusion.inference.integrity import seal
from genrefusion.inference.predictor import load_model

from conftest import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
CHUNK = 8


def _catalog(synthetic_catalog: Path, name: str, extra: str = "") -> Path:
    """The synthetic movies as a catalog to predict (no labels) beside their posters, plus a row whose poster is
    not an image (refused by the reader, so listed as skipped)."""
    folder = synthetic_catalog.parent
    (folder / "not-an-image.jpg").write_bytes(b"not a jpeg")
    rows = list(csv.DictReader(synthetic_catalog.open()))
    path = folder / name
    path.write_text("id,plot,poster\n" + "".join(f"{r['id']},{r['plot']},{r['poster']}\n" for r in rows[:60])
                    + "bad,a plot,not-an-image.jpg\n"
                    + "".join(f"{r['id']},{r['plot']},{r['poster']}\n" for r in rows[60:]) + extra)
    return path


def _predict(model: Path, catalog: Path, out: Path, *extra: str, code: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    args = ["predict", "--model", str(model), "--input", str(catalog), "--output", str(out), "--chunk", str(CHUNK),
            *extra]
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "genrefusion", *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _computed(stderr: str) -> int:
    """The movies the run itself went through, from its throughput line."""
    return int(re.search(r"^([\d,]+) movies in [\d.]+ s: [\d.]+ movies/s", stderr, re.M).group(1).replace(",", ""))


# The run dies by SIGKILL at a deterministic point: while writing the part after KILL_AFTER complete ones, that
# part's temporary file half written (what a kill -9 or a power cut mid-write leaves behind).
KILLED = textwrap.dedent("""
    import os, signal, sys
    from genrefusion import atomic
    from genrefusion.inference import catalog
    from genrefusion.cli.commands import main

    kill_after, write, written = int(os.environ["KILL_AFTER"]), catalog._write_part, []

    def write_then_die(target, data):
        if len(written) == kill_after:
            atomic.tmp_path(target).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        write(target, data)
        written.append(target)

    catalog._write_part = write_then_die
    sys.exit(main(sys.argv[1:]))
""")
KILL_AFTER = 4


def test_a_run_killed_midway_resumes_and_writes_the_bytes_of_an_uninterrupted_run(trained_run, synthetic_catalog,
                                                                                   tmp_path):
    model, cat = trained_run / "model", _catalog(synthetic_catalog, "resume.csv")
    n = len(load_catalog(cat, require_labels=False).movies)  # 90: the bad row is refused by the reader
    out = tmp_path / "killed" / "pred.jsonl"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", KILLED, "predict", "--model", str(model), "--input", str(cat),
                           "--output", str(out), "--chunk", str(CHUNK)], env={**ENV, "KILL_AFTER": str(KILL_AFTER)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: " + proc.stderr[-2000:]
    parts = parts_dir(out)
    assert not out.exists()
    assert len(list(parts.glob("part-*.jsonl"))) == KILL_AFTER
    assert len(list(parts.glob(f"{atomic.TMP_PREFIX}*"))) == 1  # the part it died writing

    resumed = _predict(model, cat, out)  # the same command again
    assert f"{KILL_AFTER} of {-(-n // CHUNK)} chunks already done" in resumed.stderr
    assert _computed(resumed.stderr) == n - KILL_AFTER * CHUNK  # only what the killed run had not finished
    assert not parts.exists()  # assembled, then the parts removed

    clean = _predict(model, cat, tmp_path / "clean.jsonl")
    assert _computed(clean.stderr) == n
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()  # byte-identical
    assert skipped_file(out).read_bytes() == skipped_file(tmp_path / "clean.jsonl").read_bytes()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [m.id for m in load_catalog(cat, require_labels=False).movies]
    assert [json.loads(x)["id"] for x in skipped_file(out).read_text().splitlines()] == ["bad"]


class Interrupted(BaseException):
    """Stands in for a kill in-process: the parts written so far stay."""


def _interrupt_after(monkeypatch, k: int) -> None:
    write, written = engine._write_part, []

    def write_then_stop(target, data):
        if len(written) == k:
            raise Interrupted
        write(target, data)
        written.append(target)

    monkeypatch.setattr(engine, "_write_part", write_then_stop)


@pytest.mark.parametrize("change", ["model", "catalog", "chunk"])
def test_parts_of_another_model_catalog_or_chunk_size_are_not_resumed(change, serving_cli, trained_run,
                                                                      synthetic_catalog, tmp_path, monkeypatch,
                                                                      capsys):
    model, cat = trained_run / "model", _catalog(synthetic_catalog, f"change-{change}.csv")
    out = tmp_path / "pred.csv"
    args = ["predict", "--model", str(model), "--input", str(cat), "--output", str(out), "--chunk", str(CHUNK)]
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        serving_cli(args)
    monkeypatch.undo()
    assert len(list(parts_dir(out).glob("part-*"))) == 3
    if change == "model":  # the same weights with other thresholds: other predictions
        other = tmp_path / "model"
        shutil.copytree(model, other)
        meta = json.loads((other / "model.json").read_text())
        meta["thresholds"] = 0.0
        (other / "model.json").write_text(json.dumps(seal(meta)))  # as a run with these thresholds saves it
        args[2], why = str(other), "the model is another one"
    elif change == "catalog":
        rows = cat.read_text().splitlines()
        cat.write_text("\n".join(rows[:5] + rows[6:]) + "\n")  # one movie fewer
        why = "the catalog changed"
    else:
        args[-1], why = "16", "--chunk was 8 (now 16)"
    capsys.readouterr()
    assert serving_cli(args) == 0
    err = capsys.readouterr().err
    assert why in err and "starting over" in err and "already done" not in err
    n = len(load_catalog(cat, require_labels=False).movies)
    assert _computed(err) == n  # everything computed again
    fresh = tmp_path / "fresh.csv"
    assert serving_cli([*args[:6], str(fresh), *args[7:]]) == 0
    assert out.read_bytes() == fresh.read_bytes()
    if change == "model":  # every genre reaches a threshold of 0: these rows are the new model's
        assert all(len(r["predicted"].split("|")) == 23 for r in csv.DictReader(out.open()))


def test_every_movie_without_a_prediction_is_counted_and_listed(trained_run, synthetic_catalog, tmp_path,
                                                                monkeypatch, capsys):
    src = synthetic_catalog.parent
    for i in range(12):
        if (src / f"p{i}.jpg").exists():
            shutil.copy(src / f"p{i}.jpg", tmp_path / f"p{i}.jpg")
    (tmp_path / "broken.jpg").write_bytes((src / "p0.jpg").read_bytes()[:300])  # a truncated JPEG
    rows = [{"id": f"m{i}", "plot": f"ghost night {i}", "poster": f"p{i}.jpg" if (src / f"p{i}.jpg").exists() else ""}
            for i in range(12)]  # m3 and m10 have no poster
    rows[1]["poster"] = "broken.jpg"
    rows[4]["plot"], rows[4]["poster"] = "", ""  # nothing to predict from
    rows.append({"id": "m5", "plot": "listed twice"})
    (tmp_path / "cat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_catalog(tmp_path / "cat.jsonl", require_labels=False)
    predictor = load_model(trained_run / "model")
    (tmp_path / "p2.jpg").unlink()  # a poster deleted after the catalog was read: its movie fails while predicting
    out = tmp_path / "pred.jsonl"

    _interrupt_after(monkeypatch, 1)  # the first chunk (m0 m2 m3 m5) is done, then the run stops
    with pytest.raises(Interrupted):
        predict_catalog(predictor, ds, out, chunk=4)
    monkeypatch.undo()
    shutil.copy(src / "p2.jpg", tmp_path / "p2.jpg")  # back (same bytes): m2's skip now comes from the part
    capsys.readouterr()
    run = predict_catalog(predictor, ds, out, chunk=4, progress=False)
    assert run.skipped == 4 and run.predicted == 9 and run.skipped_path == skipped_file(out)
    assert run.lines()[0] == f"predicted 9 movies -> {out}; skipped 4 (listed in {skipped_file(out)})"
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["m0", "m3", "m5", "m6", "m7", "m8", "m9",
                                                                           "m10", "m11"]
    listed = [json.loads(x) for x in skipped_file(out).read_text().splitlines()]
    # the reader's refusals (in the order it found them), then the movies that failed while predicting
    assert [(s["id"], s["kind"]) for s in listed] == [("m5", "duplicate_id"), ("m1", "bad_poster"),
                                                      ("m4", "bad_field"), ("m2", "bad_poster")]
    assert "p2.jpg" in listed[3]["where"] and all(s["reason"] for s in listed)
    assert "catalog: " in capsys.readouterr().err  # the reader's problems are named on stderr too


# Under torchrun: `genrefusion predict` as `-m genrefusion` runs it, each part's chunk recorded by the rank that
# wrote it.
RANK_WORKER = textwrap.dedent("""
    import os, sys
    from genrefusion.inference import catalog
    from genrefusion.cli.commands import main

    write = catalog._write_part

    def recorded(target, data):
        write(target, data)
        with open(os.path.join(os.environ["RECORD"], "rank" + os.environ["RANK"]), "a") as f:
            f.write(target.name + "\\n")

    catalog._write_part = recorded
    sys.exit(main(sys.argv[1:]))
""")


def test_two_ranks_under_torchrun_write_the_bytes_of_one_process(trained_run, synthetic_catalog, tmp_path):
    model, cat = trained_run / "model", _catalog(synthetic_catalog, "ranks.csv")
    n = len(load_catalog(cat, require_labels=False).movies)
    (tmp_path / "worker.py").write_text(RANK_WORKER)
    (tmp_path / "record").mkdir()
    out = tmp_path / "two" / "pred.csv"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
           str(tmp_path / "worker.py"), "predict", "--model", str(model), "--input", str(cat), "--output", str(out),
           "--chunk", str(CHUNK)]
    proc = subprocess.run(cmd, env={**ENV, "RECORD": str(tmp_path / "record")}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    one = _predict(model, cat, tmp_path / "one.csv")
    assert out.read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert skipped_file(out).read_bytes() == skipped_file(tmp_path / "one.csv").read_bytes()
    assert not parts_dir(out).exists()
    # each rank computed its own share: every other chunk, none twice
    chunks = -(-n // CHUNK)
    done = [sorted((tmp_path / "record" / f"rank{r}").read_text().split()) for r in range(2)]
    assert done == [[f"part-{k:06d}.csv" for k in range(r, chunks, 2)] for r in range(2)]
    assert f"{n} movies in" in proc.stderr and "over 2 processes" in proc.stderr
    assert proc.stderr.count("predicted ") == 1  # rank 0 speaks for both
    assert _computed(one.stderr) == n


def test_assembly_that_fails_midway_leaves_the_previous_output(tmp_path):
    target = tmp_path / "pred.csv"
    target.write_bytes(b"the previous run's output\n")

    def pieces():
        yield b"id,predicted\r\n"
        raise ValueError("a part is missing")

    with pytest.raises(ValueError, match="missing"):
        atomic.write_chunks(target, pieces())
    assert target.read_bytes() == b"the previous run's output\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]  # no temporary left behind
    atomic.write_chunks(target, iter([b"a", b"", b"bc"]))
    assert target.read_bytes() == b"abc"
