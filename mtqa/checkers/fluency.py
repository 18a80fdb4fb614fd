"""Fluency from language-model surprisal, normalised for word rarity (SLOR), and garbled spans.

Per document, the body sentences (boilerplate is skipped) are read as one text, a paragraph per
line, in overlapping windows, each opened by the model's prefix token (``<|endoftext|>`` for
SmolLM2, ``<bos>`` for Gemma) so that the first word is scored too and every window reads as the
start of a text. Token surprisals are summed per word (a run of non-space characters). A word's *excess* is
its LM surprisal minus its unigram surprisal from ``wordfreq`` (the SLOR numerator, Pauls & Klein
2012; Lau et al. 2017): a name or a rare correct word is hard for the LM *and* rare. The excess is
then standardised against what correct words of the same rarity and kind (first word, opening
quote, punctuation) show, fitted on MQM data, so that names, numbers and rare words are not
punished. Fluency (0-100) comes from the standardised excess above a floor, summed over the
words of a sentence or document with a prior of fluent words; garbled spans are runs of words
whose standardised excess stands out from their own document's.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import numpy as np

from mtqa.checkers.base import BaseChecker
from mtqa.errors import CheckerUnavailable, ConfigError
from mtqa.types import CheckResult, Finding, Kind, SegmentedDocument, Severity, WordEvidence
from mtqa.version import __version__

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

    from mtqa.config import Settings
    from mtqa.models import LoadedLM, ModelPool

__all__ = ["MEASURES", "PRIOR_FLUENT_WORDS", "SENTENCE_MAX", "SENTENCE_SUMS", "WORD_SURPRISAL",
           "FluencyChecker", "FluencyScale", "WordScores", "load_scale", "sentence_measures"]

#: What the checker emits for the calibration (``mtqa.calibrate`` reads these names): per body
#: sentence (``CheckResult.sentence_features``) the numbers a scoring unit sums, and the one it
#: takes the maximum of; per word (``CheckResult.words``) the LM surprisal, nats.
SENTENCE_SUMS: tuple[str, ...] = ("words", "tokens", "lm_sum", "excess_sum", "excess_pos_sum",
                                  "cost_sum")
SENTENCE_MAX = "z0_max"
WORD_SURPRISAL = "lm"

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\S+")
_LEXICAL = re.compile(r"[^\W_]")
_OPENING = frozenset("\"'“‘«‹([{")
_PRECISIONS = ("auto", "fp32", "bf16", "int8")
_NO_FEATURES: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class WordScores:
    """Surprisals (nats) of the body words of one document, before any threshold is applied.

    ``start``/``end`` are offsets into ``Document.mt``; ``sentence`` indexes
    ``SegmentedDocument.sentences``; ``lm`` sums the word's token surprisals; ``unigram`` is
    ``-ln`` of its wordfreq frequency (floored), 0 for words without letters or digits;
    ``lm_first`` is the surprisal of the word's first token alone (where the word meets its
    context). ``token_surprisal`` holds every scored token of the document, in order.
    ``expected`` holds, per word, the tokens the model found likeliest where its first token
    stands (likeliest first, stripped of spaces; empty when not read): what it expected there.
    """

    start: tuple[int, ...]
    end: tuple[int, ...]
    sentence: tuple[int, ...]
    lm: tuple[float, ...]
    lm_first: tuple[float, ...]
    unigram: tuple[float, ...]
    tokens: tuple[int, ...]
    token_surprisal: tuple[float, ...]
    expected: tuple[tuple[str, ...], ...] = ()

    def __setstate__(self, state: Sequence[object]) -> None:
        # NOTE: pickles of the LM pass written before ``expected`` existed (the caches of
        # scripts/calibrate.py and benchmarks/fluency_mqm.py) load with none
        names = [f.name for f in fields(self)]
        values = dict(zip(names, state))
        values.setdefault("expected", ())
        for n in names:
            object.__setattr__(self, n, values[n])

    @property
    def excess(self) -> NDArray[np.float64]:
        """LM minus unigram surprisal per word (negative SLOR numerator): high is anomalous."""
        return np.asarray(self.lm, dtype=np.float64) - np.asarray(self.unigram, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class FluencyScale:
    """Sentence fluency 0-100 fitted to people: the predicted mean naturalness rating.

    ``fluency = 100 * sigmoid(intercept + sum_k coef_k * (m_k - mean_k) / scale_k)`` over the
    ``measures`` of ``sentence_measures``, fitted (``scripts/fit_fluency.py``) so that
    ``1 + 3 * fluency / 100`` predicts the mean 1-4 rating crowd workers gave the sentence
    (Lau, Clark & Lappin's BNC round trips). ``version`` names the fit in signatures.
    """

    model: str
    version: str
    weights_sha: str
    measures: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def fluency(self, measures: Mapping[str, float]) -> float:
        """0-100 from a sentence's measures."""
        eta = self.intercept + sum(
            c * (measures[m] - mu) / sd
            for m, mu, sd, c in zip(self.measures, self.mean, self.scale, self.coef))
        return 100.0 / (1.0 + math.exp(-max(min(eta, 50.0), -50.0)))


#: where the fitted scales live (one per language model), shipped with the package
SCALE_FILE = "data/fluency_scale.json"
SCALE_SCHEMA = "mtqa.fluency-scale/1"


#: the word norms (what a correct word's excess is expected to be, ``FluencyChecker``'s class
#: constants of these names) a model's entry in the scale file may fit for its own readings
#: (``benchmarks/fluency_mqm.py --fit --write-norms``); absent ones keep the defaults, fitted
#: on SmolLM2's readings
NORMS: tuple[str, ...] = (
    "EXPECTED_EXCESS", "EXCESS_SPREAD", "PUNCT_ONLY_EXCESS", "PUNCT_ONLY_SPREAD",
    "FIRST_WORD_OFFSET", "SENTENCE_START_OFFSET", "OPEN_PUNCT_OFFSET", "RARE_TOKEN_EXCESS",
    "RARE_TOKEN_SPREAD",
)
#: norms that are one value per rarity knot (``FluencyChecker.RARITY_KNOTS``)
_KNOT_NORMS = ("EXPECTED_EXCESS", "EXCESS_SPREAD")


def load_norms(model: str, weights_sha: str, path: Path | None = None
               ) -> dict[str, float | tuple[float, ...]]:
    """The word norms fitted for ``model`` with these weights (``NORMS``), empty when none
    were: then the defaults apply.

    Raises:
        ConfigError: the file is unreadable, or its norms are malformed.
    """
    return _norms_of(model, *_scale_entry(model, weights_sha, path))


def _norms_of(model: str, where: str, entry: Mapping[str, object] | None
              ) -> dict[str, float | tuple[float, ...]]:
    raw = (entry or {}).get("norms") or {}
    out: dict[str, float | tuple[float, ...]] = {}
    try:
        if not isinstance(raw, dict):
            raise TypeError("norms must be an object")
        for name, value in raw.items():
            if name not in NORMS:
                raise ValueError(f"unknown norm {name!r}")
            if name in _KNOT_NORMS:
                values = tuple(float(v) for v in value)
                if len(values) != len(FluencyChecker.RARITY_KNOTS):
                    raise ValueError(f"{name} needs {len(FluencyChecker.RARITY_KNOTS)} values")
                out[name] = values
            else:
                out[name] = float(value)
    except (TypeError, ValueError) as exc:
        err = f"{where}: malformed word norms for {model} ({exc})"
        raise ConfigError(err) from exc
    return out


def _scale_entry(model: str, weights_sha: str, path: Path | None
                 ) -> tuple[str, dict[str, object] | None]:
    """Where the scale file is, and ``model``'s entry in it when fitted for these weights."""
    where = str(path) if path is not None else f"mtqa/{SCALE_FILE}"
    try:
        text = (path.read_text(encoding="utf-8") if path is not None
                else resources.files("mtqa").joinpath(SCALE_FILE).read_text("utf-8"))
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        err = f"{where}: cannot read the fluency scale ({exc})"
        raise ConfigError(err) from exc
    if data.get("schema") != SCALE_SCHEMA:
        err = f"{where}: schema must be {SCALE_SCHEMA!r}, not {data.get('schema')!r}"
        raise ConfigError(err)
    entry = data.get("models", {}).get(model)
    if entry is None:
        return where, None
    if entry.get("weights_sha") != weights_sha:
        logger.warning("fluency scale for %s was fitted on weights %s, not %s: not applied",
                       model, entry.get("weights_sha"), weights_sha)
        return where, None
    return where, cast("dict[str, object]", entry)


def load_scale(model: str, weights_sha: str, path: Path | None = None) -> FluencyScale | None:
    """The fitted scale for ``model`` with these weights, or None when there is none: a scale
    fitted for other weights is never applied.

    Raises:
        ConfigError: the file is unreadable or malformed.
    """
    return _scale_of(model, weights_sha, *_scale_entry(model, weights_sha, path))


def _scale_of(model: str, weights_sha: str, where: str, found: Mapping[str, object] | None
              ) -> FluencyScale | None:
    if found is None or "measures" not in found:
        return None
    entry = cast("dict[str, Any]", found)
    try:
        measures = tuple(str(m) for m in entry["measures"])
        unknown = [m for m in measures if m not in MEASURES]
        if unknown:
            raise ValueError(f"unknown measures {unknown}")
        scale = FluencyScale(
            model=model, version=str(entry["version"]), weights_sha=weights_sha,
            measures=measures, mean=tuple(float(v) for v in entry["mean"]),
            scale=tuple(float(v) for v in entry["scale"]),
            coef=tuple(float(v) for v in entry["coef"]), intercept=float(entry["intercept"]))
    except (KeyError, TypeError, ValueError) as exc:
        err = f"{where}: malformed fluency scale for {model} ({exc})"
        raise ConfigError(err) from exc
    if not len(scale.mean) == len(scale.scale) == len(scale.coef) == len(measures):
        err = f"{where}: fluency scale for {model}: measures, mean, scale and coef differ in length"
        raise ConfigError(err)
    return scale


def _norms_tag(norms: Mapping[str, object]) -> str:
    """``|norms:DIGEST`` naming a model's own word norms in the signature; "" for the defaults
    (signatures of models without them are unchanged)."""
    if not norms:
        return ""
    digest = hashlib.sha256(json.dumps(dict(norms), sort_keys=True).encode()).hexdigest()[:8]
    return f"|norms:{digest}"


@dataclass(frozen=True, slots=True)
class _Text:
    """The body text of one document as scored, with the map back into ``Document.mt``."""

    text: str
    text_starts: tuple[int, ...]  # where each piece copied from doc.mt starts in text
    doc_starts: tuple[int, ...]  # and in doc.mt
    sentence_starts: tuple[int, ...]  # doc offsets of the body sentences, ascending
    sentence_index: tuple[int, ...]  # their indices in SegmentedDocument.sentences

    def to_doc(self, i: int) -> int:
        """The offset in ``doc.mt`` of offset ``i`` of ``text`` (never a joining newline)."""
        k = bisect.bisect_right(self.text_starts, i) - 1
        return self.doc_starts[k] + (i - self.text_starts[k])


@dataclass(frozen=True, slots=True)
class _Window:
    doc: int
    ids: tuple[int, ...]
    first: int  # position in ids of the first target scored in this window
    offset: int  # index of that target in the document's token list


class FluencyChecker(BaseChecker):
    """Scores fluency 0-100 per body sentence and document, and finds garbled spans.

    The language model is loaded in the constructor (``mtqa.models.load_lm``) unless ``model``
    and ``tokenizer`` are injected: a module with ``get_decoder()`` and
    ``get_output_embeddings()`` (a transformers causal LM or ``mtqa.llama.LlamaLM``) and a fast
    tokenizer (``tokenizers.Tokenizer`` or a transformers fast tokenizer).

    Raises:
        CheckerUnavailable: from the constructor, when the model cannot be loaded.
    """

    name: ClassVar[str] = "fluency"

    #: at most this many windows, and this many token positions padding included, per forward
    #: pass (a longer window goes alone): sorted by length, padding stays small, and short
    #: segments still fill the matrix products
    BATCH_SIZE: ClassVar[int] = 32
    BATCH_TOKENS: ClassVar[int] = 2048
    #: tokens per window, and tokens of already-scored text repeated as context in the next one;
    #: 1024 holds most news articles whole (1.5x the tokens/s of 512, which re-reads context)
    WINDOW: ClassVar[int] = 1024
    CONTEXT: ClassVar[int] = 256
    #: ``auto``: bf16 for the native backend where the device has native bfloat16, else fp32
    #: (``mtqa.models.resolve_precision``); ``int8`` quantises the decoder (not batch-invariant)
    PRECISION: ClassVar[str] = "auto"
    #: unigram frequency given to words wordfreq does not know (its English list stops at 1e-8)
    UNKNOWN_FREQ: ClassVar[float] = 1e-8
    #: fluency: each word costs max(0, z0 - PENALTY_FROM), z0 its standardised excess (below);
    #: a text's penalty is the sum over (words + PRIOR_WORDS), as if PRIOR_WORDS fluent words were
    #: added, so that short texts are scored by their errors (as MQM counts them) and long ones by
    #: error density; fluency = 100 / (1 + exp((penalty - SCORE_MID) / SCORE_SCALE)).
    #: Chosen on WMT21 zh-en MQM (first 41 documents; ``benchmarks/fluency_mqm.py --tune``).
    PENALTY_FROM: ClassVar[float] = -1.0
    PRIOR_WORDS: ClassVar[float] = 30.0
    SCORE_MID: ClassVar[float] = 0.9
    SCORE_SCALE: ClassVar[float] = 0.15
    #: what a *correct* word's excess is expected to be, by rarity: piecewise linear in the word's
    #: unigram surprisal (knots), with its spread; plus offsets for words with less context or
    #: extra punctuation. Fitted by ``benchmarks/fluency_mqm.py --fit`` on the words of WMT21
    #: zh-en MQM (first 41 documents, fp32) that no rater marked: this is what keeps names,
    #: numbers and rare correct words (excess +1 nats on average when wordfreq does not know
    #: them, -4 at frequency 1e-6) from being flagged.
    RARITY_KNOTS: ClassVar[tuple[float, ...]] = (
        2.5, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 17.5, 18.42
    )
    EXPECTED_EXCESS: ClassVar[tuple[float, ...]] = (
        -1.59, -2.11, -2.76, -2.87, -3.95, -3.95, -4.53, -5.14, -2.41, -2.62
    )
    EXCESS_SPREAD: ClassVar[tuple[float, ...]] = (
        0.69, 1.71, 2.23, 2.94, 3.49, 4.0, 4.56, 4.84, 4.37, 5.0
    )
    #: expected extra excess of: the first word of a text, a sentence's first word, a word opening
    #: with a quote or bracket, a word of punctuation only (whose unigram surprisal is 0)
    FIRST_WORD_OFFSET: ClassVar[float] = 5.98
    SENTENCE_START_OFFSET: ClassVar[float] = 0.93
    OPEN_PUNCT_OFFSET: ClassVar[float] = 4.86
    PUNCT_ONLY_EXCESS: ClassVar[float] = 2.59
    PUNCT_ONLY_SPREAD: ClassVar[float] = 5.65
    #: a rare word's LM surprisal grows with the tokens it is spelled in while its unigram
    #: surprisal stops at the floor: per extra token, the expected excess and spread grow this
    #: much, phased in between RARE_FROM and RARE_FULL nats of unigram surprisal
    RARE_FROM: ClassVar[float] = 12.0
    RARE_FULL: ClassVar[float] = 18.42
    RARE_TOKEN_EXCESS: ClassVar[float] = 1.32
    RARE_TOKEN_SPREAD: ClassVar[float] = 0.83
    #: the model's likeliest tokens kept per word (``WordScores.expected``: what the messages
    #: say it expected); read off the same vocabulary projection, they change no number
    EXPECTED_TOP: ClassVar[int] = 3
    #: the least spread used: function words vary little, yet 1-2 nats on "the" is not an error
    SPREAD_FLOOR: ClassVar[float] = 3.0
    #: spans: a word's standardised excess is compared with its document's (robust centre and
    #: spread, shrunk towards 0 and 1 with the weight of PRIOR_WEIGHT words)
    PRIOR_WEIGHT: ClassVar[float] = 20.0
    #: standardised excess above which a word is anomalous, and above which a span is major
    Z_MINOR: ClassVar[float] = 1.0
    Z_MAJOR: ClassVar[float] = 3.5
    #: excess (nats) a word needs besides its z-score: a clean document has outliers too
    MIN_EXCESS: ClassVar[float] = 2.0
    #: words added to a span on each side (within its sentence)
    EXTEND_LEFT: ClassVar[int] = 1
    EXTEND_RIGHT: ClassVar[int] = 1

    @classmethod
    def major_weight(cls, confidence: float) -> float:
        """How major a span of this checker is, 0 to 1 and continuous: 0 where a span first
        appears (its peak at ``Z_MINOR``), 1 from the major threshold (``Z_MAJOR``, confidence
        .5) up. A span's ``confidence`` is ``sigmoid(peak - Z_MAJOR)``; the calibration counts
        this weight instead of the severity, so a score never jumps when one span's peak
        crosses the threshold (its severity does; the span calibration re-judges it anyway).
        """
        c = min(max(confidence, 1e-12), 1.0 - 1e-12)
        peak_over = math.log(c / (1.0 - c))  # peak - Z_MAJOR
        return min(max(1.0 + peak_over / (cls.Z_MAJOR - cls.Z_MINOR), 0.0), 1.0)

    def __init__(
        self,
        *,
        lm_model: str | None = None,
        cache_dir: Path | None = None,
        batch_size: int = BATCH_SIZE,
        threads: int | None = None,
        device: str = "cpu",
        precision: str = PRECISION,
        window: int = WINDOW,
        context: int = CONTEXT,
        backend: str = "auto",
        model: torch.nn.Module | None = None,
        tokenizer: Tokenizer | PreTrainedTokenizerBase | None = None,
        language_model: LoadedLM | None = None,
        expected_top: int = EXPECTED_TOP,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"fluency: batch_size must be at least 1, got {batch_size}")
        if precision not in _PRECISIONS:
            err = f"fluency: precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}"
            raise ConfigError(err)
        if not 0 <= context < window - 1:
            err = (f"fluency: need 0 <= context < window - 1 (a window is the prefix token, the "
                   f"context, then at least one token to score), got context={context}, "
                   f"window={window}")
            raise ConfigError(err)
        try:
            import torch
        except ImportError as exc:
            raise CheckerUnavailable(self.name, f"torch is not installed ({exc})") from exc
        if threads is not None:
            torch.set_num_threads(threads)
        if expected_top < 0:
            raise ConfigError(f"fluency: expected_top must be 0 or more, got {expected_top}")
        self.batch_size = batch_size
        self.device = device
        #: likeliest tokens kept per word (0: none read, as a feature pass that needs no
        #: messages may ask; the numbers are the same either way)
        self.expected_top = expected_top
        self.window = window
        self.context = context
        from mtqa.models import backend_tokenizer, load_lm, prefix_token_id

        if model is None or tokenizer is None:
            # NOTE: auto, fp32 and bf16 are applied where the model loads (the owner's pool), so
            # a lent copy (``language_model``) is read as it is; int8 converts it, so it loads
            # its own
            if language_model is not None and precision != "int8":
                lm = language_model
            else:
                lm = load_lm(lm_model, cache_dir=cache_dir, device=device, checker=self.name,
                             backend=backend, precision="fp32" if precision == "int8" else precision)
            model, fast, prefix = lm.model, lm.tokenizer, lm.prefix_id
            self.model_name, self.weights_sha, self.backend = lm.name, lm.weights_sha, lm.backend
            self.precision = "int8" if precision == "int8" else lm.precision
        else:
            from mtqa.llama import LlamaLM

            self.backend = "native" if isinstance(model, LlamaLM) else "transformers"
            model, self.precision = _injected_precision(model, precision)
            fast = backend_tokenizer(tokenizer, self.name)
            config = getattr(model, "config", None)
            self.model_name = str(getattr(config, "name_or_path", "") or "injected")
            self.weights_sha = "injected"
            special = {k: str(getattr(tokenizer, k)) for k in ("bos_token", "eos_token")
                       if getattr(tokenizer, k, None)}
            found = prefix_token_id(fast, special)
            if found is None:
                err = "the tokenizer has no <|endoftext|>, BOS or EOS token"
                raise CheckerUnavailable(self.name, err)
            prefix = found
        #: the fitted 0-100 scale for this model (None: the legacy MQM-penalty map below)
        where, entry = _scale_entry(self.model_name, self.weights_sha, None)
        self.scale: FluencyScale | None = _scale_of(self.model_name, self.weights_sha, where,
                                                    entry)
        #: the word norms fitted for this model (``NORMS``), over the class defaults
        self.norms = _norms_of(self.model_name, where, entry)
        for name, value in self.norms.items():
            setattr(self, name, value)  # NOTE: instance values over the ClassVar defaults
        module = _apply_precision(model, "int8") if self.precision == "int8" else model
        module.eval()
        self._model: torch.nn.Module | None = module.to(device)
        self._tokenizer: Tokenizer | None = fast
        self._prefix = prefix

    @classmethod
    def from_settings(cls, settings: Settings, *, models: ModelPool) -> Self:
        """The checker ``settings`` describe, reading the pool's copy of the language model."""
        cache_dir = Path(settings.cache_dir) if settings.cache_dir else None
        lm = models.lm(settings.lm_model, cache_dir=cache_dir, device=settings.device,
                       backend=settings.lm_backend, checker=cls.name,
                       precision=settings.precision)
        return cls(lm_model=settings.lm_model, cache_dir=cache_dir,
                   batch_size=settings.batch_size, threads=settings.threads,
                   device=settings.device, precision=settings.precision,
                   backend=settings.lm_backend, language_model=lm)

    # --- public API -------------------------------------------------------------------------

    @property
    def signature(self) -> str:
        """Every setting that changes the numbers (batch size and threads do not)."""
        return (
            f"fluency|model:{self.model_name}|rev:{self.weights_sha}|impl:{self.backend}"
            f"|prec:{self.precision}"
            f"|win:{self.window}|ctx:{self.context}|open:prefix"
            f"|scale:{self.scale.version if self.scale is not None else 'legacy'}"
            f"{_norms_tag(self.norms)}"
            f"|mtqa:{__version__}"
        )

    def check(self, docs: Sequence[SegmentedDocument]) -> list[CheckResult]:
        """Score each document's body text; one result per document, in input order."""
        scores = self.score_words(docs)
        return [self.analyse(sd, ws) for sd, ws in zip(docs, scores)]

    def score_words(self, docs: Sequence[SegmentedDocument]) -> list[WordScores]:
        """Run the language model: the surprisal of every body word of every document."""
        model, tokenizer = self._require()
        texts = [_body_text(sd) for sd in docs]
        started = time.perf_counter()
        enc = tokenizer.encode_batch([t.text for t in texts], add_special_tokens=False)
        windows: list[_Window] = []
        for d, e in enumerate(enc):
            windows.extend(_windows(d, e.ids, self._prefix, self.window, self.context))
        token_scores = [np.zeros(len(e.ids), dtype=np.float64) for e in enc]
        token_top = [np.full((len(e.ids), self.expected_top), -1, dtype=np.int64) for e in enc]
        scored, tops = self._score_windows(model, windows)
        for w, values, top in zip(windows, scored, tops):
            token_scores[w.doc][w.offset : w.offset + len(values)] = values
            if top:
                token_top[w.doc][w.offset : w.offset + len(top)] = top
        spelled = _token_texts(tokenizer, token_top) if self.expected_top else None
        n_tokens = sum(len(e.ids) for e in enc)
        dt = time.perf_counter() - started
        logger.debug("scored %d tokens in %d windows in %.2fs", n_tokens, len(windows), dt)
        return [
            _word_scores(sd, t, e.offsets, s, self.UNKNOWN_FREQ, top if spelled else None,
                         spelled)
            for sd, t, e, s, top in zip(docs, texts, enc, token_scores, token_top)
        ]

    def analyse(self, sd: SegmentedDocument, ws: WordScores) -> CheckResult:
        """Turn one document's word surprisals into scores, findings and features (no LM)."""
        excess = ws.excess
        n_sent = len(sd.sentences)
        if excess.size == 0:
            sentence_scores: list[float | None] = [None] * n_sent
            return CheckResult(
                checker=self.name,
                doc_id=sd.doc.id,
                signature=self.signature,
                sentence_scores=tuple(sentence_scores),
                doc_score=None,
                features=MappingProxyType(self._features(ws, excess, excess, (), excess)),
            )
        z0 = self._standardise(sd, ws, excess)
        center, scale = self._context(z0)
        z = (z0 - center) / scale
        cost = np.maximum(z0 - self.PENALTY_FROM, 0.0)
        sentence_scores = [None] * n_sent
        per_sentence: list[Mapping[str, float]] = [_NO_FEATURES] * n_sent
        sent = np.asarray(ws.sentence)
        lm = np.asarray(ws.lm, dtype=np.float64)
        tokens = np.asarray(ws.tokens, dtype=np.float64)
        uni = np.asarray(ws.unigram, dtype=np.float64)
        weights: list[float] = []
        for i, s in enumerate(sd.sentences):
            if s.kind is Kind.BODY:
                mask = sent == i
                if mask.any():
                    if self.scale is None:
                        sentence_scores[i] = self._fluency(cost[mask])
                    else:
                        sentence_scores[i] = self.scale.fluency(
                            sentence_measures(lm[mask], uni[mask], tokens[mask], cost[mask]))
                    weights.append(float(mask.sum()))
                    per_sentence[i] = MappingProxyType({
                        "words": float(mask.sum()), "tokens": float(tokens[mask].sum()),
                        "lm_sum": float(lm[mask].sum()), "excess_sum": float(excess[mask].sum()),
                        "excess_pos_sum": float(np.maximum(excess[mask], 0.0).sum()),
                        "cost_sum": float(cost[mask].sum()), "z0_max": float(z0[mask].max()),
                    })
        findings = tuple(self._spans(sd, ws, excess, z))
        return CheckResult(
            checker=self.name,
            doc_id=sd.doc.id,
            signature=self.signature,
            findings=findings,
            sentence_scores=tuple(sentence_scores),
            doc_score=(self._fluency(cost) if self.scale is None else document_fluency(
                [v for v in sentence_scores if v is not None], weights)),
            features=MappingProxyType(self._features(ws, excess, z, findings, cost)),
            sentence_features=tuple(per_sentence),
            words=WordEvidence(ws.start, ws.end, MappingProxyType({WORD_SURPRISAL: ws.lm}),
                               expected=ws.expected),
        )

    def close(self) -> None:
        """Drop the model; calling it twice is harmless."""
        self._model = None
        self._tokenizer = None

    # --- language model ---------------------------------------------------------------------

    def _require(self) -> tuple[torch.nn.Module, Tokenizer]:
        if self._model is None or self._tokenizer is None:
            err = "the checker was closed; create a new FluencyChecker"
            raise CheckerUnavailable(self.name, err)
        return self._model, self._tokenizer

    def _score_windows(self, model: torch.nn.Module, windows: list[_Window]
                       ) -> tuple[list[list[float]], list[list[tuple[int, ...]]]]:
        """Surprisal (nats) of the targets of each window, batched by length, in input order,
        and the ids of the ``expected_top`` likeliest tokens at each target (none with 0)."""
        from mtqa.surprisal import score_sequences, score_sequences_top

        seqs = [(w.ids, w.first) for w in windows]
        if not self.expected_top:
            plain = score_sequences(model, seqs, max_rows=self.batch_size,
                                    max_tokens=self.BATCH_TOKENS, device=self.device)
            return plain, [[] for _ in windows]
        return score_sequences_top(model, seqs, top=self.expected_top, max_rows=self.batch_size,
                                   max_tokens=self.BATCH_TOKENS, device=self.device)

    # --- analysis ---------------------------------------------------------------------------

    def _features(
        self,
        ws: WordScores,
        excess: NDArray[np.float64],
        z: NDArray[np.float64],
        findings: Sequence[Finding],
        cost: NDArray[np.float64],
    ) -> dict[str, float]:
        tok = np.asarray(ws.token_surprisal, dtype=np.float64)
        n = float(excess.size)
        feats: dict[str, float] = {"tokens": float(tok.size), "words": n}
        if tok.size:
            feats.update(
                surprisal_mean=float(tok.mean()),
                surprisal_max=float(tok.max()),
                surprisal_p90=float(np.percentile(tok, 90)),
                surprisal_sum=float(tok.sum()),
            )
        if excess.size:
            slor = -excess
            feats.update(
                slor_mean=float(slor.mean()),
                slor_p10=float(np.percentile(slor, 10)),
                slor_min=float(slor.min()),
                excess_pos_sum=float(np.maximum(excess, 0).sum()),
                z_max=float(z.max()),
                z_pos_sum=float(np.maximum(z, 0).sum()),
            )
            feats.update(penalty=self._penalty(cost), penalty_sum=float(cost.sum()))
        feats.update(
            spans=float(len(findings)),
            major_spans=float(sum(f.severity is Severity.MAJOR for f in findings)),
            span_chars=float(sum(f.end - f.start for f in findings)),
        )
        return feats

    def _standardise(
        self, sd: SegmentedDocument, ws: WordScores, excess: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Each word's excess minus what a correct word of its kind has, over that spread."""
        uni = np.asarray(ws.unigram, dtype=np.float64)
        expected = np.interp(uni, self.RARITY_KNOTS, self.EXPECTED_EXCESS)
        spread = np.interp(uni, self.RARITY_KNOTS, self.EXCESS_SPREAD)
        punct, first, starts, opening = _word_classes(sd, ws)
        extra = self._extra_tokens(ws)
        expected += self.RARE_TOKEN_EXCESS * extra
        spread += self.RARE_TOKEN_SPREAD * extra
        expected[punct] = self.PUNCT_ONLY_EXCESS
        spread[punct] = self.PUNCT_ONLY_SPREAD
        expected[first] += self.FIRST_WORD_OFFSET
        expected[starts] += self.SENTENCE_START_OFFSET
        expected[opening] += self.OPEN_PUNCT_OFFSET
        return (excess - expected) / np.maximum(spread, self.SPREAD_FLOOR)

    def _extra_tokens(self, ws: WordScores) -> NDArray[np.float64]:
        """Tokens beyond the first of each word, weighted by how rare the word is (0 to 1)."""
        uni = np.asarray(ws.unigram, dtype=np.float64)
        weight = np.clip((uni - self.RARE_FROM) / (self.RARE_FULL - self.RARE_FROM), 0.0, 1.0)
        return np.maximum(np.asarray(ws.tokens, dtype=np.float64) - 1.0, 0.0) * weight

    def _context(self, z0: NDArray[np.float64]) -> tuple[float, float]:
        """Robust centre and spread of the document's standardised excess, shrunk to (0, 1)."""
        n = float(z0.size)
        k = self.PRIOR_WEIGHT
        med = float(np.median(z0))
        mad = float(np.median(np.abs(z0 - med))) * 1.4826
        center = n * med / (n + k)
        scale = (n * mad + k) / (n + k)
        return center, max(scale, 1e-3)

    def _penalty(self, cost: NDArray[np.float64]) -> float:
        return float(cost.sum()) / (cost.size + self.PRIOR_WORDS)

    def _fluency(self, cost: NDArray[np.float64]) -> float:
        """0-100 from the words' costs (see PENALTY_FROM)."""
        return 100.0 / (1.0 + math.exp((self._penalty(cost) - self.SCORE_MID) / self.SCORE_SCALE))

    def _spans(
        self,
        sd: SegmentedDocument,
        ws: WordScores,
        excess: NDArray[np.float64],
        z: NDArray[np.float64],
    ) -> list[Finding]:
        """Runs of anomalous words, widened by the neighbours they collide with, as findings."""
        flagged = (z >= self.Z_MINOR) & (excess >= self.MIN_EXCESS)
        sent = np.asarray(ws.sentence)
        covered = flagged.copy()
        # NOTE: a word is surprising given the words before it, so the error is often the
        # junction: "in the during the" surprises on "during" alone. Widen within the sentence.
        for shift, width in ((-1, self.EXTEND_LEFT), (1, self.EXTEND_RIGHT)):
            grow = flagged.copy()
            for _ in range(width):
                moved = np.zeros_like(grow)
                if shift < 0:
                    moved[:-1] = grow[1:] & (sent[:-1] == sent[1:])
                else:
                    moved[1:] = grow[:-1] & (sent[1:] == sent[:-1])
                grow = moved
                covered |= moved
        out: list[Finding] = []
        i, n = 0, len(covered)
        while i < n:
            if not covered[i]:
                i += 1
                continue
            j = i
            while j + 1 < n and covered[j + 1] and sent[j + 1] == sent[i]:
                j += 1
            hot = np.flatnonzero(flagged[i : j + 1]) + i
            if hot.size == 0:  # only neighbours of a run that belongs to another sentence
                i = j + 1
                continue
            peak = float(z[hot].max())
            major = peak >= self.Z_MAJOR
            start, end = ws.start[i], ws.end[j]
            words = sd.doc.mt[start:end]
            confidence = 1.0 / (1.0 + math.exp(-(peak - self.Z_MAJOR)))
            out.append(
                Finding(
                    start=start,
                    end=end,
                    category="garbled" if major else "unnatural-phrasing",
                    severity=Severity.MAJOR if major else Severity.MINOR,
                    checker=self.name,
                    message=(
                        f"unexpected wording {words!r}: the language model finds it "
                        f"{float(excess[hot].max()):.1f} nats more surprising than its word "
                        f"frequency explains ({peak:.1f} spreads above this text's norm)"
                    ),
                    confidence=round(confidence, 4),
                    rule="lm-surprisal",
                )
            )
            i = j + 1
        return out


# --- helpers ----------------------------------------------------------------------------------


def document_fluency(values: Sequence[float], words: Sequence[float]) -> float:
    """A document's fluency from its body sentences': their mean weighted by word count.

    A reader meets each word once, so a long bad sentence weighs more than a short one; the
    seed ABC copy (garbled sentences among clean ones) scores below The Hill's clean article
    (``tests/test_fluency.py``, figures in README "Fluency").
    """
    total = float(sum(words))
    if total <= 0:
        return float(np.mean(values))
    return float(sum(v * w for v, w in zip(values, words)) / total)


#: the acceptability measures ``sentence_measures`` computes (a fluency scale reads some of them)
MEASURES = ("mean_lp", "slor", "normlp", "word_lp_min", "word_lp_mean", "word_lp_max",
            "word_slor_min", "word_slor_mean", "log_tokens", "z_cost", "z_cost_prior")
#: ``z_cost_prior`` reads a sentence as if this many fluent words (cost 0) were added to it
PRIOR_FLUENT_WORDS = 5.0


def sentence_measures(lm: NDArray[np.float64], unigram: NDArray[np.float64],
                      tokens: NDArray[np.float64], cost: NDArray[np.float64]
                      ) -> dict[str, float]:
    """LM acceptability measures of one sentence from its words' surprisals (nats).

    ``lm``: each word's LM surprisal (its tokens' sum), ``unigram``: its wordfreq surprisal (0
    for words without letters or digits), ``tokens``: its token count. With log P the LM
    log-probability of the sentence and log U its unigram log-probability (Lau, Clark & Lappin
    2017): ``mean_lp`` = log P / tokens; ``slor`` = (log P - log U) / tokens; ``normlp`` =
    -log P / log U; per word w with letters, ``word_lp`` = -log P(w) / log U(w), and per word
    ``word_slor`` = log P(w) - log U(w): their min, mean and max. ``z_cost`` is minus the mean
    over words of ``cost`` (``FluencyChecker``'s cost: the excess standardised against correct
    words of the same rarity and kind, above ``PENALTY_FROM``), and ``z_cost_prior`` the same
    sum over the words plus ``PRIOR_FLUENT_WORDS`` fluent ones: one odd word weighs less in a
    short sentence than a share of its words would say (people rate such sentences natural).
    Higher is more acceptable for every measure but ``log_tokens`` (the length).
    """
    n = max(float(tokens.sum()), 1.0)
    logp, logu = -float(lm.sum()), -float(unigram.sum())
    lex = unigram > 0
    wlp = -(lm[lex] / unigram[lex]) if lex.any() else np.full(1, -1.0)
    wslor = unigram - lm
    return {
        "mean_lp": logp / n,
        "slor": (logp - logu) / n,
        "normlp": -logp / logu if logu < 0 else -1.0,
        "word_lp_min": float(wlp.min()),
        "word_lp_mean": float(wlp.mean()),
        "word_lp_max": float(wlp.max()),
        "word_slor_min": float(wslor.min()) if wslor.size else 0.0,
        "word_slor_mean": float(wslor.mean()) if wslor.size else 0.0,
        "log_tokens": math.log(n),
        "z_cost": -float(cost.mean()) if cost.size else 0.0,
        "z_cost_prior": -float(cost.sum()) / (cost.size + PRIOR_FLUENT_WORDS),
    }


def _windows(doc: int, ids: Sequence[int], prefix: int, window: int, context: int) -> list[_Window]:
    """Overlapping windows ``[prefix] + ids[start:end]`` of at most ``window`` tokens that score
    every token exactly once.

    Every window opens with the prefix token, so the model reads each as the start of a text:
    Gemma puts much of its attention on the BOS at position 0 and reads a window that opens
    mid-sentence without it badly (word log-probs of The Hill read in 96-token windows
    correlated .71 with the whole reading without it, .95 with it; SmolLM2 .94). Each window after the
    first repeats at least ``context`` already-scored tokens before the tokens it scores; the
    last one is aligned to the end of the text to get the most context.
    """
    span = window - 1  # ids per window, after the prefix
    out: list[_Window] = []
    done = 0  # ids before this one are scored
    while done < len(ids):
        start = 0 if done == 0 else done - context
        end = min(start + span, len(ids))
        if end == len(ids):
            start = max(0, min(start, end - span))
        out.append(_Window(doc, (prefix, *ids[start:end]), 1 + done - start, done))
        done = end
    return out


def _word_classes(sd: SegmentedDocument, ws: WordScores) -> tuple[NDArray[np.bool_], ...]:
    """Masks of words: punctuation only, the text's first, a later sentence's first, opening."""
    n = len(ws.start)
    punct = np.asarray(ws.unigram, dtype=np.float64) == 0.0
    sent = np.asarray(ws.sentence)
    first = np.zeros(n, dtype=bool)
    first[:1] = True
    starts = np.zeros(n, dtype=bool)
    starts[1:] = sent[1:] != sent[:-1]
    opening = np.array([sd.doc.mt[a] in _OPENING for a in ws.start], dtype=bool)
    return punct, first, starts, opening


def _injected_precision(model: torch.nn.Module, precision: str) -> tuple[torch.nn.Module, str]:
    """An injected model in ``precision``, and the precision's name: ``auto`` keeps the model
    as given; another weight type converts a copy of a native model (the caller's stays as it
    is) and a transformers model in place."""
    import copy

    import torch

    from mtqa.llama import DTYPES, LlamaLM, cast_weights, precision_of

    if isinstance(model, LlamaLM):
        if precision in ("auto", "int8") or precision == model.precision:
            return model, model.precision if precision == "auto" else precision
        return cast_weights(copy.deepcopy(model), precision), precision
    if precision == "auto":
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        return model, precision_of(dtype) if dtype in DTYPES.values() else "fp32"
    if precision == "int8":
        return model, precision
    return model.to(DTYPES[precision]), precision


def _apply_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model in the given precision (bf16 converts it in place; int8 makes a copy)."""
    import torch

    if precision == "fp32":
        return model.to(torch.float32)
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        from torch.ao.quantization import quantize_dynamic

        # NOTE: the output projection shares its weight with the input embedding and does not
        # survive 8-bit quantisation (surprisal goes up by half): quantise the decoder only.
        head = model.get_output_embeddings()  # type: ignore[operator]
        names = {
            n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head
        }
        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, names, dtype=torch.qint8
        )
        return quantized
    err = f"fluency: unknown precision {precision!r}"
    raise ConfigError(err)


def _body_text(sd: SegmentedDocument) -> _Text:
    """The body sentences as one text: runs of body sentences of a paragraph, one per line."""
    parts: list[str] = []
    pieces: list[tuple[int, int]] = []
    starts: list[int] = []
    index: list[int] = []
    pos = 0
    run: tuple[int, int] | None = None  # (doc start, doc end) of the current run
    last_para = -1

    def flush() -> None:
        nonlocal pos, run
        if run is None:
            return
        if parts:
            parts.append("\n")
            pos += 1
        pieces.append((pos, run[0]))
        # NOTE: the LM reads the normalised text (plain spaces and quotes, same offsets).
        parts.append(sd.norm[run[0] : run[1]])
        pos += run[1] - run[0]
        run = None

    for i, s in enumerate(sd.sentences):
        if s.kind is not Kind.BODY:
            flush()
            continue
        starts.append(s.start)
        index.append(i)
        if run is not None and s.paragraph == last_para:
            run = (run[0], s.end)
        else:
            flush()
            run = (s.start, s.end)
        last_para = s.paragraph
    flush()
    return _Text(
        "".join(parts),
        tuple(p[0] for p in pieces),
        tuple(p[1] for p in pieces),
        tuple(starts),
        tuple(index),
    )


def _unigram(word: str, unknown_freq: float) -> float:
    """``-ln`` unigram frequency of a word (0 without letters or digits), floored for unknowns."""
    if not _LEXICAL.search(word):
        return 0.0
    from wordfreq import word_frequency

    # NOTE: wordfreq tokenizes the word itself (strips punctuation, splits "Mohajer-6")
    return -math.log(max(word_frequency(word, "en"), unknown_freq))


def _word_scores(
    sd: SegmentedDocument,
    t: _Text,
    offsets: Sequence[tuple[int, int]],
    token_surprisal: NDArray[np.float64],
    unknown_freq: float,
    token_top: NDArray[np.int64] | None = None,
    spelled: Mapping[int, str] | None = None,
) -> WordScores:
    text = t.text
    words = list(_WORD.finditer(text))
    owner = np.full(len(text) + 1, -1, dtype=np.int64)
    for k, m in enumerate(words):
        owner[m.start() : m.end()] = k
    lm = np.zeros(len(words), dtype=np.float64)
    first = np.zeros(len(words), dtype=np.float64)
    ntok = np.zeros(len(words), dtype=np.int64)
    first_token = np.full(len(words), -1, dtype=np.int64)
    for t_index, ((s, e), value) in enumerate(zip(offsets, token_surprisal)):
        # NOTE: byte-level BPE offsets include the token's leading space; trim it. Tokens that
        # are only whitespace (paragraph breaks) belong to no word.
        while s < e and text[s].isspace():
            s += 1
        if s >= e:
            continue
        k = int(owner[s])
        if k >= 0:
            if ntok[k] == 0:
                first[k] = value
                first_token[k] = t_index
            lm[k] += value
            ntok[k] += 1
    start, end, sentence, unigram = [], [], [], []
    for m in words:
        ds = t.to_doc(m.start())
        start.append(ds)
        end.append(ds + (m.end() - m.start()))
        j = bisect.bisect_right(t.sentence_starts, ds) - 1
        sentence.append(t.sentence_index[max(j, 0)])
        unigram.append(_unigram(sd.doc.mt[ds : ds + m.end() - m.start()], unknown_freq))
    return WordScores(
        start=tuple(start),
        end=tuple(end),
        sentence=tuple(sentence),
        lm=tuple(lm.tolist()),
        lm_first=tuple(first.tolist()),
        unigram=tuple(unigram),
        tokens=tuple(ntok.tolist()),
        token_surprisal=tuple(token_surprisal.tolist()),
        expected=() if token_top is None or spelled is None else tuple(
            tuple(spelled[i] for i in token_top[t].tolist() if spelled.get(i)) if t >= 0 else ()
            for t in first_token.tolist()),
    )


def _token_texts(tokenizer: Tokenizer, tops: Sequence[NDArray[np.int64]]) -> dict[int, str]:
    """The text of each token id in ``tops``, stripped of spaces ("" for a token that is only
    space, or part of a character: byte-level BPE splits some characters over tokens)."""
    ids = sorted({int(i) for t in tops for i in np.unique(t) if i >= 0})
    out = {}
    for i in ids:
        text = tokenizer.decode([i]).strip()
        out[i] = "" if "\ufffd" in text else text
    return out
