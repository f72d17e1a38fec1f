"""The robustness report: robustness.json (every number), one PNG per corruption (macro- and micro-F1 against the
level, every model on one chart), robustness.md and a self-contained robustness.html rendered from the same blocks
as the grid report (report/blocks.py, report/render.py). Everything is written atomically, and the page can be
rebuilt from robustness.json alone (`write_page`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...atomic import write_json, write_text
from ...files import read_json_object
from ..report.blocks import Figure, Report, Table, Text, fmt
from ..report.render import to_html, to_markdown

RESULT_FILE = "robustness.json"
KIND_STYLE = {"fusion": "-", "unimodal": "--"}
PANELS = (("f1_macro", "macro-F1"), ("f1_micro", "micro-F1"))
# What the corrupted inputs measured at each level (measure.py), as a table column: header, format.
MEASURED = {"mean_words": ("mean words", lambda v: f"{v:.1f}"), "removed": ("removed", lambda v: f"{v:.0%}")}


def chart(name: str, entry: dict[str, Any], models: list[dict[str, Any]], path: Path) -> Path:
    """One corruption: a panel per score, a line per model (fusions solid, unimodal models dashed; a model that
    does not read the corrupted modality is drawn thin and dotted, flat at its clean score)."""
    from ..report.charts import _figure, _save  # the report's own Agg figure and atomic PNG writer

    fig = _figure(figsize=(11, 4.4))
    axes = fig.subplots(1, len(PANELS), sharex=True)
    levels = [x["level"] for x in entry["levels"]]
    colours = {m["label"]: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, (key, title) in zip(axes, PANELS):
        for m in models:
            label, points = m["label"], entry["scores"][m["label"]]
            xs = [p["level"] for p in points if p.get(key) is not None]
            ys = [p[key] for p in points if p.get(key) is not None]
            if entry["reads"][label]:
                # a level it cannot score is left out of the line (a lone clean point when none can be scored)
                gap = " (n/a where it cannot score the movies)" if len(xs) < len(points) else ""
                ax.plot(xs, ys, KIND_STYLE[m["kind"]], marker="o", ms=4, lw=2, color=colours[label],
                        label=label + gap if ax is axes[0] else None)
            else:
                ax.plot(xs, ys, ":", lw=1.2, color=colours[label], alpha=0.8,
                        label=f"{label} (does not read it)" if ax is axes[0] else None)
        ax.set_title(title)
        ax.set_xlabel("corruption level")
        ax.set_xticks(levels, [f"{x:g}" for x in levels])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score on the movies scored")
    fig.suptitle(entry["title"])
    fig.legend(loc="outside lower center", ncols=min(3, len(models)), frameon=False, fontsize=8)
    return _save(fig, path)


def _cell(p: dict[str, Any]) -> str:
    if p.get("f1_macro") is None:
        return "n/a"
    return f"{fmt(p['f1_macro'])} / {fmt(p['f1_micro'])}"


def _robustness_cell(entry: dict[str, Any], label: str) -> str:
    if not entry["reads"][label]:
        return "-"
    value = entry["relative_robustness"][label]
    return "n/a" if value is None else fmt(value)


def build(result: dict[str, Any], out: Path) -> Report:
    rep = Report()
    models = result["models"]
    labels = [m["label"] for m in models]
    d = result["data"]
    rep.add(Text("h1", "Robustness under corrupted plots and posters"),
            Text("p", f"{d['n_movies']:,} movies of the {result['split']} split of `{d['source']}` "
                      f"({d['split']} split, modalities={result['modalities']}"
                      + (f", a seeded sample of {d['limit']:,}" if d.get("limit") else "")
                      + f"), seed {result['seed']}, levels {', '.join(f'{x:g}' for x in result['levels'])}. "
                      "Each model is scored at its own thresholds; level 0 is the clean input. A corruption "
                      "changes one modality and leaves the other clean; a model that does not read that modality "
                      "keeps its clean score (dotted)."))
    if d.get("excluded"):
        rep.add(Text("p", "Left out because not every model can score them: "
                          + "; ".join(f"{k}: {n:,}" for k, n in d["excluded"].items()) + "."))
    rep.add(Table("Clean scores", ["model", "kind", "encoders", "macro-F1", "micro-F1", "mAP (macro)"],
                  [[m["label"], m["kind"], " + ".join(Path(e).name or e for e in m["encoders"].values()),
                    fmt(result["clean"][m["label"]]["f1_macro"]), fmt(result["clean"][m["label"]]["f1_micro"]),
                    fmt(result["clean"][m["label"]]["map_macro"])] for m in models]))
    names = list(result["corruptions"])
    rep.add(Table("Relative robustness (MultiBench): the mean macro-F1 over the levels (area under the curve)",
                  ["model", *names],
                  [[lab, *(_robustness_cell(result["corruptions"][n], lab) for n in names)] for lab in labels],
                  note="-: the model does not read that modality (its score does not change); n/a: it cannot "
                       "score the movies at some level (see that corruption's table)."))
    unlearned = [f"{m['label']} ({', '.join(k for k, v in m['stand_in_learned'].items() if not v)})"
                 for m in models if m["stand_in_learned"] and not all(m["stand_in_learned"].values())]
    if unlearned:
        rep.add(Text("p", "Trained only on movies with both modalities and no modality dropout, so the stand-in "
                          "used when a modality is removed was never learned: " + "; ".join(unlearned) + "."))
    for name, entry in result["corruptions"].items():
        png = chart(name, entry, models, out / f"fig-{name}.png")
        rep.charts.append(png)
        extra = next((k for k in MEASURED if k in entry["levels"][0]), None)
        header = ["level", "what it does", *([MEASURED[extra][0]] if extra else []), *labels]
        rows = [[f"{info['level']:g}", info["meaning"], *([MEASURED[extra][1](info[extra])] if extra else []),
                 *(_cell(entry["scores"][lab][k]) for lab in labels)] for k, info in enumerate(entry["levels"])]
        why = sorted({p["why"] for lab in labels for p in entry["scores"][lab] if p.get("why")})
        rep.add(Text("h2", entry["title"]),
                Figure(png, f"{entry['title']}: macro- and micro-F1 against the corruption level."),
                Table(f"{entry['title']} (macro-F1 / micro-F1)", header, rows,
                      note="n/a: " + "; ".join(why) if why else ""))
    return rep


def write_page(result: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write robustness.json, the charts, robustness.md and robustness.html into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULT_FILE, result)
    rep = build(result, out)
    md, page = out / "robustness.md", out / "robustness.html"
    write_text(md, to_markdown(rep, out))
    write_text(page, to_html(rep))
    return {"json": out / RESULT_FILE, "markdown": md, "html": page, "charts": rep.charts}


def read_result(out: str | Path) -> dict[str, Any]:
    """robustness.json of an output folder, what `write_page` rebuilds the page from; a missing file is a
    FileNotFoundError, any other bad file a ValueError naming it."""
    return read_json_object(Path(out) / RESULT_FILE, ValueError, " (run `genrefusion robustness` first)",
                            missing=FileNotFoundError)
