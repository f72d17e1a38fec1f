"""A grid run folder as the report reads it: grid.json, data_summary.json, each run's metrics.json and (on demand)
its test_predictions.safetensors. A missing or unreadable file is an error naming that file."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    dir: Path
    grid: dict[str, Any]
    summary: dict[str, Any]
    metrics: dict[str, list[dict[str, Any]]]  # row name -> metrics.json of each seed, in grid order

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.grid["rows"]

    @property
    def n_seeds(self) -> int:
        return len(self.rows[0]["runs"])


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (is this a complete `genrefusion grid` run folder?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    grid = _read_json(run_dir / "grid.json")
    for key in ("rows", "n", "split", "data", "slots"):
        if key not in grid:
            raise ValueError(f"{run_dir / 'grid.json'}: no {key!r} entry; not a grid run")
    if not grid["rows"]:
        raise ValueError(f"{run_dir / 'grid.json'}: no rows")
    if len({len(r["runs"]) for r in grid["rows"]}) != 1:
        raise ValueError(f"{run_dir / 'grid.json'}: rows have different numbers of seeds")
    summary = _read_json(run_dir / "data_summary.json")
    metrics = {r["row"]: [_read_json(run_dir / d / "metrics.json") for d in r["runs"]] for r in grid["rows"]}
    return Run(run_dir, grid, summary, metrics)


def load_predictions(run: Run, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each seed's test_predictions.safetensors as {tensor name: array, 'genres': [names]}."""
    from safetensors import SafetensorError, safe_open

    out = []
    for d in row["runs"]:
        path = run.dir / d / "test_predictions.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing")
        try:
            with safe_open(str(path), "np") as f:
                item = {k: f.get_tensor(k) for k in f.keys()}
                item["genres"] = json.loads((f.metadata() or {})["genres"])
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
        except (KeyError, json.JSONDecodeError):
            raise ValueError(f"{path}: no readable 'genres' list in its metadata") from None
        out.append(item)
    return out
