"""Counts that describe a loaded dataset: the thesis's Tables 1 and 2 plus what was skipped and why."""
from __future__ import annotations

from typing import Any

from .data import SPLITS, MovieDataset
from .labels import GENRES


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
        "problems": [str(p) for p in rep.problems],
        "dropped_genres": dict(rep.dropped_genres.most_common()),
        "excluded_no_label": len(rep.excluded_no_label),
        "unlisted_files": rep.unlisted_files,
    }


def format_summary(s: dict[str, Any], max_problems: int = 20) -> str:
    out = [f"Data: {s['source']}  (split: {s['split_mode']})", ""]
    cols = ["movies", "with_poster", "with_plot", "both", "poster_only", "plot_only"]
    total = s["splits"]["total"]["movies"] or 1
    out.append(f"{'split':<8}" + "".join(f"{c:>13}" for c in cols) + f"{'share':>9}")
    for name, row in s["splits"].items():
        out.append(f"{name:<8}" + "".join(f"{row[c]:>13,}" for c in cols) + f"{100 * row['movies'] / total:>8.1f}%")
    out.append("")
    skipped = sum(s["skipped"].values())
    out.append(f"Skipped movies (bad input): {skipped}" + (f"  {s['skipped']}" if skipped else ""))
    for p in s["problems"][:max_problems]:
        out.append(f"  - {p}")
    if len(s["problems"]) > max_problems:
        out.append(f"  ... and {len(s['problems']) - max_problems} more")
    dropped = s["dropped_genres"]
    out.append(f"Dropped non-benchmark genre labels: {sum(dropped.values())} "
               f"({', '.join(f'{g} x{n}' for g, n in dropped.items()) or 'none'})")
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
