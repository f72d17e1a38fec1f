"""Counts that describe a loaded dataset: the thesis's Tables 1 and 2 plus what was skipped and why.

`format_data_line` is the one line every command that reads data prints (`features`, `train`, `grid`), and
`skipped_record` is what a run folder's metrics.json records, so they all say the same thing the same way."""
from __future__ import annotations

from typing import Any

from .loader import SPLITS, MovieDataset
from .labels import GENRES
from .records import printable


def data_summary(ds: MovieDataset) -> dict[str, Any]:
    splits = {s: ds.splits.get(s, []) for s in SPLITS} if ds.splits else {"all": list(range(len(ds)))}
    rows = {}
    for name, idx in {**splits, "total": [i for v in splits.values() for i in v]}.items():
        ms = [ds.movies[i] for i in idx]
        rows[name] = {
            "movies": len(ms),
            "with_poster": sum(m.has_poster for m in ms),
            "with_plot": sum(m.has_plot for m in ms),
            "both": sum(m.has_poster and m.has_plot for m in ms),
            "poster_only": sum(m.has_poster and not m.has_plot for m in ms),
            "plot_only": sum(m.has_plot and not m.has_poster for m in ms),
        }
    genre_counts = {}
    for g_i, g in enumerate(GENRES):
        genre_counts[g] = {name: sum(g in ds.movies[i].genres for i in idx) for name, idx in splits.items()}
        genre_counts[g]["total"] = sum(genre_counts[g][s] for s in splits)
    rep = ds.report
    return {
        "source": rep.source,
        "split_mode": ds.split_mode,
        "splits": rows,
        "genres": genre_counts,
        "skipped": dict(rep.skipped_by_kind()),
        "problems": [str(p) for p in rep.problems if p.skipped],  # what was skipped, in the order it was found
        "notices": [str(p) for p in rep.problems if not p.skipped],  # ignored columns / keys: nothing skipped
        "dropped_genres": dict(rep.dropped_genres.most_common()),
        "excluded_no_label": len(rep.excluded_no_label),
        "unlisted_files": rep.unlisted_files,
    }


def skipped_record(ds: MovieDataset, max_problems: int = 20) -> dict[str, Any]:
    """What a run folder records about skipped input: counts per kind and the first problems."""
    problems = [str(p) for p in ds.report.problems if p.skipped]
    return {"skipped": dict(ds.report.skipped_by_kind()), "problems": problems[:max_problems],
            "excluded_no_label": len(ds.report.excluded_no_label)}


def format_skipped(s: dict[str, Any]) -> str:
    """'3 (missing_file 2, bad_id 1)': the count, then the kinds by count; '0' when nothing was skipped."""
    n = sum(s["skipped"].values())
    kinds = sorted(s["skipped"].items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{n:,} (" + ", ".join(f"{k} {v:,}" for k, v in kinds) + ")" if n else "0"


def format_data_line(s: dict[str, Any], modalities: str | None = None, max_files: int = 3) -> str:
    """One line: movies per split, then what was skipped and why, with the first few problems by file."""
    splits = ", ".join(f"{name} {row['movies']:,}" for name, row in s["splits"].items() if name != "total")
    what = f"{s['split_mode']} split: {splits}" if s["split_mode"] != "none" else "no split"
    if modalities:
        what += f"; modalities={modalities}"
    line = f"data: {s['splits']['total']['movies']:,} movies ({what}); "
    if not s["problems"]:
        line += "nothing skipped"
    else:
        more = len(s["problems"]) - max_files
        line += f"skipped {format_skipped(s)}: " + "; ".join(s["problems"][:max_files])
        line += f"; ... {more:,} more (genrefusion data summary lists them)" if more > 0 else ""
    if s["excluded_no_label"]:
        line += f"; {s['excluded_no_label']:,} left with no benchmark genre excluded"
    return line


def format_summary(s: dict[str, Any], max_problems: int = 20) -> str:
    out = [f"Data: {s['source']}  (split: {s['split_mode']})", ""]
    cols = ["movies", "with_poster", "with_plot", "both", "poster_only", "plot_only"]
    total = s["splits"]["total"]["movies"] or 1
    out.append(f"{'split':<8}" + "".join(f"{c:>13}" for c in cols) + f"{'share':>9}")
    for name, row in s["splits"].items():
        out.append(f"{name:<8}" + "".join(f"{row[c]:>13,}" for c in cols) + f"{100 * row['movies'] / total:>8.1f}%")
    out.append("")
    out.append(f"Skipped (bad input): {format_skipped(s)}")
    for p in s["problems"][:max_problems]:
        out.append(f"  - {p}")
    if len(s["problems"]) > max_problems:
        out.append(f"  ... and {len(s['problems']) - max_problems} more")
    for p in s.get("notices", []):
        out.append(f"Notice: {p}")
    dropped = s["dropped_genres"]
    out.append(f"Dropped non-benchmark genre labels: {sum(dropped.values())} "
               f"({', '.join(f'{printable(g)} x{n}' for g, n in dropped.items()) or 'none'})")
    out.append(f"Excluded movies left with no benchmark genre: {s['excluded_no_label']}")
    if s["unlisted_files"]:
        out.append(f"Files in dataset/ not listed in split.json (not loaded): {s['unlisted_files']}")
    out.append("")
    split_names = [k for k in s["splits"] if k != "total"]
    out.append("Per-genre distribution (movies carrying each genre):")
    out.append(f"{'genre':<12}" + "".join(f"{n:>9}" for n in split_names) + f"{'total':>9}")
    for g, counts in sorted(s["genres"].items(), key=lambda kv: -kv[1]["total"]):
        out.append(f"{g:<12}" + "".join(f"{counts[n]:>9,}" for n in split_names) + f"{counts['total']:>9,}")
    return "\n".join(out)
