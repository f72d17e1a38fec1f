"""A catalog goes through the encoders in length-grouped batches of the encoder's batch size, whatever the number
of movies handed over at once: counted encoder calls, each batch's plots of similar length, and the same
probabilities as one movie at a time."""
from __future__ import annotations

import csv
import json
import math

import pytest

from genrefusion.data.loader import load_catalog
from genrefusion.encoders.image import HFImageEncoder
from genrefusion.encoders.text import TextEncoder
from genrefusion.data.images import load_poster
from genrefusion.cli.predict import load_model


def _count_calls(monkeypatch, cls) -> list[int]:
    """Patch `cls.encode` to record the batch size of every call (the number of calls is its length)."""
    calls: list[int] = []
    original = cls.encode

    def counted(self, batch, return_sequence=False):
        key = "input_ids" if "input_ids" in batch else "pixel_values"
        calls.append(batch[key].shape[0])
        return original(self, batch, return_sequence=return_sequence)

    monkeypatch.setattr(cls, "encode", counted)
    return calls


@pytest.fixture
def predictor(trained_run):
    return load_model(trained_run / "model")


def test_predict_encodes_many_movies_in_length_grouped_batches(predictor, synthetic_catalog, monkeypatch):
    movies = load_catalog(synthetic_catalog).movies
    posters = [load_poster(m.poster) if m.poster else None for m in movies]
    plots = [m.plot for m in movies]
    one_by_one = [predictor.predict_one(p, t)["probabilities"] for p, t in zip(posters, plots)]
    predictor.batch_sizes = {"text": 8, "image": 8}
    # the model's own image encoder class: a transformer's (HFImageEncoder) has an encode of its own
    text_calls, image_calls = _count_calls(monkeypatch, TextEncoder), _count_calls(monkeypatch, HFImageEncoder)
    seen_lengths: list[list[int]] = []
    original = TextEncoder.preprocess

    def recording(self, items, train=False):  # the plots' token lengths, call by call
        seen_lengths.append(self.token_lengths(items))
        return original(self, items, train)

    monkeypatch.setattr(TextEncoder, "preprocess", recording)
    batched = [r["probabilities"] for r in predictor.predict(posters, plots)]
    n_plots, n_posters = sum(t is not None for t in plots), sum(p is not None for p in posters)
    assert n_plots > 16 and n_posters > 16  # several batches each
    assert len(text_calls) == math.ceil(n_plots / 8) and sum(text_calls) == n_plots and max(text_calls) == 8
    assert len(image_calls) == math.ceil(n_posters / 8) and sum(image_calls) == n_posters
    # Longest plots first, so every batch pads only up to lengths close to its own.
    flat = [n for call in seen_lengths for n in call]
    assert flat == sorted(flat, reverse=True)
    for a, b in zip(batched, one_by_one):
        assert a == pytest.approx(b, abs=1e-5)


def test_catalog_cli_hands_chunks_to_batched_encoders(serving_cli, trained_run, synthetic_catalog, tmp_path,
                                                     monkeypatch, capsys):
    rows = list(csv.DictReader(synthetic_catalog.open()))
    catalog = synthetic_catalog.parent / "for-batching.csv"
    catalog.write_text("id,plot,poster\n" + "".join(f"{r['id']},{r['plot']},{r['poster']}\n" for r in rows))
    movies = load_catalog(catalog, require_labels=False).movies
    text_calls, image_calls = _count_calls(monkeypatch, TextEncoder), _count_calls(monkeypatch, HFImageEncoder)
    out = tmp_path / "pred.jsonl"
    assert serving_cli(["predict", "--model", str(trained_run / "model"), "--input", str(catalog), "--output",
                        str(out), "--batch-size", "4", "--chunk", "10"]) == 0
    assert f"predicted {len(movies)} movies" in capsys.readouterr().err
    # Per chunk of 10 movies, ceil(present / 4) calls of at most 4 items: never one call per movie.
    chunks = [movies[i:i + 10] for i in range(0, len(movies), 10)]
    want_text = sum(math.ceil(sum(m.plot is not None for m in c) / 4) for c in chunks)
    want_image = sum(math.ceil(sum(m.poster is not None for m in c) / 4) for c in chunks)
    # load_model first runs one fixed movie through the model (it refuses a model whose outputs are not finite)
    assert text_calls[0] == image_calls[0] == 1
    text_calls, image_calls = text_calls[1:], image_calls[1:]
    assert len(text_calls) == want_text < len(movies) and max(text_calls) <= 4
    assert len(image_calls) == want_image < len(movies) and max(image_calls) <= 4
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == [m.id for m in movies]


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_catalog_cli_refuses_a_batch_size_that_is_not_positive(serving_cli, trained_run, synthetic_catalog, bad,
                                                               capsys):
    with pytest.raises(SystemExit) as e:
        serving_cli(["predict", "--model", str(trained_run / "model"), "--input", str(synthetic_catalog),
                     "--batch-size", bad])
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
