"""Calibrated scores: the checkers' raw numbers -> the MQM penalty a professional rater would give.

A *unit* is a set of body sentences: one sentence of an article, or one line of MQM data (the
unit the model is fitted on). ``unit_features`` collects, for a unit, the raw numbers of every
checker that ran: language-model statistics, counts of structure/grammar findings by severity,
the LM's findings graded by ``FluencyChecker.major_weight`` (continuous: a span's severity flips
at a threshold, its weight does not), and, with a line-parallel reference, chrF/BLEU/similarity/length ratio of the aligned
pairs, unaligned sentences and fact or wording mismatches.

``Calibration`` holds one small model per set of available checkers (the LM may be off, the
reference absent): a Poisson regression with a log link, ``E[penalty] = exp(b + w . x)`` on
standardised inputs ``x``, fitted with an L2 penalty on a document split of WMT21 zh-en MQM
(``scripts/calibrate.py``). Its prediction is the *expected MQM penalty* of the unit (minor 1,
major 5, minor punctuation 0.1, non-translation 25, as in the data), and the 0-100 score is

    score = 100 * exp(-ln 2 * (expected_penalty / SCORE_HALF) ** SCORE_SHAPE)

up to SCORE_HALF and an exponential tail with the same slope above it (``penalty_to_score``):
monotone, 50 at SCORE_HALF points per sentence, chosen so that text people rate natural
scores about 90 (README, "Scores", and ``benchmarks/roundtrip.py --gate``: the constants are
set from the expected penalties of the BNC originals and the seeds, not fitted to MQM). A
document's score is the same mapping of the mean expected penalty of its body sentences.

The fitted parameters live in ``models/calibration.json`` (shipped in the package as
``mtqa/data/calibration.json``), with the data hash, the code version and the held-out figures.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

# NOTE: the checkers' own names for what they emit (spaCy's "assigns"); those modules import
# nothing heavy at their top, and never this one
from mtqa.checkers.fluency import SENTENCE_MAX, WORD_SURPRISAL, FluencyChecker
from mtqa.checkers.fluency import SENTENCE_SUMS as FLUENCY_SUMS
from mtqa.checkers.reference import SENTENCE_SUMS as REFERENCE_SUMS
from mtqa.checkers.reference import (
    WORD_ABSENT,
    WORD_CHRF,
    WORD_LM_COND,
    WORD_UNMATCHED,
    ReferenceChecker,
)
from mtqa.config import read_config_text
from mtqa.errors import ConfigError
from mtqa.normalize import WORD, normalize
from mtqa.types import CheckResult, Kind, SegmentedDocument, Severity, WordEvidence

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "SCORE_HALF", "SCORE_SHAPE", "WORD_INPUTS", "Calibration", "UnitModel", "WordModel",
    "lm_identity", "load_calibration", "shipped_calibration", "penalty_to_score", "unit_features", "variant_for", "word_evidence_ready", "word_inputs",
]

SCHEMA = "mtqa.calibration/1"
#: the headline map from expected MQM penalty per sentence to 0-100 (``penalty_to_score``):
#: 50 at SCORE_HALF points, flat near 0 and steepest around SCORE_HALF (SCORE_SHAPE > 1), so
#: that text people rate natural lands near 90 and garbled text low (README, "Scores")
SCORE_HALF = 5.1
SCORE_SHAPE = 3.5
#: structure categories MQM counts as non-translation or garbage
_BLOCKING = frozenset({"untranslated", "mojibake"})
#: categories that are evidence, not errors of their own: a diff against the reference
EVIDENCE = frozenset({"reference-mismatch"})


def penalty_to_score(penalty: float) -> float:
    """0-100 from an expected MQM penalty per sentence.

    ``100 exp(-ln 2 (p / SCORE_HALF) ** SCORE_SHAPE)`` up to SCORE_HALF (50 there), then an
    exponential tail with the same slope, ``50 exp(-(p - SCORE_HALF) / tail)``, so that very bad
    text keeps distinct scores (the curve alone would round to 0 above ~10 points).
    """
    p = max(penalty, 0.0)
    if p <= SCORE_HALF:
        return 100.0 * math.exp(-math.log(2.0) * (p / SCORE_HALF) ** SCORE_SHAPE)
    return 50.0 * math.exp(-(p - SCORE_HALF) / _score_tail())


def _score_tail() -> float:
    """The tail's scale: the curve's slope at SCORE_HALF, 50 ln 2 SHAPE / HALF, continued."""
    return SCORE_HALF / (math.log(2.0) * SCORE_SHAPE)


def score_to_penalty(score: float) -> float:
    """The inverse of ``penalty_to_score`` (score in (0, 100])."""
    s = min(max(score, 1e-300), 100.0)
    if s >= 50.0:
        x = -math.log(s / 100.0) / math.log(2.0)
        return float(SCORE_HALF * x ** (1.0 / SCORE_SHAPE))
    return SCORE_HALF - _score_tail() * math.log(s / 50.0)


# --- raw features ------------------------------------------------------------------------------


def unit_features(sd: SegmentedDocument, results: Sequence[CheckResult],
                  sentences: Sequence[int]) -> dict[str, float]:
    """Raw numbers of the body sentences ``sentences`` of ``sd`` from each checker's result.

    Keys present depend on what ran: ``lm_*`` with the fluency checker, ``ref_*`` with a
    parallel-mode reference result; the counts of findings are always there (``n_fluency_major``
    and ``n_fluency_minor`` are sums of each LM span's major weight and its complement).
    """
    idx = [i for i in sentences if sd.sentences[i].kind is Kind.BODY]
    chosen = set(idx)
    ranges = [(sd.sentences[i].start, sd.sentences[i].end) for i in idx]
    chars = sum(e - s for s, e in ranges)
    words = sum(len(sd.doc.mt[s:e].split()) for s, e in ranges)
    out: dict[str, float] = {"words": float(words), "chars": float(chars)}
    # NOTE: the context flag (``CONTEXT``): other body text in the document, so the unit is one
    # of a paragraph's or an article's (the scan stops at the first body sentence outside the
    # unit: no quadratic cost on an article)
    out["in_context"] = float(bool(idx) and any(
        s.kind is Kind.BODY and i not in chosen for i, s in enumerate(sd.sentences)))

    def inside(start: int) -> bool:
        return any(s <= start < e for s, e in ranges)

    for r in results:
        if r.checker == ReferenceChecker.name and r.sentence_features:
            stats = [r.sentence_features[i] for i in idx if r.sentence_features[i]]
            if stats:
                for key in REFERENCE_SUMS:
                    out[f"ref_{key}"] = float(sum(m[key] for m in stats))
        if r.checker == FluencyChecker.name and r.sentence_features:
            stats = [r.sentence_features[i] for i in idx if r.sentence_features[i]]
            if stats:
                for key in FLUENCY_SUMS:
                    out[f"lm_{key}"] = float(sum(m[key] for m in stats))
                out[f"lm_{SENTENCE_MAX}"] = float(max(m[SENTENCE_MAX] for m in stats))
        for f in r.findings:
            if not inside(f.start):
                continue
            if f.category in EVIDENCE:
                key = "ref_diff_chars"
                out[key] = out.get(key, 0.0) + float(f.end - f.start)
                continue
            if f.category == "fact-mismatch":
                out["ref_facts"] = out.get("ref_facts", 0.0) + 1.0
                continue
            group = "blocking" if f.category in _BLOCKING else r.checker
            if group == FluencyChecker.name:
                # NOTE: the LM's spans are graded, not counted: a span whose peak sits on the
                # major threshold must not move the score by a whole major span
                major = FluencyChecker.major_weight(f.confidence)
                for sev, part in (("major", major), ("minor", 1.0 - major)):
                    out[f"n_{group}_{sev}"] = out.get(f"n_{group}_{sev}", 0.0) + part
                continue
            sev = "major" if f.severity in (Severity.MAJOR, Severity.CRITICAL) else "minor"
            key = f"n_{group}_{sev}"
            out[key] = out.get(key, 0.0) + 1.0
        ref = r.reference
        if ref is not None and ref.mode == "parallel":
            links = [k for k in ref.alignment if k.mt in chosen]
            ref_rows = sorted({j for k in links for j in k.ref})
            ref_chars = sum(ref.sentences[j].end - ref.sentences[j].start for j in ref_rows
                            if j < len(ref.sentences))
            linked = {k.mt for k in links}
            out["ref_unaligned"] = float(len(chosen - linked)) / max(len(chosen), 1)
            out["ref_len_ratio"] = math.log((chars + 1.0) / (ref_chars + 1.0))
            if links:
                out["ref_similarity"] = float(np.mean([k.similarity for k in links]))
                for name in ("chrF", "BLEU"):
                    vals = [m.score for k in links for m in k.metrics if m.name == name]
                    if vals:
                        out[f"ref_{name.lower()}"] = float(np.mean(vals))
            out.setdefault("ref_facts", 0.0)
            out.setdefault("ref_diff_chars", 0.0)
    return out


def variant_for(raw: Mapping[str, float]) -> str:
    """Which model applies to a unit: ``lm`` and/or ``ref`` parts by what the features hold."""
    lm = "lm_words" in raw
    ref = "ref_len_ratio" in raw
    return f"{'lm' if lm else 'nolm'}-{'ref' if ref else 'free'}"


#: model inputs: name -> how it is computed from the raw features of a unit
def _inputs(raw: Mapping[str, float]) -> dict[str, float]:
    words = raw.get("words", 0.0)
    x: dict[str, float] = {"log_words": math.log1p(words)}
    for group in ("structure", "grammar", "fluency", "blocking"):
        for sev in ("major", "minor"):
            x[f"{group}_{sev}"] = math.log1p(raw.get(f"n_{group}_{sev}", 0.0))
    if "lm_words" in raw:
        n = max(raw["lm_words"], 1.0)
        x["lm_cost_log"] = math.log1p(raw["lm_cost_sum"])
        x["lm_cost_rate"] = raw["lm_cost_sum"] / (n + 5.0)
        x["lm_excess_mean"] = raw["lm_excess_sum"] / n
        x["lm_excess_pos_rate"] = raw["lm_excess_pos_sum"] / n
        x["lm_z0_max"] = raw["lm_z0_max"]
        x["lm_surprisal_mean"] = raw["lm_lm_sum"] / max(raw["lm_tokens"], 1.0)
    if "ref_len_ratio" in raw:
        ratio = raw["ref_len_ratio"]
        x["ref_chrf"] = raw.get("ref_chrf", 0.0) / 100.0
        x["ref_bleu"] = raw.get("ref_bleu", 0.0) / 100.0
        x["ref_similarity"] = raw.get("ref_similarity", 0.0)
        x["ref_shorter"] = max(-ratio, 0.0)
        x["ref_longer"] = max(ratio, 0.0)
        x["ref_unaligned"] = raw.get("ref_unaligned", 0.0)
        x["ref_facts"] = math.log1p(raw.get("ref_facts", 0.0))
        x["ref_diff_share"] = raw.get("ref_diff_chars", 0.0) / max(raw.get("chars", 0.0), 1.0)
        if raw.get("ref_lm_cond_tokens") and "lm_lm_sum" in raw:
            # adequacy: how predictable the words are after the reference (mean nats per
            # token), and the share of their surprisal the reference explains
            cond, free = raw["ref_lm_cond_sum"], raw["lm_lm_sum"]
            x["ref_lm_cond_mean"] = cond / raw["ref_lm_cond_tokens"]
            x["ref_lm_cond_log"] = math.log1p(max(cond, 0.0))
            x["ref_lm_gain_share"] = (free - cond) / max(free, 1.0)
    # NOTE: context inputs (``CONTEXT``): the same readings of a unit that shares its document
    # with other body text. Zero for a unit that is the whole body (a lone sentence), so a
    # model fitted with them scores sentences exactly as its base model does
    for flag, key in CONTEXT.items():
        on = 1.0 if raw.get(key, 0.0) > 0.0 else 0.0
        x[flag] = on
        for name in [k for k in x if k.startswith(CONTEXT_OF)]:
            x[f"{flag}*{name}"] = on * x[name]
    return x


#: the context inputs: name -> the raw 0/1 feature that switches it on: ``ctx``, a unit of a
#: document with other body text (a sentence of a paragraph or an article; the LM read it with
#: its neighbours, the aligner chose among more sentences). Tried too, 2026-12-04: a second
#: flag for units that follow body text (the LM's context), alone or beside ``ctx``, and
#: context weights for the finding counts: each lowered the cross-validated paragraph figures
CONTEXT: Mapping[str, str] = MappingProxyType({"ctx": "in_context"})
#: the inputs whose weight may differ in context (the LM's and the reference metrics' readings
#: and the length; counts of findings mean the same anywhere), each times each context flag
CONTEXT_OF = ("log_words", "lm_", "ref_chrf", "ref_bleu", "ref_similarity", "ref_shorter",
              "ref_longer", "ref_lm_")


def is_context_input(name: str) -> bool:
    """Whether ``name`` is a context input (a ``CONTEXT`` flag or one of its products)."""
    return name in CONTEXT or name.split("*", 1)[0] in CONTEXT


def model_inputs(raw: Mapping[str, float]) -> dict[str, float]:
    """The inputs a unit model reads, by name (public for the fitting script)."""
    return _inputs(raw)


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitModel:
    """``E[penalty] = exp(intercept + sum_k coef_k * (x_k - center_k) / scale_k)``."""

    inputs: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    figures: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    #: fixed penalty per unit of a raw count, added to the fitted expectation (``PRIOR``)
    prior: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def linear_predictor(self, raw: Mapping[str, float]) -> float:
        """``intercept + sum_k coef_k * (x_k - center_k) / scale_k`` of a unit's raw features."""
        x = _inputs(raw)
        # NOTE: an input this unit lacks (a figure a checker could not give) counts as average
        return self.intercept + sum(
            c * (x.get(name, m) - m) / s
            for name, m, s, c in zip(self.inputs, self.center, self.scale, self.coef))

    def expected_penalty(self, raw: Mapping[str, float]) -> float:
        fixed = sum(w * raw.get(key, 0.0) for key, w in self.prior.items())
        return math.exp(min(self.linear_predictor(raw), 10.0)) + fixed

    def to_dict(self) -> dict[str, object]:
        return {
            "intercept": round(self.intercept, 6),
            "prior": {k: round(v, 6) for k, v in self.prior.items()},
            "inputs": {name: {"coef": round(c, 6), "center": round(m, 6), "scale": round(s, 6)}
                       for name, m, s, c in zip(self.inputs, self.center, self.scale, self.coef)},
            "figures": {k: round(v, 4) for k, v in self.figures.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitModel:
        inputs = d["inputs"]
        if not isinstance(inputs, Mapping):
            raise ConfigError("calibration: 'inputs' must be a table")
        names = tuple(str(k) for k in inputs)
        rows = [inputs[k] for k in names]
        return cls(
            inputs=names,
            center=tuple(float(r["center"]) for r in rows),
            scale=tuple(float(r["scale"]) for r in rows),
            coef=tuple(float(r["coef"]) for r in rows),
            intercept=float(d["intercept"]),
            figures=MappingProxyType({str(k): float(v) for k, v in d.get("figures", {}).items()}),
            prior=MappingProxyType({str(k): float(v) for k, v in d.get("prior", {}).items()}),
        )


#: fixed MQM penalty per finding of the rule-based checks, added to the fitted expectation:
#: broken joins, stray punctuation, mojibake and untranslated text are nearly absent from WMT
#: output, so the data cannot weigh them; each counts what an MQM rater gives it (major 5,
#: minor 1, non-translation 25). Fitted on WMT21 without them, the held-out Kendall moves < .005.
PRIOR: Mapping[str, float] = MappingProxyType({
    "n_structure_major": 5.0, "n_structure_minor": 1.0,
    "n_blocking_major": 25.0, "n_blocking_minor": 5.0,
})

#: inputs that count evidence of errors: their weight is held at >= 0, so that a finding never
#: raises a score (in the MQM data, rule-based findings are too rare for the sign to be learned)
MONOTONE_PREFIXES = ("structure_", "grammar_", "fluency_", "blocking_", "ref_facts",
                     "ref_diff_share", "ref_unaligned")


def fit_poisson(rows: Sequence[Mapping[str, float]], target: Sequence[float], *, l2: float = 1.0,
                inputs: Sequence[str] | None = None,
                prior: Mapping[str, float] | None = None,
                groups: Sequence[str] | None = None, rank_weight: float = 0.0,
                aggregates: Sequence[Aggregate] | None = None,
                aggregate_weight: float | None = None,
                weights: Sequence[float] | None = None,
                base: UnitModel | None = None) -> UnitModel:
    """Fit a UnitModel by penalised Poisson maximum likelihood (quasi-Poisson: any target >= 0).

    Weights of ``MONOTONE_PREFIXES`` inputs are constrained to be non-negative. With ``prior``
    (raw count -> fixed penalty each), the fit explains what the prior leaves of each target,
    and the inputs made from those counts are left out.

    With ``groups`` (rows that translate the same source segment share a group) and
    ``rank_weight`` > 0, the loss adds ``rank_weight`` times the mean pairwise logistic loss over
    the pairs of a group whose targets differ: the better translation should get the lower
    expected penalty. The likelihood alone is dominated by how segments differ (length,
    difficulty); this term makes the fit rank the translations of one segment too, which is
    what comparing systems needs.

    With ``aggregates`` (paragraphs: several rows scored together, ``Aggregate``), the same
    ranking term (weight ``aggregate_weight``, ``rank_weight`` when not given; a mean over its
    own pairs) is added for the aggregates
    of one group: an aggregate's score is the log of its rows' summed expected penalty per
    sentence, as ``mtqa.aggregate`` scores a document, so the fit also learns to rank
    paragraphs, whose inputs scale with length and context differently from sentences'.
    ``weights`` scale each row's likelihood term (default 1; 0 leaves a row to the ranking
    term of its aggregate alone).

    Context inputs (``is_context_input``) are left out, except with ``base``: then only they
    are fitted, on top of ``base`` (its weights, intercept and prior fixed: its linear predictor
    is each row's offset), uncentred, so that the returned model (``base`` with the context
    inputs added) scores every unit without context exactly as ``base`` does. This is how one
    model serves sentences and paragraphs: the sentences' fit is not traded for the
    paragraphs'.
    """
    from scipy.optimize import minimize
    from scipy.sparse import csr_matrix

    if base is not None:
        if any(is_context_input(k) for k in base.inputs):
            raise ValueError("fit_poisson: the base model already has context inputs")
        prior = dict(base.prior)
    else:
        prior = dict(prior or {})
    fixed_inputs = {key[2:] for key in prior}  # "n_structure_major" -> "structure_major"
    xs = [_inputs(r) for r in rows]
    names = tuple(inputs) if inputs is not None else tuple(sorted({k for x in xs for k in x}))
    names = tuple(k for k in names if k not in fixed_inputs
                  and is_context_input(k) == (base is not None))
    if base is not None:
        # NOTE: a context product of an input the base model does not read is no input either
        names = tuple(k for k in names if k in CONTEXT or k.split("*", 1)[1] in base.inputs)
    mat = np.array([[x.get(k, math.nan) for k in names] for x in xs], dtype=np.float64)
    fixed = np.array([sum(w * r.get(k, 0.0) for k, w in prior.items()) for r in rows])
    y = np.maximum(np.asarray(target, dtype=np.float64) - fixed, 0.0)
    # a unit without an input counts as average, as in UnitModel.expected_penalty
    present = ~np.isnan(mat)
    center = np.where(present, mat, 0.0).sum(axis=0) / np.maximum(present.sum(axis=0), 1)
    offset = np.zeros(len(y))
    if base is not None:
        # NOTE: uncentred: a context input is 0 on a unit without context (and where missing)
        center = np.zeros(len(names))
        offset = np.array([base.linear_predictor(r) for r in rows])
    mat = np.where(present, mat, center)
    scale = mat.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (mat - center) / scale
    lw = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    # NOTE: rows in the ranking terms alone (all weights 0): the penalty is per row
    n = float(lw.sum()) if lw.sum() > 0 else float(len(y))
    better, worse = _ranked_pairs(groups, target) if groups is not None and rank_weight > 0 \
        else (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    agg_weight = rank_weight if aggregate_weight is None else aggregate_weight
    agg = list(aggregates or []) if agg_weight > 0 else []
    if agg:
        members = [np.asarray(a.rows, dtype=np.int64) for a in agg]
        owner = np.repeat(np.arange(len(agg)), [len(m) for m in members])
        pick = csr_matrix((np.ones(len(owner)), (owner, np.concatenate(members))),
                          shape=(len(agg), len(y)))
        log_n = np.log(np.maximum([a.sentences for a in agg], 1.0))
        a_better, a_worse = _ranked_pairs([a.group for a in agg], [a.target for a in agg])
    else:
        a_better = a_worse = np.zeros(0, dtype=np.int64)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        eta = np.clip(offset + w[0] + z @ w[1:], -30.0, 10.0)
        mu = np.exp(eta)
        nll = float(np.sum(lw * (mu - y * eta))) / n + 0.5 * l2 * float(w[1:] @ w[1:]) / n
        grad = np.concatenate([[np.sum(lw * (mu - y))], z.T @ (lw * (mu - y))]) / n
        grad[1:] += l2 * w[1:] / n
        if len(a_better):
            total = np.maximum(pick @ mu, 1e-300)
            score = np.log(total) - log_n
            d = score[a_better] - score[a_worse]
            nll += agg_weight * float(np.mean(np.logaddexp(0.0, d)))
            push = agg_weight / len(a_better) / (1.0 + np.exp(-d))
            per_agg = np.zeros(len(agg))
            np.add.at(per_agg, a_better, push)
            np.add.at(per_agg, a_worse, -push)
            # d score_a / d eta_u = mu_u / total_a for the rows u of aggregate a
            grad[1:] += z.T @ ((pick.T @ (per_agg / total)) * mu)
        if len(better):
            d = eta[better] - eta[worse]  # want < 0
            nll += rank_weight * float(np.mean(np.logaddexp(0.0, d)))
            push = rank_weight / len(better) / (1.0 + np.exp(-d))
            per_row = np.zeros(len(y))
            np.add.at(per_row, better, push)
            np.add.at(per_row, worse, -push)
            grad[1:] += z.T @ per_row
        return nll, grad

    w0 = np.zeros(len(names) + 1)
    w0[0] = 0.0 if base is not None else math.log(max(float(y.mean()), 1e-3))
    bounds = [(0.0, 0.0) if base is not None else (None, None)] + [
        (0.0, None) if k.split("*", 1)[-1].startswith(MONOTONE_PREFIXES) else (None, None)
        for k in names]
    res = minimize(loss, w0, jac=True, method="L-BFGS-B", bounds=bounds)
    w = res.x
    if base is not None:
        return UnitModel(base.inputs + names, base.center + tuple(map(float, center)),
                         base.scale + tuple(map(float, scale)),
                         base.coef + tuple(map(float, w[1:])), base.intercept,
                         prior=MappingProxyType(prior))
    return UnitModel(names, tuple(map(float, center)), tuple(map(float, scale)),
                     tuple(map(float, w[1:])), float(w[0]), prior=MappingProxyType(prior))


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Rows of a fit scored together (a paragraph's sentence units): the ``rows`` indices,
    the ``group`` of aggregates that translate the same source (ranked against each other),
    their summed MQM ``target`` and the number of ``sentences`` the mean is taken over."""

    rows: tuple[int, ...]
    group: str
    target: float
    sentences: float


def _ranked_pairs(groups: Sequence[str], target: Sequence[float]
                  ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row indices ``(better, worse)`` of every pair in one group with a lower and a higher target."""
    by: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    better: list[int] = []
    worse: list[int] = []
    for members in by.values():
        for a in members:
            for b in members:
                if target[a] < target[b]:
                    better.append(a)
                    worse.append(b)
    return np.asarray(better, dtype=np.int64), np.asarray(worse, dtype=np.int64)


# --- spans -------------------------------------------------------------------------------------

#: checkers whose findings are statistical evidence, re-weighed by the span model; rule-based
#: structure findings keep their severity (MQM data holds too few of them to calibrate)
SPAN_CHECKERS = frozenset({"fluency", "grammar", "reference"})


def span_inputs(category_key: str, groups: Sequence[str], expected: float, confidence: float,
                was_major: bool) -> list[float]:
    """A finding's inputs to the span model: its group (one-hot), its sentence's expected
    penalty, its checker's confidence, and the checker's own severity."""
    x = [1.0 if category_key == g else 0.0 for g in groups]
    return x + [math.log1p(max(expected, 0.0)), confidence, 1.0 if was_major else 0.0]


@dataclass(frozen=True, slots=True)
class SpanModel:
    """Two logistic models over a finding's inputs (``span_inputs``): the probability that its
    characters are an error, and that they are a major one. A finding below ``keep`` is dropped;
    one at or above ``major`` is major, else minor; its confidence becomes the first probability.
    Both thresholds are tuned on the training documents (``scripts/calibrate.py``) among those
    whose major spans are at least ``MAJOR_PRECISION`` (plus a margin) precise: for the best
    character F1 with the reference, for precision without it. The ``free`` model's target is
    the errors English alone shows (fluency, style, non-translation), the ``ref`` one's every
    MQM error."""

    groups: tuple[str, ...]
    error: tuple[float, ...]  # intercept first
    major_coef: tuple[float, ...]
    keep: float
    major: float
    figures: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    MAJOR_PRECISION = 0.35

    def probabilities(self, checker: str, category: str, expected: float, confidence: float,
                      was_major: bool) -> tuple[float, float]:
        x = span_inputs(f"{checker}:{category}", self.groups, expected, confidence, was_major)

        def sigmoid(w: Sequence[float]) -> float:
            t = w[0] + sum(a * b for a, b in zip(w[1:], x))
            return 1.0 / (1.0 + math.exp(-max(min(t, 30.0), -30.0)))

        p_err = sigmoid(self.error)
        # NOTE: the two models are fitted apart; a major error is an error, so its probability
        # is never above the error's (a major span's confidence is at least ``major``)
        return p_err, min(sigmoid(self.major_coef), p_err)

    def to_dict(self) -> dict[str, object]:
        names = ["intercept", *self.groups, "log1p_expected_penalty", "confidence", "was_major"]
        return {"keep": round(self.keep, 4), "major": round(self.major, 4),
                "error": {n: round(w, 6) for n, w in zip(names, self.error)},
                "major_error": {n: round(w, 6) for n, w in zip(names, self.major_coef)},
                "figures": {k: round(v, 4) for k, v in self.figures.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpanModel:
        names = list(d["error"])
        groups = tuple(n for n in names[1:] if ":" in n)
        return cls(groups, tuple(float(d["error"][n]) for n in names),
                   tuple(float(d["major_error"][n]) for n in names), float(d["keep"]),
                   float(d["major"]),
                   MappingProxyType({str(k): float(v) for k, v in d.get("figures", {}).items()}))


def fit_logistic(x: NDArray[np.float64], y: NDArray[np.float64], weight: NDArray[np.float64], *,
                 l2: float = 1e-3) -> tuple[float, ...]:
    """Weighted logistic regression on soft labels ``y`` in [0, 1]; intercept first."""
    from scipy.optimize import minimize

    w = weight / weight.mean()

    def loss(b: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        t = b[0] + x @ b[1:]
        p = 1.0 / (1.0 + np.exp(-t))
        value = float(np.mean(w * (np.logaddexp(0.0, t) - y * t))) + l2 * float(b[1:] @ b[1:])
        grad = np.concatenate([[np.mean(w * (p - y))], x.T @ (w * (p - y)) / len(y)])
        grad[1:] += 2.0 * l2 * b[1:]
        return value, grad

    res = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    return tuple(float(v) for v in res.x)


# --- the word model ----------------------------------------------------------------------------

#: what the word model reads of each word, by side ("free": no reference, "ref": a parallel
#: reference read by the LM). Per word: ``zipf`` (wordfreq), ``capitalised``, ``digits``,
#: ``chars``/10, ``lm`` (the fluency checker's surprisal, nats/10, capped at 4), ``lm_rel`` (minus
#: its unit's mean), ``position`` (0 first word of the unit .. 1) and its square; per unit:
#: ``log_words``, ``log_expected`` (log1p of the unit model's expected penalty) and its square.
#: With the reference: ``unmatched`` (outside the difflib matches), ``absent`` (stem in no
#: reference), the pair's ``chrf``, ``lm_cond`` (surprisal after the reference, nats/10, capped
#: at 4), the larger of its neighbours', its unit mean and the word's excess over it, unmatched
#: neighbours, and two products with ``log_expected``.
WORD_INPUTS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "free": ("zipf", "capitalised", "digits", "chars", "lm", "lm_rel", "position",
             "position_sq", "log_words", "log_expected", "log_expected_sq"),
    "ref": ("unmatched", "absent", "zipf", "capitalised", "digits", "chars", "chrf",
            "log_expected", "log_expected_sq", "lm", "lm_cond", "lm_cond_neighbour",
            "unmatched_expected", "position", "position_sq", "unmatched_neighbours",
            "lm_cond_rel", "lm_rel", "log_words", "lm_cond_mean", "lm_cond_expected"),
})
_CAP = 40.0  # nats: a word's surprisal is capped here before scaling


def _per_char(length: int, ev: WordEvidence, name: str) -> NDArray[np.float64]:
    """``ev.values[name]`` of each word shared evenly over its characters (0 elsewhere)."""
    out = np.zeros(length, dtype=np.float64)
    for s, e, v in zip(ev.start, ev.end, ev.values[name]):
        if e > s and v == v:
            out[s:e] = v / (e - s)
    return out


def word_evidence_ready(fluency: WordEvidence | None, reference: WordEvidence | None,
                        side: str) -> bool:
    """Whether the word model of ``side`` has what it reads: the fluency checker's word
    surprisals and, with ``side == "ref"``, the reference checker's LM reading of at least one
    word (``lm_cond`` is NaN for every word the LM did not read)."""
    if fluency is None:
        return False
    return side != "ref" or (reference is not None and any(
        c == c for c in reference.values.get(WORD_LM_COND, ())))


def word_inputs(mt: str, units: Sequence[tuple[int, int, float]], fluency: WordEvidence,
                reference: WordEvidence | None, side: str
                ) -> tuple[list[tuple[int, int]], NDArray[np.float64]]:
    """The words of ``units`` (``(start, end, expected penalty)``) and their inputs
    (``WORD_INPUTS[side]`` order): with ``side == "ref"``, the words the reference checker read,
    else every word of the units."""
    from wordfreq import zipf_frequency

    names = WORD_INPUTS[side]
    lm_char = _per_char(len(mt), fluency, WORD_SURPRISAL)
    if side == "ref":
        if reference is None:
            raise ValueError("the reference-side word model needs the reference's word evidence")
        grid = list(zip(reference.start, reference.end, range(len(reference.start))))
    else:
        norm = normalize(mt)
        grid = [(m.start(), m.end(), -1) for m in WORD.finditer(norm)]
    words: list[tuple[int, int]] = []
    rows: list[list[float]] = []
    for us, ue, expected in units:
        inside = [(s, e, k) for s, e, k in grid if us <= s < ue]
        if not inside:
            continue
        n = len(inside)
        le = math.log1p(max(expected, 0.0))
        lm = [min(float(lm_char[s:e].sum()), _CAP) / 10.0 for s, e, _k in inside]
        lm_mean = sum(lm) / n
        unit: dict[str, list[float]] = {}
        if side == "ref":
            assert reference is not None  # noqa: S101 - checked above
            vals = reference.values
            unit["unmatched"] = [vals[WORD_UNMATCHED][k] for *_se, k in inside]
            unit["absent"] = [vals[WORD_ABSENT][k] for *_se, k in inside]
            unit["chrf"] = [vals[WORD_CHRF][k] for *_se, k in inside]
            cond = [vals[WORD_LM_COND][k] for *_se, k in inside]
            unit["lm_cond"] = [0.0 if c != c else min(c, _CAP) / 10.0 for c in cond]
        c = unit.get("lm_cond", [])
        c_mean = sum(c) / n if c else 0.0
        for j, (s, e, _k) in enumerate(inside):
            w = mt[s:e]
            x = {"zipf": zipf_frequency(w.lower(), "en"), "capitalised": float(w[:1].isupper()),
                 "digits": float(w.isdigit()), "chars": (e - s) / 10.0, "lm": lm[j],
                 "lm_rel": lm[j] - lm_mean, "position": j / n, "position_sq": (j / n) ** 2,
                 "log_words": math.log(n), "log_expected": le, "log_expected_sq": le * le}
            if side == "ref":
                near = [k for k in (j - 1, j + 1) if 0 <= k < n]
                x.update({
                    "unmatched": unit["unmatched"][j], "absent": unit["absent"][j],
                    "chrf": unit["chrf"][j], "lm_cond": c[j],
                    "lm_cond_neighbour": max((c[k] for k in near), default=0.0),
                    "unmatched_expected": unit["unmatched"][j] * le,
                    "unmatched_neighbours": sum(unit["unmatched"][k] for k in near),
                    "lm_cond_rel": c[j] - c_mean, "lm_cond_mean": c_mean,
                    "lm_cond_expected": c[j] * le})
            words.append((s, e))
            rows.append([x[name] for name in names])
    return words, np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names))


@dataclass(frozen=True, slots=True)
class WordModel:
    """A logistic model of the probability that a word is (part of) an MQM error, from
    ``WORD_INPUTS[side]`` standardised by ``center``/``scale``. A word at or above ``keep`` is
    flagged, major at or above ``major``; neighbouring flagged words of one severity make one
    span. Thresholds are tuned on the training documents for the best character F1 among those
    whose major spans are at least ``SpanModel.MAJOR_PRECISION`` (plus a margin) precise."""

    side: str
    inputs: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    keep: float
    major: float
    figures: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def probabilities(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each word's probability of being (part of) an error, from its inputs ``x``."""
        t = self.intercept + self.contributions(x).sum(axis=1)
        out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(t, -30.0, 30.0)))
        return out

    def contributions(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each input's share of each word's log-odds (``coef * standardised input``)."""
        out: NDArray[np.float64] = (x - np.asarray(self.center)) / np.asarray(self.scale) \
            * np.asarray(self.coef)
        return out

    def spans(self, mt: str, words: Sequence[tuple[int, int]], p: Iterable[float]
              ) -> list[tuple[int, int, bool, float]]:
        """``(start, end, major, probability)`` of each run of flagged words (the run's highest
        probability), in text order."""
        out: list[tuple[int, int, bool, float]] = []
        for (s, e), q in sorted(zip(words, p)):
            if q < self.keep:
                continue
            major = q >= self.major
            if out and out[-1][2] == major and not mt[out[-1][1]:s].strip():
                out[-1] = (out[-1][0], e, major, max(out[-1][3], float(q)))
            else:
                out.append((s, e, major, float(q)))
        return out

    def to_dict(self) -> dict[str, object]:
        return {"side": self.side, "keep": round(self.keep, 4), "major": round(self.major, 4),
                "intercept": round(self.intercept, 6),
                "inputs": {n: {"coef": round(c, 6), "center": round(m, 6), "scale": round(s, 6)}
                           for n, m, s, c in zip(self.inputs, self.center, self.scale, self.coef)},
                "figures": {k: round(v, 4) for k, v in self.figures.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WordModel:
        side = str(d["side"])
        names = tuple(str(k) for k in d["inputs"])
        if side not in WORD_INPUTS or names != WORD_INPUTS[side]:
            raise ConfigError(f"calibration: word model inputs {names} are not mtqa's for {side!r}")
        rows = [d["inputs"][k] for k in names]
        return cls(side, names, tuple(float(r["center"]) for r in rows),
                   tuple(float(r["scale"]) for r in rows), tuple(float(r["coef"]) for r in rows),
                   float(d["intercept"]), float(d["keep"]), float(d["major"]),
                   MappingProxyType({str(k): float(v) for k, v in d.get("figures", {}).items()}))


# --- the calibration file ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration:
    """Every fitted model, with where it came from."""

    version: str
    models: Mapping[str, UnitModel]
    provenance: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    #: span models by reference use: "free" and "ref"
    spans: Mapping[str, SpanModel] = field(default_factory=lambda: MappingProxyType({}))
    path: str = ""
    #: word models by reference use: "free" and "ref"
    words: Mapping[str, WordModel] = field(default_factory=lambda: MappingProxyType({}))

    def variant(self, raw: Mapping[str, float]) -> str:
        """The name of the model that applies to a unit's raw features."""
        return variant_for(raw)

    def model_for(self, raw: Mapping[str, float]) -> UnitModel | None:
        """The fitted model for what ran on this unit, or None if none was fitted."""
        return self.models.get(variant_for(raw))

    def language_model_mismatch(self, checker: str, used: str | None) -> str | None:
        """Why this calibration was not fitted on the language model ``used`` by ``checker``
        (``NAME@SHA`` as ``lm_identity`` reads it off a signature, or ``NAME`` alone before the
        model is loaded: then only the name is compared), or None.

        The precision does not count: bf16 and fp32 readings give held-out figures within .005
        of each other (models/README.md). A calibration without recorded signatures (an old or
        hand-made file), or a checker without a language model (``used`` None), says nothing.
        """
        fitted = self.provenance.get("signatures")
        theirs = fitted.get(checker) if isinstance(fitted, Mapping) else None
        want = lm_identity(theirs) if isinstance(theirs, str) else None
        if want is None or used is None:
            return None
        if want == used or ("@" not in used and want.split("@", 1)[0] == used):
            return None
        return (f"the calibration {self.version} was fitted on the readings of {want}, and "
                f"the {checker} checker would run {used}: its scores, "
                f"spans and verdicts would not be calibrated for it. Use a calibration fitted "
                f"on that model (--calibration FILE; scripts/calibrate.py --lm-model NAME fits "
                f"one), or the model the calibration was fitted on")

    def fingerprint(self) -> str:
        """``version:sha256[:12]`` of the fitted parameters: changes whenever a number does."""
        data = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return f"{self.version}:{hashlib.sha256(data.encode('utf-8')).hexdigest()[:12]}"

    def to_dict(self) -> dict[str, object]:
        return {"schema": SCHEMA, "version": self.version,
                "score_map": {"half": SCORE_HALF, "shape": SCORE_SHAPE},
                "provenance": dict(self.provenance),
                "spans": {k: m.to_dict() for k, m in sorted(self.spans.items())},
                "words": {k: m.to_dict() for k, m in sorted(self.words.items())},
                "models": {k: m.to_dict() for k, m in sorted(self.models.items())}}


def lm_identity(signature: str) -> str | None:
    """``NAME@SHA`` of the language model a checker signature names, or None: fluency
    signatures name it as ``model:NAME|rev:SHA``, reference signatures as
    ``lm:NAME@SHA/PRECISION``."""
    parts = dict(p.split(":", 1) for p in signature.split("|") if ":" in p)
    if "model" in parts and "rev" in parts:
        return f"{parts['model']}@{parts['rev']}"
    lm = parts.get("lm", "")
    return lm.split("/", 1)[0] if "@" in lm else None


#: calibrations shipped for language models other than the default, by ``lm_model`` name
#: (``data/calibration.json`` is the default model's, Gemma-3-270M)
SHIPPED_FOR_MODEL: dict[str, str] = {"SmolLM2-135M-Instruct": "data/calibration-smollm2-135m.json"}


def shipped_calibration(lm_model: str | None = None) -> str:
    """The package path (``data/NAME.json``) of the calibration shipped for ``lm_model`` (None:
    the default model's; a model with a calibration of its own in ``SHIPPED_FOR_MODEL`` gets
    that; its file in the repository is ``models/NAME.json``)."""
    return SHIPPED_FOR_MODEL.get(lm_model or "", "data/calibration.json")


def load_calibration(path: Path | None = None, lm_model: str | None = None) -> Calibration:
    """The calibration at ``path``, or the one shipped with mtqa for ``lm_model``
    (``shipped_calibration``)."""
    if path is None:
        name = shipped_calibration(lm_model)
        text = resources.files("mtqa").joinpath(name).read_text("utf-8")
        where = f"mtqa/{name}"
    else:
        text = read_config_text(path, "calibration file")
        where = str(path)
    try:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ConfigError(f"{where}: not a {SCHEMA} file")
        models = {str(k): UnitModel.from_dict(v) for k, v in d["models"].items()}
        spans = {str(k): SpanModel.from_dict(v) for k, v in d.get("spans", {}).items()}
        words = {str(k): WordModel.from_dict(v) for k, v in d.get("words", {}).items()}
        return Calibration(str(d["version"]), MappingProxyType(models),
                           MappingProxyType(dict(d.get("provenance", {}))),
                           MappingProxyType(spans), where, MappingProxyType(words))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: malformed calibration ({type(exc).__name__}: {exc})") from exc


def body_units(sd: SegmentedDocument) -> Iterable[int]:
    """Indices of the body sentences of a document."""
    return (i for i, s in enumerate(sd.sentences) if s.kind is Kind.BODY)
