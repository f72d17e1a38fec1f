"""The teacher a student is distilled from (`genrefusion distill --teacher PATH`, see distill.py).

PATH is one of
* a run folder (`genrefusion train`, or one `seed-<n>/` of a grid row): its `model/`;
* a grid row folder (its `seed-<n>/` runs): the seed ensemble, the mean of the seeds' probabilities;
* a saved model folder (a run's `model/`, or a copy of one).

A row's seeds are ensembled because the mean of several seeds' probabilities is a better teacher than any one
seed: higher macro-F1 (compare --ensemble shows it) and smoother, less over-confident soft targets, while it costs
the student nothing at prediction time (the student is one model either way).

The teacher's probabilities for a movie come from its own encoders through the feature cache (features of the
teacher's encoders, at the precision each was trained at) and its own head, batched by batching.FeatureBatches,
the batch training and the Predictor both build: no second implementation of prediction. Each member is restored
by the Predictor, which verifies the model folder and checks each encoder against its recorded fingerprint.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.labels import GENRES
from ..data.modalities import spec
from ..evaluation import runs
from ..evaluation.scoring import model_features
from ..features.cache import dataset_features
from ..features.spec import FeatureSpec
from ..fusion.batching import FeatureBatches
from ..inference.checkpoint import META_FILE, read_meta
from ..inference.predictor import Predictor

# The scalar test metrics a teacher record carries (model.json stays small; metrics.json has everything).
RECORD_METRICS = ("f1_macro", "f1_micro", "f1_weighted", "f1_samples", "hamming_accuracy", "map_macro")


class TeacherError(ValueError):
    """A teacher path that cannot be used; the message names it and says why."""


@dataclass
class Member:
    """One model of the teacher: its model folder, the run folder holding it (None for a bare model folder) and
    that run's metrics.json (the teacher's own test scores and the data it was trained on)."""

    model_dir: Path
    run_dir: Path | None
    metrics: dict[str, Any] | None
    meta: dict[str, Any]  # model.json as read (checked again, fully, when the Predictor restores it)

    @property
    def weights_sha256(self) -> str:
        return self.meta["weights_sha256"]


@dataclass
class Teacher:
    path: Path
    kind: str  # "run" | "row" | "model"
    members: list[Member]

    # -- what it is ---------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The config its (first) model was trained with: the student starts from the same recipe and data."""
        return dict(self.members[0].meta.get("config") or {})

    @property
    def fusion(self) -> str:
        return self.members[0].meta["model"]["name"]

    @property
    def encoders(self) -> dict[str, str]:
        return {m: r.get("name") for m, r in self.members[0].meta["encoders"].items()}

    @property
    def fingerprint(self) -> str:
        """sha256 over its members' weights and encoder identities: names this exact teacher."""
        h = hashlib.sha256()
        for member in self.members:
            h.update(member.weights_sha256.encode())
            for m, rec in sorted(member.meta["encoders"].items()):
                h.update(f"|{m}:{rec.get('fingerprint_sha256') or rec.get('fingerprint')}".encode())
            h.update(b"\n")
        return h.hexdigest()

    def data_fingerprints(self) -> set[str]:
        """The data fingerprints its runs recorded (empty for a bare model folder, which records none)."""
        return {m.metrics["data"]["fingerprint"] for m in self.members
                if m.metrics and isinstance(m.metrics.get("data"), dict) and "fingerprint" in m.metrics["data"]}

    def recorded_test(self) -> dict[str, Any] | None:
        """Its own test metrics as its runs recorded them: the values for one run, mean and std over a row's seeds
        (None for a bare model folder)."""
        from ..evaluation.stats import seed_summary  # lazy: keeps training.teacher free of scipy, sklearn

        tests = [m.metrics.get("test") for m in self.members if m.metrics]
        if not tests or len(tests) != len(self.members) or not all(isinstance(t, dict) for t in tests):
            return None
        return {k: seed_summary([float(t[k]) for t in tests]) for k in RECORD_METRICS
                if all(isinstance(t.get(k), (int, float)) for t in tests)}

    def record(self) -> dict[str, Any]:
        """What a distilled model's model.json and metrics.json keep under "teacher"."""
        return {
            "path": str(self.path.resolve()), "kind": self.kind, "fingerprint": self.fingerprint,
            "fusion": self.fusion, "encoders": self.encoders,
            "ensemble": len(self.members) > 1,  # probabilities averaged over the members
            "members": [{"model": str(m.model_dir.resolve()), "weights_sha256": m.weights_sha256}
                        for m in self.members],
            "test": self.recorded_test(),
        }

    # -- what it predicts ---------------------------------------------------------------------------------------
    def probabilities(self, dataset, indices: Sequence[int],
                      features: FeatureSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, G), can_predict (n,)) for dataset rows `indices`: the members' mean, each over its
        encoders' features made as `features` says (default FeatureSpec()), at the precisions it was trained
        at (scoring.model_features). can_predict is
        False for a movie lacking a modality some member cannot do without (a unimodal model's one input, or one a
        model trained only on movies with both never learned a stand-in for): its row is not a teacher signal."""
        import torch

        from .train import predict  # lazy: keeps training.teacher free of scipy, sklearn

        features = FeatureSpec() if features is None else features
        indices = list(indices)
        total = np.zeros((len(indices), len(GENRES)), dtype=np.float64)
        ok = np.ones(len(indices), dtype=bool)
        tables: dict[tuple[str, bool], Any] = {}  # members sharing an encoder share its table
        for member in self.members:
            # verifies the folder and the encoders' fingerprints; offline weights under the features' root
            predictor = Predictor(member.model_dir, cache_root=features.cache_root)
            feats = {}
            for m in predictor.modalities:
                key = (predictor.meta["encoders"][m]["fingerprint_sha256"], predictor.sequences)
                if key not in tables:
                    tables[key] = dataset_features(dataset, predictor.encoders[m], model_features(predictor, features),
                                                   sequences=predictor.sequences)
                feats[m] = tables[key]
            with torch.inference_mode():
                probs, _ = predict(predictor.head, FeatureBatches(**feats, sequences=predictor.sequences), indices)
            total += probs
            movies = [dataset.movies[i] for i in indices]
            has = {m: np.array([spec(m).present(x) for x in movies], dtype=bool) for m in predictor.modalities}
            ok &= np.logical_or.reduce(list(has.values()))
            for m in predictor.modalities:
                if not predictor.can_miss(m):
                    ok &= has[m]
            del predictor
        return (total / len(self.members)).astype(np.float32), ok


def _member(model_dir: Path, run_dir: Path | None, metrics: dict[str, Any] | None) -> Member:
    meta = read_meta(model_dir / META_FILE)
    if list(meta["genres"]) != list(GENRES):
        raise TeacherError(f"{model_dir}: the teacher predicts other genres ({len(meta['genres'])}) than the "
                           f"{len(GENRES)} MM-IMDb genres a student learns")
    return Member(model_dir, run_dir, metrics, meta)


def load_teacher(path: str | Path) -> Teacher:
    """The teacher at `path` (see the module docstring); TeacherError / FileNotFoundError naming it otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such teacher (expected a run folder, a grid row folder with seed-*/ "
                                "runs, or a saved model folder)")
    if (path / META_FILE).is_file():  # a model folder; a run's model/ also has the run's metrics beside it
        run_dir = path.parent if path.name == runs.MODEL_DIR else None
        metrics = None
        if run_dir is not None:
            try:
                metrics = runs.read_metrics(run_dir)
            except runs.RunFileMissing:
                run_dir = None
        return Teacher(path, "model", [_member(path, run_dir, metrics)])
    if (path / runs.GRID_FILE).is_file():
        raise TeacherError(f"{path}: a grid folder, not one model; name one of its rows as the teacher, e.g. "
                           f"{path / 'late'}")
    try:
        run_dirs = runs.find_runs(path)
    except runs.RunFileMissing:
        raise TeacherError(f"{path}: not a run folder, a grid row folder (seed-*/ runs) or a model folder (no "
                           f"{META_FILE})") from None
    members = [_member(r.model_dir, r.dir, r.metrics) for r in map(runs.read_run, run_dirs)]
    kind = "run" if run_dirs == [path] else "row"
    fusions = {m.meta["model"]["name"] for m in members}
    if len(fusions) > 1:
        raise TeacherError(f"{path}: its runs are different models ({', '.join(sorted(fusions))}); a row's seeds "
                           "must be one model to be ensembled")
    return Teacher(path, kind, members)
