"""Grid reports: every number in the Markdown equals the run's own files, charts are real PNGs, the HTML renders.

One small grid (tiny local encoders, two seeds, four rows covering both kinds and both analysis tensors) is trained
once per module; the single-seed form is the same folder with grid.json cut down to seed 0, which is what
`genrefusion grid --seeds 1` writes for that seed.
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from genrefusion.cli import commands as cli
from genrefusion.cli.commands import main
from genrefusion.cli.report import add_cli
from genrefusion.evaluation.report import (
    THESIS_SPLIT, THESIS_TABLE6, THESIS_TABLE7, THESIS_TABLE8, load_run, not_benchmark_reasons, write_report,
)

from conftest import REPO, make_subset

METRICS = ("hamming_accuracy", "f1_macro", "f1_micro", "f1_weighted", "f1_samples")
ROWS = "ResNet50,BERT,Attention Fusion,GMU"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


# --- fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid_run(sample_root, tiny_bert, tiny_vit, tmp_path_factory) -> Path:
    """A grid run; `genrefusion grid` writes its report itself at the end."""
    tmp = tmp_path_factory.mktemp("report")
    data = make_subset(sample_root, tmp / "subset", {"train": 50, "dev": 0, "test": 30})
    out = tmp / "run-2seeds"
    printed = []
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    run_grid(GridSpec(DataSpec(data, "stratified", "both"), seeds=2, cache_dir=tmp / "cache", out=out,
                      slot_overrides=[f"BERT={tiny_bert}", f"ResNet50={tiny_vit}"], rows=ROWS.split(","),
                      config_overrides=["epochs=2"]), log=printed.append)
    assert any(line.startswith(f"report: {out / 'report' / 'report.md'}") for line in printed)
    return out


def _rewrite_grid(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("report"))
    grid = json.loads((dest / "grid.json").read_text())
    edit(grid, dest)
    (dest / "grid.json").write_text(json.dumps(grid))
    return dest


def _single_seed(grid: dict, dest: Path) -> None:
    grid["seeds"] = 1
    for row in grid["rows"]:
        row["runs"] = row["runs"][:1]
        row["test"] = json.loads((dest / row["runs"][0] / "metrics.json").read_text())["test"]


@pytest.fixture(scope="module", params=["1 seed", "2 seeds"])
def report(request, grid_run, tmp_path_factory) -> dict:
    if request.param == "2 seeds":  # the report the grid wrote
        folder = grid_run / "report"
        paths = {"markdown": folder / "report.md", "html": folder / "report.html",
                 "charts": sorted(folder.glob("fig*.png"))}
        return {"run": grid_run, "paths": paths, "seeds": 2}
    run = _rewrite_grid(grid_run, tmp_path_factory.mktemp("one") / "run-1seed", _single_seed)
    return {"run": run, "paths": write_report(run), "seeds": 1}


# --- reading what the report printed ----------------------------------------------------------------------------

def markdown_tables(md: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{title: (header, rows)} for every '**title**' followed by a pipe table."""
    tables, lines = {}, md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i >= 2 and lines[i - 2].startswith("**") and lines[i - 1] == "":
            title = lines[i - 2].strip("*")
            cells = lambda l: [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", l.strip())[1:-1]]  # noqa: E731
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                body.append(cells(row))
            tables[title] = (cells(line), body)
    return tables


def parse(cell: str) -> tuple[float | None, float | None, int, int]:
    """'0.1234 ± 0.0100' / '1,234' / '40.6%' / '+2.57% ± 4.10' -> (value, std, value decimals, std decimals)."""
    if cell == "-":
        return None, None, 0, 0
    parts = cell.replace(",", "").replace("%", "").split(" ± ")
    dec = [len(p.partition(".")[2]) for p in parts]
    return float(parts[0]), (float(parts[1]) if len(parts) > 1 else None), dec[0], dec[-1]


def check(cell: str, expected, what: str, std: float | None = None) -> None:
    """The printed cell equals `expected` at the printed precision. `expected` is a number (then `std`, if given, is
    the ± it must show) or a list of per-seed values (several: mean ± sample std; one: that value, no ±)."""
    value, shown_std, d_value, d_std = parse(cell)
    if isinstance(expected, (list, tuple, np.ndarray)):
        mean = float(np.mean(expected))
        std = float(np.std(expected, ddof=1)) if len(expected) > 1 else None
    else:
        mean = float(expected)
    if std is None:
        assert shown_std is None, f"{what}: {cell!r} shows a ± for a single value"
    else:
        assert shown_std is not None, f"{what}: {cell!r} has no ± std"
        assert abs(shown_std - std) <= 0.5 * 10 ** -d_std + 1e-9, f"{what}: std in {cell!r} != {std}"
    assert value is not None and abs(value - mean) <= 0.5 * 10 ** -d_value + 1e-9, f"{what}: {cell!r} != {mean}"


def seeds_metrics(run: Path, grid: dict, row: dict) -> list[dict]:
    return [json.loads((run / d / "metrics.json").read_text()) for d in row["runs"]]


# --- tests ------------------------------------------------------------------------------------------------------

def test_thesis_constants_are_the_thesis_tables():
    from genrefusion.evaluation import metrics, report

    assert report.METRICS == metrics.THESIS_COLUMNS == METRICS
    rows6, rows7 = np.array(list(THESIS_TABLE6.values())), np.array(list(THESIS_TABLE7.values()))
    uni, multi = np.array(THESIS_TABLE8["unimodal"]), np.array(THESIS_TABLE8["fusion"])
    # Table 8 quotes the means of Tables 6 and 7 (the thesis rounded from unrounded scores: off by <= 0.0004)
    assert np.abs(rows6.mean(0) - uni).max() <= 5e-4 and np.abs(rows7.mean(0) - multi).max() <= 5e-4
    printed = np.array([float(s.strip("+%")) for s in THESIS_TABLE8["improvement_pct"]])
    # ... and its improvements follow from those unrounded means too (F1-Weighted: 62.56 from the rounded row)
    assert np.abs((multi - uni) / uni * 100 - printed).max() < 0.2
    assert np.abs((rows7.mean(0) - rows6.mean(0)) / rows6.mean(0) * 100 - printed).max() < 0.06
    assert sum(THESIS_SPLIT.values()) == 25959
    text_path = REPO.parent / "shared" / "seed" / "thesis.txt"
    if not text_path.exists():
        pytest.skip(f"thesis text not found at {text_path}")
    lines = [line.strip() for line in text_path.read_text(encoding="utf-8").splitlines()]
    for marker, table in (("<표 6>", THESIS_TABLE6), ("<표 7>", THESIS_TABLE7),
                          ("<표 8>", {"단일모달": THESIS_TABLE8["unimodal"], "멀티모달": THESIS_TABLE8["fusion"],
                                     "향상률 (%)": THESIS_TABLE8["improvement_pct"]})):
        start = next(i for i, line in enumerate(lines) if line.startswith(marker))
        for name, values in table.items():
            at = lines.index(name, start)
            assert tuple(lines[at + 1:at + 6]) == tuple(v if isinstance(v, str) else f"{v:.4f}" for v in values), name


def test_every_markdown_number_equals_the_run_files(report):
    run, seeds = report["run"], report["seeds"]
    md = report["paths"]["markdown"].read_text(encoding="utf-8")
    tables = markdown_tables(md)
    grid = json.loads((run / "grid.json").read_text())
    summary = json.loads((run / "data_summary.json").read_text())
    rows = {r["row"]: r for r in grid["rows"]}
    per_seed = {name: seeds_metrics(run, grid, r) for name, r in rows.items()}
    assert grid["seeds"] == seeds and all(len(v) == seeds for v in per_seed.values())
    checked = set()

    def table(title):
        checked.add(title)
        return tables[title]

    # Table 1 and 2: data_summary.json
    header, body = table("Table 1. Dataset split")
    assert header[:5] == ["Split", "Samples", "%", "With poster", "With plot"]
    total = summary["splits"]["total"]["movies"]
    assert [b[0] for b in body] == list(summary["splits"])
    for name, samples, pct, poster, plot, _ in body:
        s = summary["splits"][name]
        check(samples, s["movies"], f"Table 1 {name} samples")
        check(pct, 100 * s["movies"] / total, f"Table 1 {name} %")
        check(poster, s["with_poster"], f"Table 1 {name} posters")
        check(plot, s["with_plot"], f"Table 1 {name} plots")
    assert {b[0]: int(b[1]) for b in body if b[0] in grid["n"]} == grid["n"]
    header, body = table("Table 2. Movies per genre and split")
    assert [b[0] for b in body] == list(summary["genres"]) and len(body) == 23
    for genre, *cells in body:
        for split, cell in zip([h.lower() for h in header[1:]], cells):
            check(cell, summary["genres"][genre][split], f"Table 2 {genre} {split}")

    # Tables 6 and 7: grid.json, and independently the seeds' metrics.json
    for title, kind in (("Table 6. Unimodal models (test)", "unimodal"), ("Table 7. Multimodal fusion models (test)", "fusion")):
        header, body = table(title)
        assert header == ["Model", "Hamming Acc.", "F1-Macro", "F1-Micro", "F1-Weighted", "F1-Samples"]
        assert [b[0] for b in body] == [r["label"] for r in grid["rows"] if r["kind"] == kind]
        for label, *cells in body:
            r = next(r for r in grid["rows"] if r["label"] == label)
            for m, cell in zip(METRICS, cells):
                check(cell, [s["test"][m] for s in per_seed[r["row"]]], f"{title} {label} {m}")
                g = r["test"][m]  # the grid's own summary: stats.mean_std over seeds, or the one seed's value
                check(cell, g["mean"] if seeds > 1 else g, f"{title} {label} {m} (grid.json)", g["std"] if seeds > 1 else None)

    # Table 8: per seed, mean over the rows of each kind; improvement from the means
    kinds = {k: [n for n, r in rows.items() if r["kind"] == k] for k in ("unimodal", "fusion")}
    avg = {k: np.array([[np.mean([per_seed[n][s]["test"][m] for n in names]) for m in METRICS] for s in range(seeds)])
           for k, names in kinds.items()}
    improvement = (avg["fusion"].mean(0) - avg["unimodal"].mean(0)) / avg["unimodal"].mean(0) * 100
    seed_improvement = (avg["fusion"] - avg["unimodal"]) / avg["unimodal"] * 100
    header, body = table("Table 8. Unimodal vs multimodal averages")
    assert [b[0] for b in body] == ["Unimodal (mean of rows)", "Multimodal (mean of rows)", "Improvement (%)"]
    for j, m in enumerate(METRICS):
        check(body[0][j + 1], avg["unimodal"][:, j], f"Table 8 unimodal {m}")
        check(body[1][j + 1], avg["fusion"][:, j], f"Table 8 fusion {m}")
        value, std, d, ds = parse(body[2][j + 1])
        assert abs(value - improvement[j]) <= 0.5 * 10 ** -d + 1e-9, f"Table 8 improvement {m}"
        if seeds > 1:
            assert abs(std - seed_improvement[:, j].std(ddof=1)) <= 0.5 * 10 ** -ds + 1e-9
        else:
            assert std is None

    # The thesis next to the run: provenance, both tables side by side
    header, body = table("What each used")
    used = {b[0]: b[1:] for b in body}
    for split, n in THESIS_SPLIT.items():
        check(used[f"{split.capitalize()} movies"][0], grid["n"][split], f"n {split}")
        check(used[f"{split.capitalize()} movies"][1], n, f"thesis n {split}")
    for slot, name in grid["slots"].items():
        assert used[f"Slot {slot}"] == [f"`{name}`", slot]
    assert used["Seeds"] == [str(seeds), "1"] and used["Split"] == [grid["split"], "official"]
    header, body = table("Tables 6/7 side by side: this run vs the thesis (test)")
    assert header[:3] == ["Model", "Source", "Encoders"]
    assert len(body) == 2 * len(grid["rows"])
    thesis = {**THESIS_TABLE6, **THESIS_TABLE7}
    for r, (mine, theirs) in zip(grid["rows"], zip(body[::2], body[1::2])):
        assert mine[:2] == [r["row"], "this run"] and theirs[:2] == ["", "thesis"]
        thesis_encoders = "BERT + ResNet50" if r["kind"] == "fusion" else r["row"]  # what the thesis itself used
        assert all(f"`{v}`" in mine[2] for v in r["encoders"].values()) and theirs[2] == thesis_encoders
        for j, m in enumerate(METRICS):
            check(mine[3 + j], [s["test"][m] for s in per_seed[r["row"]]], f"side by side {r['row']} {m}")
            check(theirs[3 + j], thesis[r["row"]][j], f"thesis {r['row']} {m}")
    header, body = table("Table 8 side by side: this run vs the thesis")
    side = {b[0]: b[1:] for b in body}
    for j, m in enumerate(METRICS):
        check(side["Unimodal (run)"][j], avg["unimodal"][:, j], m)
        check(side["Multimodal (run)"][j], avg["fusion"][:, j], m)
        check(side["Unimodal (thesis)"][j], THESIS_TABLE8["unimodal"][j], m)
        check(side["Multimodal (thesis)"][j], THESIS_TABLE8["fusion"][j], m)
        check(side["Improvement % (thesis)"][j], float(THESIS_TABLE8["improvement_pct"][j].strip("+%")), m)
        assert abs(parse(side["Improvement % (run)"][j])[0] - improvement[j]) <= 0.005 + 1e-9

    # Per-genre F1 (metrics.json per_genre), training (history), image shares (test_predictions.safetensors)
    header, body = table("Table 9. Per-genre F1 on test")
    assert header[2:] == [r["row"] for r in grid["rows"]] and len(body) == 23
    for genre, n_test, *cells in body:
        check(n_test, summary["genres"][genre]["test"], f"Table 9 {genre} n")
        for r, cell in zip(grid["rows"], cells):
            check(cell, [s["test"]["per_genre"][genre]["f1"] for s in per_seed[r["row"]]], f"Table 9 {genre} {r['row']}")
    header, body = table("Table 10. Training")
    for label, epochs, best, seconds in body:
        ms = per_seed[next(r["row"] for r in grid["rows"] if r["label"] == label)]
        check(epochs, [len(m["history"]) for m in ms], f"{label} epochs")
        check(best, [m["best_epoch"] for m in ms], f"{label} best epoch")
        check(seconds, [m["timings"]["train_s"] for m in ms], f"{label} train time")
    header, body = table("Table 11. Image share per genre (test)")
    assert header == ["Genre", "Test movies", "GMU gate (image share)", "Attention weight (image)"]
    shares, labels, genres = {}, None, None
    for model, key in (("GMU", "gate"), ("Attention Fusion", "modality_weights")):
        shares[model] = []
        for d in rows[model]["runs"]:
            with safe_open(str(run / d / "test_predictions.safetensors"), "np") as f:
                t, labels = f.get_tensor(key), f.get_tensor("labels") > 0.5
                genres = json.loads(f.metadata()["genres"])
            shares[model].append(t.mean(axis=1) if key == "gate" else t[:, 1])
    assert [b[0] for b in body] == [*genres, "All test movies"]
    for genre, n, gmu, att in body:
        sel = labels[:, genres.index(genre)] if genre in genres else np.ones(len(labels), bool)
        check(n, int(sel.sum()), f"Table 11 {genre} n")
        for model, cell in (("GMU", gmu), ("Attention Fusion", att)):
            if sel.sum() == 0:
                assert cell == "-"
            else:
                check(cell, [float(s[sel].mean()) for s in shares[model]], f"Table 11 {genre} {model}")
    # the GMU's overall gate agrees with the per-unit means its run recorded in metrics.json
    recorded = [float(np.mean(m["analysis"]["gate"]["mean"])) for m in per_seed["GMU"]]
    check(body[-1][2], recorded, "GMU gate vs metrics.json analysis")

    assert checked == set(tables), f"tables not checked: {set(tables) - checked}"
    # numbers in the prose: the header line, the skipped-input line, the wall times
    n = grid["n"]
    assert f"n train/dev/test = {n['train']:,} / {n['dev']:,} / {n['test']:,}" in md
    assert f"data fingerprint `{grid['data_fingerprint'][:16]}`" in md
    assert (f"Skipped movies (bad input): {sum(summary['skipped'].values()):,}" in md
            and f"Non-benchmark genre labels dropped: {sum(summary['dropped_genres'].values()):,}" in md
            and f"(excluded): {summary['excluded_no_label']:,}." in md)
    wall = re.search(r"features ([\d.]+) s, training \+ evaluation ([\d.]+) s, total ([\d.]+) s", md)
    for printed, key in zip(wall.groups(), ("features_s", "train_eval_s", "total_s")):
        check(printed, grid["timings"][key], key)
    # the warning is there: this is a sample run, not the benchmark
    assert "Not a reproduction of the thesis" in md and f"test has **{n['test']}** movies, the benchmark 7,799" in md
    assert "Hamming" in md and "Accuracy" in md


def test_charts_are_valid_pngs_referenced_and_embedded(report):
    paths = report["paths"]
    charts = paths["charts"]
    assert len(charts) == 6 and len(set(charts)) == 6
    md = paths["markdown"].read_text(encoding="utf-8")
    page = paths["html"].read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(charts)
    for chart, data in zip(charts, embedded):
        with Image.open(chart) as im:
            im.verify()
        with Image.open(chart) as im:
            assert im.format == "PNG" and 500 <= im.width <= 3000 and 400 <= im.height <= 3000, (chart, im.size)
            assert np.unique(np.asarray(im.convert("L"))).size > 20  # drawn on, not a blank canvas
        assert f"]({chart.name})" in md
        assert base64.b64decode(data) == chart.read_bytes()
    assert "<script" not in page and 'src="http' not in page and "href=" not in page  # self-contained, static


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI installs Debian's chromium: apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(report, tmp_path):
    page = report["paths"]["html"]
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_text = page.read_text(encoding="utf-8")
    assert dom.stdout.count("<table") == html_text.count("<table") >= 11
    assert dom.stdout.count("data:image/png;base64,") == len(report["paths"]["charts"])
    assert 'class="warn"' in dom.stdout and "Table 8 side by side" in dom.stdout
    shot = tmp_path / "shot.png"
    res = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        assert np.unique(np.asarray(im.convert("L"))).size > 20  # text and charts, not a blank page


def test_full_benchmark_setting_has_no_warning(grid_run):
    run = load_run(grid_run)
    assert not_benchmark_reasons(run)  # the sample run is flagged
    full = copy.deepcopy(run)
    from genrefusion.training.grid import resolve_slots

    full.grid.update(split="official", modalities="any", n=dict(THESIS_SPLIT), slots=resolve_slots("thesis"))
    full.grid["config"] = {**full.grid["config"], "mode": "end-to-end", "finetune": True}
    assert not_benchmark_reasons(full) == []
    full.grid["n"]["test"] = 7798
    assert not_benchmark_reasons(full) == ["test has **7,798** movies, the benchmark 7,799"]


def test_unimodal_only_run_and_cli(grid_run, tmp_path, capsys):
    def keep_unimodal(grid, dest):
        grid["rows"] = [r for r in grid["rows"] if r["kind"] == "unimodal"]

    run = _rewrite_grid(grid_run, tmp_path / "uni", keep_unimodal)
    argv = ["report", str(run), "--out", str(tmp_path / "out")]
    if "genrefusion.cli.report" in cli.PLUGIN_MODULES:
        assert main(argv) == 0
    else:  # not registered with the CLI yet: the subcommand as add_cli defines it
        parser = argparse.ArgumentParser()
        add_cli(parser.add_subparsers(dest="command"))
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "report.md" in printed and "report.html" in printed and printed.count("chart:") == 4
    assert "Table 6." in md and "Table 7." not in md and "Table 8." not in md
    assert "need at least one unimodal and one fusion row" in md and "No GMU or attention-fusion row" in md


def test_fusing_other_slots_keeps_the_thesis_column_honest(grid_run, tmp_path):
    """With --fuse RoBERTa,ResNet50+ViT the run's fusion rows name their encoders, while the thesis column still says
    what the thesis fused (BERT + ResNet50)."""
    def fuse_others(grid, dest):
        for r in grid["rows"]:
            if r["kind"] == "fusion":
                r["encoders"] = {"RoBERTa": "mpnet-base", "ResNet50+ViT": "efficientnet-lite0+dinov2-vits14"}

    run = _rewrite_grid(grid_run, tmp_path / "fused", fuse_others)
    md = write_report(run)["markdown"].read_text(encoding="utf-8")
    _, body = markdown_tables(md)["Tables 6/7 side by side: this run vs the thesis (test)"]
    gmu_run, gmu_thesis = next((a, b) for a, b in zip(body[::2], body[1::2]) if a[0] == "GMU")
    assert gmu_run[2] == "`mpnet-base` + `efficientnet-lite0+dinov2-vits14`" and gmu_thesis[2] == "BERT + ResNet50"


def test_missing_or_broken_files_name_the_file(grid_run, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "grid.json"))):
        write_report(tmp_path)

    def drop(grid, dest):
        (dest / grid["rows"][1]["runs"][0] / "metrics.json").unlink()

    broken = _rewrite_grid(grid_run, tmp_path / "broken", drop)
    with pytest.raises(FileNotFoundError, match=r"seed-0/metrics\.json: missing"):
        write_report(broken)

    def no_gate(grid, dest):
        from safetensors.numpy import load_file, save_file

        gmu = next(r for r in grid["rows"] if r["model"] == "gmu")
        path = dest / gmu["runs"][0] / "test_predictions.safetensors"
        with safe_open(str(path), "np") as f:
            meta = f.metadata()
        tensors = {k: v for k, v in load_file(str(path)).items() if k != "gate"}
        save_file(tensors, str(path), metadata=meta)

    no_gate_run = _rewrite_grid(grid_run, tmp_path / "nogate", no_gate)
    with pytest.raises(ValueError, match=r"test_predictions\.safetensors: no 'gate' tensor"):
        write_report(no_gate_run)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "grid.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"grid\.json: not valid JSON"):
        write_report(tmp_path / "bad")


def test_corrupt_prediction_file_names_the_file(grid_run, tmp_path):
    def corrupt(grid, dest):
        gmu = next(r for r in grid["rows"] if r["model"] == "gmu")
        (dest / gmu["runs"][0] / "test_predictions.safetensors").write_bytes(b"\x00" * 64)

    run = _rewrite_grid(grid_run, tmp_path / "corrupt", corrupt)
    with pytest.raises(ValueError, match=r"seed-0/test_predictions\.safetensors: not a readable safetensors file"):
        write_report(run)


def test_html_escapes_markup_in_the_run_files(grid_run, tmp_path):
    """Text from the run's files (a data path, an encoder name) is shown as text in the HTML, never run as markup."""
    def hostile(grid, dest):
        grid["data"] = "/data/<script>alert(1)</script>/<img src=x onerror=alert(2)>"
        for r in grid["rows"]:
            r["encoders"] = {k: f"{v}<b>bold</b>" for k, v in r["encoders"].items()}

    run = _rewrite_grid(grid_run, tmp_path / "hostile", hostile)
    page = write_report(run)["html"].read_text(encoding="utf-8")
    assert "<script" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
