"""A whole catalog through a saved model: chunks of movies, their posters decoded in a background thread while the
previous chunk is encoded, one prediction row per movie (CSV or JSONL). `genrefusion predict --input` calls it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .base import PredictorBase


def decoded_chunks(predictor: PredictorBase, movies: list, chunk: int):
    """(movies, posters, plots, skipped) per chunk of `chunk` movies, the posters of the next chunk decoded in a
    background thread while the current one is encoded (decoding releases the GIL, so it overlaps the encoders).
    A movie whose poster does not decode, or that the model cannot predict from, is skipped with its reason."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.posters import load_poster  # PIL only: an exported model runs without torch

    def decode(part: list):
        ok, posters, plots, skipped = [], [], [], []
        for m in part:
            try:
                poster = load_poster(m.poster) if m.poster else None
                predictor.check(poster, m.plot)
            except ValueError as e:  # one bad movie must not sink the catalog; it is named on stderr
                skipped.append((m, e))
                continue
            ok.append(m)
            posters.append(poster)
            plots.append(m.plot)
        return ok, posters, plots, skipped

    parts = [movies[i:i + chunk] for i in range(0, len(movies), chunk)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-posters") as pool:
        pending = pool.submit(decode, parts[0]) if parts else None
        for k in range(len(parts)):
            done = pending.result()
            pending = pool.submit(decode, parts[k + 1]) if k + 1 < len(parts) else None
            yield done


def predict_catalog(predictor: PredictorBase, movies: list, out_path: Path | None, chunk: int) -> int:
    """Predict `movies` `chunk` at a time into `out_path` (.csv or JSONL; None: JSONL to stdout); returns how many
    were skipped (each named on stderr)."""
    import csv

    fmt = "csv" if out_path is not None and out_path.suffix.lower() == ".csv" else "jsonl"
    fh = open(out_path, "w", encoding="utf-8", newline="") if out_path else sys.stdout
    writer = None
    failed = 0
    try:
        if fmt == "csv":
            writer = csv.writer(fh)
            writer.writerow(["id", "predicted", *predictor.genres])
        for ok, posters, plots, skipped in decoded_chunks(predictor, movies, chunk):
            for m, e in skipped:
                failed += 1
                print(f"skipped {m.id}: {e}", file=sys.stderr)
            for m, r in zip(ok, predictor.predict(posters, plots) if ok else []):
                if writer:  # CSV has no column for them: the warnings go to stderr, named by movie
                    for w in r["warnings"]:
                        print(f"warning: {m.id}: {w['message']}", file=sys.stderr)
                    writer.writerow([m.id, "|".join(r["predicted"]),
                                     *(f"{r['probabilities'][g]:.6f}" for g in predictor.genres)])
                else:
                    row = {"id": m.id, "predicted": r["predicted"], "probabilities": r["probabilities"],
                           "contribution": r["contribution"], "warnings": r["warnings"]}
                    fh.write(json.dumps(row) + "\n")
    finally:
        if out_path:
            fh.close()
    return failed
