"""Reference comparison: sacreBLEU scores and sentence alignment against a reference.

Two modes:

* **parallel**: the reference translates the same text, line by line. Line ``k`` of the
  candidate pairs with line ``k`` of every reference (blank lines kept when both sides have the
  same number of lines, dropped otherwise); a line-count mismatch is an ``InputError``. Corpus
  BLEU, chrF, chrF++ and TER are sacreBLEU's own numbers on those lines.
* **comparable**: the reference is another article about the same story. Both texts are
  segmented (boilerplate excluded), embedded with a sentence-transformers model and aligned with
  ``mtqa.align.align`` (many-to-one and one-to-many links, any order, unmatched sentences left
  out). Coverage tells how much of each side the other supports.

``mode="auto"`` picks parallel when the texts pair line by line and the paired lines are similar.
Each aligned pair gets sentence chrF and BLEU (and TER in parallel mode), a word diff whose
divergent stretches become low-confidence ``reference-mismatch`` findings, and fact checks
(numbers, dates, weekdays, names; quotations in comparable mode) whose mismatches become major
``fact-mismatch`` findings naming the reference's value.

With a language model (``lm=True``, or ``language_model=``; the setting ``ref_lm``, which by
default is on whenever the fluency checker runs, and then lends it the fluency checker's copy),
parallel pairs are also read by the LM after their reference: the surprisal of the candidate
given the reference (``lm_cond_sum``/``lm_cond_tokens`` per sentence) is an adequacy signal. A
candidate that says what the reference says is predictable from it; the calibration compares
it with the fluency checker's surprisal of the same words without the reference.

Cost: a batch embeds each distinct sentence once, segments each distinct reference once,
extracts each distinct segment's sacreBLEU statistics once and compares two names once. TER
gives sacreBLEU's statistics, with its shift search scoring each step's candidate shifts
together on arrays (``mtqa.ter.BatchTER``, about ten times faster on news lines).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from mtqa.align import (
    FLOOR,
    THRESHOLD,
    align,
    count_lines,
    inflection_stem,
    lexical_similarity,
    line_spans,
    pair_lines,
)
from mtqa.checkers.base import BaseChecker
from mtqa.encoders import Encoder, SentenceTransformerEncoder
from mtqa.encoders import embedder_precision as resolve_embedder_precision
from mtqa.errors import CheckerUnavailable, ConfigError, InputError
from mtqa.facts import FACT_LABELS, NameAnswers, NameIndex, compare_facts, find_facts
from mtqa.normalize import WORD, normalize
from mtqa.segment import segment
from mtqa.types import (
    AlignmentLink,
    CheckResult,
    Document,
    Finding,
    Kind,
    Metric,
    ReferenceResult,
    SegmentedDocument,
    Sentence,
    Severity,
    WordEvidence,
)
from mtqa.version import __version__

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mtqa.config import Settings
    from mtqa.models import LoadedLM, ModelPool
    from mtqa.ter import StatsMemo

__all__ = ["LM_COND_SUM", "LM_COND_TOKENS", "MODES", "SENTENCE_SUMS", "WORD_ABSENT", "WORD_CHRF",
           "WORD_LM_COND", "WORD_UNMATCHED", "ReferenceChecker"]

logger = logging.getLogger(__name__)

MODES = ("auto", "parallel", "comparable")

#: What the checker emits for the calibration (``mtqa.calibrate`` reads these names): per
#: sentence of a parallel pair the LM read (``CheckResult.sentence_features``), the surprisal of
#: the candidate after its reference and its token count; per word of a parallel pair
#: (``CheckResult.words``), the values ``_word_evidence`` describes.
LM_COND_SUM = "lm_cond_sum"
LM_COND_TOKENS = "lm_cond_tokens"
SENTENCE_SUMS: tuple[str, ...] = (LM_COND_SUM, LM_COND_TOKENS)
WORD_UNMATCHED = "unmatched"
WORD_ABSENT = "absent"
WORD_CHRF = "chrf"
WORD_LM_COND = "lm_cond"


# --- internal records (they never leave this module) -----------------------------------------


@dataclass(frozen=True, slots=True)
class _Side:
    """A segmented text with its line spans (``(s, s)`` for a blank line)."""

    seg: SegmentedDocument
    lines: tuple[tuple[int, int], ...]

    @property
    def text(self) -> str:
        return self.seg.doc.mt


@dataclass(frozen=True, slots=True)
class _Job:
    """A document, its references, and their line pairing (None: the lines do not pair)."""

    mt: _Side
    refs: tuple[_Side, ...]
    pairing: list[list[tuple[int, int]] | None]


@dataclass(frozen=True, slots=True)
class _Pair:
    """A stretch of the candidate compared with a stretch of each reference."""

    mt_sents: tuple[int, ...]  # candidate sentence indices
    ref_sents: tuple[int, ...]  # first reference's sentence indices
    mt_span: tuple[int, int]  # [start, end) in doc.mt
    hyp: str  # candidate text scored by sacrebleu
    refs: tuple[str, ...]  # one text per reference
    similarity: float


_LinePair = tuple[str, tuple[str, ...]]  # a candidate line and the references' lines


@dataclass(frozen=True, slots=True)
class _Reading:
    """The LM's surprisal (nats) of each token of a candidate read after its reference, with
    the tokens' offsets into the stripped candidate and the whitespace stripped before it."""

    surprisal: tuple[float, ...]
    offsets: tuple[tuple[int, int], ...]
    shift: int


# --- the checker ----------------------------------------------------------------------------


class ReferenceChecker(BaseChecker):
    """Compare each document with its reference(s): sacreBLEU scores, alignment, coverage, facts.

    Documents without a reference get a result with ``reference=None`` and no findings.
    """

    name: ClassVar[str] = "reference"

    MODE: ClassVar[str] = "auto"
    THRESHOLD: ClassVar[float] = THRESHOLD  # alignment: relative score (z units)
    FLOOR: ClassVar[float] = FLOOR  # alignment: absolute score
    PARALLEL_MIN_SIMILARITY: ClassVar[float] = 0.5  # auto mode: median cosine of paired lines
    DIFF_CONFIDENCE: ClassVar[Mapping[str, float]] = MappingProxyType(
        {"parallel": 0.3, "comparable": 0.1})
    FACT_CONFIDENCE: ClassVar[Mapping[str, float]] = MappingProxyType(
        # names are the noisiest: a reference may render a name another valid way
        {"number": 0.6, "year": 0.6, "date": 0.6, "weekday": 0.6, "quote": 0.5, "name": 0.4})
    BATCH_SIZE: ClassVar[int] = 16  # measured: 8-16 beat 64 by ~25% on CPU (less padding)
    #: LM reading of parallel pairs: rows and padded tokens per forward pass, and the longest
    #: reference + candidate read (longer pairs get no LM figure rather than a truncated one)
    LM_ROWS: ClassVar[int] = 32
    LM_TOKENS: ClassVar[int] = 2048
    LM_MAX_PAIR: ClassVar[int] = 1024

    def __init__(
        self,
        *,
        embedder: str | None = None,
        mode: str = MODE,
        threshold: float = THRESHOLD,
        floor: float = FLOOR,
        encoder: Encoder | None = None,
        batch_size: int = BATCH_SIZE,
        device: str | None = None,
        comparable_ter: bool = False,
        lm: bool = False,
        lm_model: str | None = None,
        cache_dir: Path | None = None,
        lm_backend: str = "auto",
        lm_precision: str = "auto",
        language_model: LoadedLM | None = None,
        embedder_precision: str = "auto",
    ) -> None:
        """Build the checker; the embedding model is loaded here, once.

        Args:
            embedder: a sentence-transformers model directory or cached name; ``None`` is the
                bundled all-MiniLM-L6-v2.
            mode: ``"auto"``, ``"parallel"`` or ``"comparable"``.
            threshold: alignment link score, in standard deviations (see ``mtqa.align``).
            floor: least absolute similarity of a link.
            encoder: an ``Encoder`` to use instead of loading a model (tests inject a fake).
            comparable_ter: also score TER in comparable mode. Off by default: TER against
                another article's sentence measures nothing (and its shift search, though
                batched, is the longest on such reordered pairs).
            lm: read parallel pairs with a language model this checker loads (and frees on
                ``close()``). When it cannot be loaded the checker runs without it, says so in
                its signature (``lm:none``) and logs a warning.
            lm_model, cache_dir, lm_backend, lm_precision: which language model (as the fluency
                checker's).
            language_model: a loaded model to read with instead (lent by the owner's
                ``mtqa.models.ModelPool``, so the fluency checker's copy; tests).
            embedder_precision: the sentence encoder's precision (``auto``, ``fp32``, ``bf16``,
                resolved by ``mtqa.encoders.embedder_precision`` on the encoder's own terms);
                ``from_settings`` passes the ``precision`` setting, the one the language model
                is given too. An injected ``encoder`` keeps its own (the value is still checked).

        Raises:
            ConfigError: an unknown mode or embedder precision.
            CheckerUnavailable: the embedding model cannot be loaded.
        """
        if mode not in MODES:
            err = f"reference mode {mode!r} is not one of {', '.join(MODES)}"
            raise ConfigError(err)
        resolved_precision = resolve_embedder_precision(embedder_precision, device)
        self.mode = mode
        self.threshold = threshold
        self.floor = floor
        self.comparable_ter = comparable_ter
        if encoder is None:
            st = SentenceTransformerEncoder(embedder, batch_size=batch_size, device=device,
                                            precision=resolved_precision)
            self._encoder: Encoder | None = st
            self.embedder_name = f"{st.name}/{st.precision}"
        else:
            self._encoder = encoder
            self.embedder_name = embedder or type(encoder).__name__
        self._lm: LoadedLM | None = language_model
        if lm and language_model is None:
            from mtqa.models import load_lm

            try:
                self._lm = load_lm(lm_model, cache_dir=cache_dir, device=device or "cpu",
                                   backend=lm_backend, checker=self.name,
                                   precision=lm_precision)
            except CheckerUnavailable as exc:
                logger.warning("reference: reading pairs without the language model: %s",
                               exc.reason)
        # NOTE: sacreBLEU is imported here, not at the top: it takes 0.1 s, and the calibration
        # imports this module's feature names whenever mtqa is imported
        from sacrebleu.metrics.bleu import BLEU
        from sacrebleu.metrics.chrf import CHRF

        from mtqa.ter import BatchTER

        self._bleu = BLEU()
        self._sent_bleu = BLEU(effective_order=True)
        self._chrf = CHRF()
        self._chrfpp = CHRF(word_order=2)
        self._ter = BatchTER()

    @classmethod
    def from_settings(cls, settings: Settings, *, models: ModelPool) -> Self:
        """The checker ``settings`` describe; with ``settings.reads_pairs_with_lm`` it reads
        with the pool's copy of the language model (the fluency checker's)."""
        language_model = None
        if settings.reads_pairs_with_lm:
            cache_dir = Path(settings.cache_dir) if settings.cache_dir else None
            try:
                language_model = models.lm(settings.lm_model, cache_dir=cache_dir,
                                           device=settings.device, backend=settings.lm_backend,
                                           checker=cls.name, precision=settings.precision)
            except CheckerUnavailable as exc:
                logger.warning("reference: reading pairs without the language model: %s",
                               exc.reason)
        return cls(embedder=settings.embedder, mode=settings.ref_mode, device=settings.device,
                   language_model=language_model, embedder_precision=settings.precision)

    @property
    def signature(self) -> str:
        """Settings that change the numbers; sacreBLEU's own signatures come with each result."""
        lm = f"{self._lm.name}@{self._lm.weights_sha}/{self._lm.precision}" if self._lm else "none"
        return (f"reference|mode:{self.mode}|emb:{self.embedder_name}|thr:{self.threshold:g}"
                f"|floor:{self.floor:g}|cter:{'yes' if self.comparable_ter else 'no'}"
                f"|lm:{lm}|mtqa:{__version__}")

    def close(self) -> None:
        """Drop the embedding model (and this checker's hold on the language model)."""
        self._encoder = None
        self._lm = None

    # -- batch ----------------------------------------------------------------------------

    def check(self, docs: Sequence[SegmentedDocument]) -> list[CheckResult]:
        """Compare every document that has a reference; one result per document, in order.

        Raises:
            InputError: parallel mode was asked for and a reference does not pair line by line.
            CheckerUnavailable: the checker was closed.
        """
        if self._encoder is None:
            raise CheckerUnavailable(self.name, "the checker was closed; build a new one")
        t0 = time.perf_counter()
        jobs: list[_Job | None] = []
        # NOTE: each document's texts are embedded in a call of their own: the encoder's
        # float32 products round a text's embedding differently with other texts beside it
        # (by ~1e-7, enough to flip a printed figure), so a document read with others would
        # score differently from the same document read alone (issue 21: the Ray engine's
        # batches are not the local engine's)
        texts: list[dict[str, int]] = []  # per document, its texts' rows in its embeddings
        ref_sides: dict[str, _Side] = {}
        for d in docs:
            mine: dict[str, int] = {}
            texts.append(mine)
            ref_texts = tuple(r for r in d.doc.ref if r.strip())
            if not ref_texts:
                jobs.append(None)
                continue
            mt = _Side(d, line_spans(d.norm))
            refs = tuple(_ref_side(r, f"{d.doc.id}:ref{k}", ref_sides) for k, r in enumerate(ref_texts))
            pairing = [pair_lines(mt.lines, r.lines) for r in refs]
            if self.mode == "parallel":
                _require_pairing(d, mt, refs, pairing)
            jobs.append(_Job(mt, refs, pairing))
            # NOTE: texts that cannot pair line by line are compared as comparable articles,
            # which use body sentences only: embedding the rest would be wasted time
            pairable = self.mode != "comparable" and all(p is not None for p in pairing)
            for seg in (d, refs[0].seg):
                for s in seg.sentences:
                    if pairable or s.kind is Kind.BODY:
                        mine.setdefault(seg.text(s), len(mine))
        embedded = [self._embed(list(mine)) if job is not None else None
                    for job, mine in zip(jobs, texts)]
        t1 = time.perf_counter()
        plans = [None if job is None or emb is None else
                 self._plan(job, _rows(emb, mine, d), _rows(emb, mine, job.refs[0].seg))
                 for d, job, emb, mine in zip(docs, jobs, embedded, texts)]
        t2 = time.perf_counter()
        cond = self._read_pairs([p for p in plans if p is not None])
        t3 = time.perf_counter()
        out = []
        from mtqa.ter import StatsMemo

        memo, names = StatsMemo(), NameAnswers()
        for d, job, plan in zip(docs, jobs, plans):
            if job is None or plan is None:
                out.append(CheckResult(checker=self.name, doc_id=d.doc.id, signature=self.signature,
                                       sentence_scores=(None,) * len(d.sentences)))
            else:
                mode, pairs, line_pairs = plan
                out.append(self._score(mode, job.mt, job.refs, pairs, line_pairs, memo, names, cond))
        logger.debug("reference: %d docs, %d sentences embedded in %.2fs, aligned in %.2fs, "
                     "LM %.2fs, scored in %.2fs", len(docs), sum(map(len, texts)), t1 - t0, t2 - t1,
                     t3 - t2, time.perf_counter() - t3)
        return out

    def _embed(self, texts: list[str]) -> NDArray[np.float32]:
        assert self._encoder is not None  # noqa: S101 - checked by the caller
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        emb = np.asarray(self._encoder.encode(texts), dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        out: NDArray[np.float32] = (emb / np.where(norms == 0, 1.0, norms)).astype(np.float32)
        return out

    # -- one document ---------------------------------------------------------------------

    def _plan(self, job: _Job, mt_emb: NDArray[np.float32], ref_emb: NDArray[np.float32]
              ) -> tuple[str, list[_Pair], list[_LinePair] | None]:
        """The mode and the pairs to compare (and the line pairs, in parallel mode)."""
        mt, refs, pairing = job.mt, job.refs, job.pairing
        mode = self.mode
        if mode == "auto":
            lines = pairing[0] if all(p is not None for p in pairing) else None
            parallel = lines is not None and self._looks_parallel(mt, refs[0], lines, mt_emb, ref_emb)
            mode = "parallel" if parallel else "comparable"
        if mode == "parallel":
            pairs, line_pairs = self._parallel_pairs(mt, refs, [p or [] for p in pairing],
                                                     mt_emb, ref_emb)
            return mode, pairs, line_pairs
        if len(refs) > 1:
            logger.info("%s: comparable mode aligns with the first of %d references",
                        mt.seg.doc.id, len(refs))
        return mode, self._comparable_pairs(mt, refs[0], mt_emb, ref_emb), None

    def _read_pairs(self, plans: Sequence[tuple[str, list[_Pair], list[_LinePair] | None]]
                    ) -> dict[tuple[str, str], _Reading]:
        """LM surprisal of each parallel pair's candidate after its (first) reference.

        Keyed by (reference text, candidate text). Pairs longer than ``LM_MAX_PAIR`` tokens
        together are left out.
        """
        if self._lm is None:
            return {}
        from mtqa.surprisal import score_continuations

        lm = self._lm
        wanted = list(dict.fromkeys((p.refs[0], p.hyp) for mode, pairs, _ in plans
                                    if mode == "parallel" for p in pairs
                                    if p.hyp.strip() and p.refs and p.refs[0].strip()))
        if not wanted:
            return {}
        refs = list(dict.fromkeys(ref for ref, _ in wanted))
        hyps = list(dict.fromkeys(hyp for _, hyp in wanted))
        # NOTE: the reference is followed by a newline, as a line of the same text would be
        encoded = lm.tokenizer.encode_batch([t.strip() + "\n" for t in refs] +
                                            [t.strip() for t in hyps], add_special_tokens=False)
        ended = {t: e.ids for t, e in zip(refs, encoded)}
        plain = {t: e for t, e in zip(hyps, encoded[len(refs):])}
        items, keys = [], []
        for ref, hyp in wanted:
            ctx, cont = [lm.prefix_id, *ended[ref]], plain[hyp].ids
            if cont and len(ctx) + len(cont) <= self.LM_MAX_PAIR:
                items.append((ctx, cont))
                keys.append((ref, hyp))
        values = score_continuations(lm.model, items, max_rows=self.LM_ROWS,
                                     max_tokens=self.LM_TOKENS, device=str(_model_device(lm)))
        return {(ref, hyp): _Reading(tuple(v), tuple(plain[hyp].offsets[: len(v)]),
                                     len(hyp) - len(hyp.lstrip()))
                for (ref, hyp), v in zip(keys, values)}

    def _looks_parallel(self, mt: _Side, ref: _Side, pairing: list[tuple[int, int]],
                        mt_emb: NDArray[np.float32], ref_emb: NDArray[np.float32]) -> bool:
        a = _line_embeddings(mt, [i for i, _ in pairing], mt_emb)
        b = _line_embeddings(ref, [j for _, j in pairing], ref_emb)
        keep = [k for k in range(len(pairing)) if a[k] is not None and b[k] is not None]
        if not keep:
            return False
        ma = np.stack([a[k] for k in keep])  # type: ignore[misc]
        mb = np.stack([b[k] for k in keep])  # type: ignore[misc]
        sim = ma @ mb.T
        diag = np.diag(sim)
        if float(np.median(diag)) < self.PARALLEL_MIN_SIMILARITY:
            return False
        # with several lines, the paired line must also be the most similar one for most rows
        return len(keep) < 3 or float(np.mean(sim.argmax(axis=1) == np.arange(len(keep)))) >= 0.5

    def _parallel_pairs(self, mt: _Side, refs: tuple[_Side, ...],
                        pairing: list[list[tuple[int, int]]], mt_emb: NDArray[np.float32],
                        ref_emb: NDArray[np.float32]) -> tuple[list[_Pair], list[_LinePair]]:
        """One pair per candidate sentence when a line pair has equal sentence counts, else per line."""
        d = mt.seg
        mt_by_line = _sentences_by_line(mt)
        ref_by_line = [_sentences_by_line(r) for r in refs]
        pairs: list[_Pair] = []
        line_pairs: list[_LinePair] = []
        for k in range(len(pairing[0])):
            i = pairing[0][k][0]
            js = [p[k][1] for p in pairing]
            ms, me = mt.lines[i]
            line_refs = tuple(r.text[slice(*r.lines[j])] for r, j in zip(refs, js))
            line_pairs.append((d.doc.mt[ms:me], line_refs))
            m_sents = mt_by_line.get(i, [])
            r_sents = ref_by_line[0].get(js[0], [])
            if not m_sents or not r_sents:
                continue  # a blank line on one side: its sentences are unsupported or missed
            if len(m_sents) == len(r_sents) > 1:
                for n, (a, b) in enumerate(zip(m_sents, r_sents)):
                    s = d.sentences[a]
                    hyp_refs = tuple(
                        r.seg.text(r.seg.sentences[rl[js[q]][n]])
                        if len(rl.get(js[q], [])) == len(m_sents) else line_refs[q]
                        for q, (r, rl) in enumerate(zip(refs, ref_by_line)))
                    pairs.append(_Pair((a,), (b,), (s.start, s.end), d.text(s), hyp_refs,
                                       float(mt_emb[a] @ ref_emb[b])))
            else:
                sim = _cos(_mean(mt_emb, m_sents), _mean(ref_emb, r_sents))
                pairs.append(_Pair(tuple(m_sents), tuple(r_sents), (ms, me), d.doc.mt[ms:me],
                                   line_refs, sim))
        return pairs, line_pairs

    def _comparable_pairs(self, mt: _Side, ref: _Side, mt_emb: NDArray[np.float32],
                          ref_emb: NDArray[np.float32]) -> list[_Pair]:
        d, r = mt.seg, ref.seg
        mb = [i for i, s in enumerate(d.sentences) if s.kind is Kind.BODY]
        rb = [j for j, s in enumerate(r.sentences) if s.kind is Kind.BODY]
        if not mb or not rb:
            return []
        cos = (mt_emb[mb] @ ref_emb[rb].T).astype(np.float64)
        lex = lexical_similarity([d.text(d.sentences[i]) for i in mb],
                                 [r.text(r.sentences[j]) for j in rb])
        linked: dict[int, list[int]] = {}
        for a, b in align(cos, lex, self.threshold, self.floor):
            linked.setdefault(mb[a], []).append(rb[b])
        pairs = []
        for i, js in sorted(linked.items()):
            s = d.sentences[i]
            ref_text = " ".join(r.text(r.sentences[j]) for j in js)
            pairs.append(_Pair((i,), tuple(js), (s.start, s.end), d.text(s), (ref_text,),
                               _cos(mt_emb[i], _mean(ref_emb, js))))
        return pairs

    # -- scores, coverage, findings -------------------------------------------------------

    def _score(self, mode: str, mt: _Side, refs: tuple[_Side, ...], pairs: list[_Pair],
               line_pairs: list[_LinePair] | None, memo: StatsMemo, name_answers: NameAnswers,
               cond: Mapping[tuple[str, str], _Reading]) -> CheckResult:
        from mtqa import ter

        d = mt.seg
        ref0 = refs[0].seg
        use_ter = mode == "parallel" or self.comparable_ter
        hyps = [p.hyp for p in pairs]
        # comparable mode aligns with the first reference only: its pairs hold one reference
        n_refs = len(refs) if mode == "parallel" else 1
        streams = [[p.refs[q] for p in pairs] for q in range(n_refs)]
        chrf_s, chrf_sig = memo.stats(self._chrf, hyps, streams)
        bleu_s, _ = memo.stats(self._bleu, hyps, streams)
        ter_s, ter_sig = memo.stats(self._ter, hyps, streams) if use_ter else ([], "")
        # NOTE: sentence BLEU is BLEU with effective order on the pair's statistics (those of
        # the corpus BLEU): sacreBLEU's sentence_score gives the same numbers from scratch
        self._sent_bleu.num_refs = n_refs
        sbleu_sig = ter.signature(self._sent_bleu)

        links: list[AlignmentLink] = []
        pair_scores: dict[int, float] = {}
        per_sentence: dict[int, Mapping[str, float]] = {}
        findings: list[Finding] = []
        words: list[WordEvidence] = []
        names = NameIndex(d.norm, [r.seg.norm for r in refs], name_answers)
        for k, p in enumerate(pairs):
            metrics = [Metric("chrF", ter.score(self._chrf, [chrf_s[k]]), chrf_sig),
                       Metric("BLEU", ter.score(self._sent_bleu, [bleu_s[k]]), sbleu_sig)]
            if use_ter:
                metrics.append(Metric("TER", ter.score(self._ter, [ter_s[k]]), ter_sig))
            combined = _combine(metrics[0].score, p.similarity)
            read = cond.get((p.refs[0], p.hyp)) if mode == "parallel" and p.refs else None
            if read is not None and p.mt_sents:
                # the pair's figure goes to its first sentence: a scoring unit holds them all
                per_sentence[p.mt_sents[0]] = MappingProxyType(
                    {LM_COND_SUM: float(sum(read.surprisal)),
                     LM_COND_TOKENS: float(len(read.surprisal))})
            for i in p.mt_sents:
                links.append(AlignmentLink(mt=i, ref=p.ref_sents, similarity=p.similarity,
                                           metrics=tuple(metrics)))
                pair_scores[i] = combined
            body = [d.sentences[i] for i in p.mt_sents if d.sentences[i].kind is Kind.BODY]
            if body:
                if mode == "parallel":
                    words.append(_word_evidence(d, p, metrics[0].score / 100.0, read))
                findings.extend(self._diff_findings(mode, d, p, body))
                findings.extend(self._fact_findings(mode, d, p, body, names))

        # corpus metrics: the lines in parallel mode (sacreBLEU's numbers on the files), the
        # aligned pairs in comparable mode; the memo reuses the statistics of the lines that
        # are also pairs (a line of one sentence)
        c_hyps, c_streams = hyps, streams
        c_chrf, c_bleu, c_ter = chrf_s, bleu_s, ter_s
        if line_pairs is not None:
            c_hyps = [h for h, _ in line_pairs]
            c_streams = [[rs[q] for _, rs in line_pairs] for q in range(len(refs))]
            c_chrf = memo.stats(self._chrf, c_hyps, c_streams)[0]
            c_bleu = memo.stats(self._bleu, c_hyps, c_streams)[0]
            c_ter = memo.stats(self._ter, c_hyps, c_streams)[0] if use_ter else []
        corpus: list[Metric] = []
        if c_hyps:
            chrfpp_s, chrfpp_sig = memo.stats(self._chrfpp, c_hyps, c_streams)
            corpus = [
                Metric("BLEU", ter.score(self._bleu, c_bleu), ter.signature(self._bleu)),
                Metric("chrF", ter.score(self._chrf, c_chrf), ter.signature(self._chrf)),
                Metric("chrF++", ter.score(self._chrfpp, chrfpp_s), chrfpp_sig),
            ]
            if use_ter:
                corpus.append(Metric("TER", ter.score(self._ter, c_ter), ter.signature(self._ter)))

        # coverage over body sentences
        mt_body = [i for i, s in enumerate(d.sentences) if s.kind is Kind.BODY]
        ref_body = [j for j, s in enumerate(ref0.sentences) if s.kind is Kind.BODY]
        linked_mt = {link.mt for link in links}
        linked_ref = {j for link in links for j in link.ref}
        unsupported = tuple(i for i in mt_body if i not in linked_mt)
        missed = tuple(j for j in ref_body if j not in linked_ref)
        mt_cov = 1 - len(unsupported) / len(mt_body) if mt_body else None
        ref_cov = 1 - len(missed) / len(ref_body) if ref_body else None

        sims = [p.similarity for p in pairs]
        features: dict[str, float] = {"parallel": 1.0 if mode == "parallel" else 0.0,
                                      "links": float(len(links)),
                                      "fact_mismatches": float(sum(f.category == "fact-mismatch"
                                                                   for f in findings))}
        for m in corpus:
            features[m.name.lower()] = m.score
        if sims:
            features["mean_similarity"] = float(np.mean(sims))
        if mt_cov is not None:
            features["mt_coverage"] = mt_cov
        if ref_cov is not None:
            features["ref_coverage"] = ref_cov
        doc_score = None
        if mode == "parallel" and corpus and sims:
            doc_score = _combine(corpus[1].score, float(np.mean(sims)))
        result = ReferenceResult(mode=mode, metrics=tuple(corpus), sentences=ref0.sentences,
                                 alignment=tuple(sorted(links, key=lambda x: x.mt)),
                                 mt_coverage=mt_cov, ref_coverage=ref_cov,
                                 unsupported=unsupported, missed=missed)
        # NOTE: one sacreBLEU signature per corpus metric, each in sacreBLEU's own
        # "NAME|key:value|..." form, after the checker's (auto mode says what it chose)
        mode_label = f"auto>{mode}" if self.mode == "auto" else mode
        signature = " ".join([self.signature.replace(f"|mode:{self.mode}|", f"|mode:{mode_label}|"),
                              *(f"{m.name}|{m.signature}" for m in corpus)])
        scores = tuple(pair_scores.get(i) if s.kind is Kind.BODY else None
                       for i, s in enumerate(d.sentences))
        findings.sort(key=lambda f: (f.start, f.end, f.category))
        sentence_features: tuple[Mapping[str, float], ...] = ()
        if per_sentence:
            empty: Mapping[str, float] = MappingProxyType({})
            sentence_features = tuple(per_sentence.get(i, empty) for i in range(len(d.sentences)))
            for key in SENTENCE_SUMS:
                features[key] = sum(m[key] for m in per_sentence.values())
        return CheckResult(checker=self.name, doc_id=d.doc.id, signature=signature,
                           findings=tuple(findings), sentence_scores=scores, doc_score=doc_score,
                           features=MappingProxyType(features), reference=result,
                           sentence_features=sentence_features,
                           words=_join_words(words) if words else None)

    def _diff_findings(self, mode: str, d: SegmentedDocument, p: _Pair,
                       body: list[Sentence]) -> list[Finding]:
        """Divergent stretches of a word diff with each reference (divergent from all of them)."""
        ms, me = p.mt_span
        toks = [(ms + m.start(), ms + m.end(), m.group().lower()) for m in _TOKEN.finditer(d.norm[ms:me])]
        if not toks:
            return []
        matched = np.zeros(len(toks), dtype=bool)
        first_ops: list[tuple[str, int, int, int, int]] = []
        ref_toks0: list[str] = []
        for q, ref in enumerate(p.refs):
            rt = [m.group().lower() for m in _TOKEN.finditer(normalize(ref))]
            sm = difflib.SequenceMatcher(None, [t for _, _, t in toks], rt, autojunk=False)
            for tag, i1, i2, j1, j2 in sm.get_opcodes():
                if tag == "equal":
                    matched[i1:i2] = True
            if q == 0:
                first_ops = [op for op in sm.get_opcodes() if op[0] != "equal"]
                ref_toks0 = [ref[m.start():m.end()] for m in _TOKEN.finditer(normalize(ref))]
        out = []
        conf = self.DIFF_CONFIDENCE[mode]
        i = 0
        while i < len(toks):
            if matched[i]:
                i += 1
                continue
            j = i
            while j < len(toks) and not matched[j]:
                j += 1
            run = toks[i:j]
            i = j
            if not any(_WORDLIKE.search(t) for _, _, t in run):
                continue  # punctuation-only stretches are the fluency checkers' business
            start, end = run[0][0], run[-1][1]
            if not any(s.start <= start < s.end for s in body):
                continue
            ref_words = _ref_counterpart(first_ops, ref_toks0, j - len(run), j)
            msg = (f'differs from the reference ("{ref_words}")' if ref_words
                   else "not in the reference")
            out.append(Finding(start=start, end=end, category="reference-mismatch",
                               severity=Severity.MINOR, checker=self.name, message=msg,
                               confidence=conf, rule=f"diff-{mode}"))
        return out

    def _fact_findings(self, mode: str, d: SegmentedDocument, p: _Pair, body: list[Sentence],
                       names: NameIndex) -> list[Finding]:
        ms, me = p.mt_span
        mt_facts = [f for f in find_facts(d.doc.mt, d.norm, ms, me, names.known)
                    if any(s.start <= f.start < s.end for s in body)]
        if not mt_facts:
            return []
        ref_facts = [find_facts(r, normalize(r), 0, len(r), names.known) for r in p.refs]
        out = []
        for f, ref_value in compare_facts(mt_facts, ref_facts, names, quotes=mode == "comparable"):
            out.append(Finding(start=f.start, end=f.end, category="fact-mismatch",
                               severity=Severity.MAJOR, checker=self.name,
                               message=f'{FACT_LABELS[f.kind]} from the reference: '
                                       f'the reference has "{ref_value}"',
                               confidence=self.FACT_CONFIDENCE[f.kind], rule=f"fact-{f.kind}",
                               suggestions=(ref_value,) if f.kind != "quote" else ()))
        return out


# --- helpers: lines, embeddings, sacreBLEU --------------------------------------------------


def _word_evidence(d: SegmentedDocument, p: _Pair, chrf: float, read: _Reading | None
                   ) -> WordEvidence:
    """What the reference says of each word of a parallel pair's candidate.

    ``unmatched``: outside the longest matching word sequences with every reference (difflib);
    ``absent``: its stem is in no reference; ``chrf``: the pair's sentence chrF (0-1);
    ``lm_cond``: the LM surprisal of its tokens read after the reference (a token's surprisal
    shared over its characters; NaN without a reading).
    """
    ms, me = p.mt_span
    found = list(WORD.finditer(d.norm[ms:me]))
    toks = [m.group().lower() for m in found]
    matched = np.zeros(len(toks), dtype=bool)
    stems: set[str] = set()
    for ref in p.refs:
        rt = [w.lower() for w in WORD.findall(normalize(ref))]
        stems.update(inflection_stem(w) for w in rt)
        sm = difflib.SequenceMatcher(None, toks, rt, autojunk=False)
        for tag, i1, i2, _j1, _j2 in sm.get_opcodes():
            if tag == "equal":
                matched[i1:i2] = True
    per_char = np.full(me - ms, np.nan)
    if read is not None:
        for (a, b), v in zip(read.offsets, read.surprisal):
            a, b = a + read.shift, b + read.shift
            if b > a:
                per_char[a:b] = v / (b - a)
    cond = [float(np.nansum(per_char[m.start():m.end()])) if read is not None else math.nan
            for m in found]
    return WordEvidence(
        tuple(ms + m.start() for m in found), tuple(ms + m.end() for m in found),
        MappingProxyType({WORD_UNMATCHED: tuple(float(not x) for x in matched),
                          WORD_ABSENT: tuple(float(inflection_stem(t) not in stems) for t in toks),
                          WORD_CHRF: (chrf,) * len(found), WORD_LM_COND: tuple(cond)}))


def _join_words(parts: Sequence[WordEvidence]) -> WordEvidence:
    names = list(parts[0].values)
    return WordEvidence(tuple(s for w in parts for s in w.start), tuple(e for w in parts for e in w.end),
                        MappingProxyType({n: tuple(v for w in parts for v in w.values[n])
                                          for n in names}))


def _model_device(lm: LoadedLM) -> Any:
    """The device the language model's weights are on."""
    return next(lm.model.parameters()).device


def _ref_side(text: str, doc_id: str, done: dict[str, _Side]) -> _Side:
    """A reference segmented once per batch (other translations of an article share it).

    ``done`` maps the batch's reference texts to their sides; a side's document id is that of
    the first document with this reference (ids of reference sides are never reported).
    """
    side = done.get(text)
    if side is None:
        seg = segment(Document(id=doc_id, mt=text))
        side = done[text] = _Side(seg, line_spans(seg.norm))
    return side


def _require_pairing(d: SegmentedDocument, mt: _Side, refs: Sequence[_Side],
                     pairing: Sequence[list[tuple[int, int]] | None]) -> None:
    """Raise InputError when a reference does not pair with the text line by line."""
    for k, p in enumerate(pairing):
        if p is None:
            where = d.doc.origin or d.doc.id
            err = (f"{where}: reference {k + 1} has {count_lines(refs[k].lines)} non-blank lines but the "
                   f"text has {count_lines(mt.lines)}; parallel mode pairs line k with line k. Give a "
                   "line-aligned reference, or use mode='comparable' (or 'auto')")
            raise InputError(err)


def _sentences_by_line(side: _Side) -> dict[int, list[int]]:
    starts = [s for s, _ in side.lines]
    out: dict[int, list[int]] = {}
    line = 0
    for i, sent in enumerate(side.seg.sentences):
        while line + 1 < len(starts) and starts[line + 1] <= sent.start:
            line += 1
        out.setdefault(line, []).append(i)
    return out


def _rows(emb: NDArray[np.float32], index: Mapping[str, int],
          seg: SegmentedDocument) -> NDArray[np.float32]:
    """One embedding row per sentence of ``seg``; zeros for sentences that were not embedded."""
    out = np.zeros((len(seg.sentences), emb.shape[1]), dtype=np.float32)
    for i, s in enumerate(seg.sentences):
        k = index.get(seg.text(s))
        if k is not None:
            out[i] = emb[k]
    return out


def _mean(emb: NDArray[np.float32], rows: Sequence[int]) -> NDArray[np.float32]:
    if not rows:
        return np.zeros(emb.shape[1], dtype=np.float32)
    v = emb[list(rows)].mean(axis=0)
    n = float(np.linalg.norm(v))
    out: NDArray[np.float32] = v / n if n > 0 else v
    return out


def _cos(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(a @ b)


def _line_embeddings(side: _Side, lines: Sequence[int],
                     emb: NDArray[np.float32]) -> list[NDArray[np.float32] | None]:
    by_line = _sentences_by_line(side)
    return [_mean(emb, by_line[k]) if by_line.get(k) else None for k in lines]


def _combine(chrf: float, similarity: float) -> float:
    """The reference score (0-100): mean of chrF and 100 x embedding cosine.

    Chosen on WMT21 zh-en MQM (``benchmarks/reference_mqm.py``): it beats chrF on both the
    fitting part and the held-out last ten documents; adding TER helped on one part only.
    """
    return (chrf + 100.0 * min(max(similarity, 0.0), 1.0)) / 2.0


# --- helpers: word diff ---------------------------------------------------------------------

_TOKEN = re.compile(rf"{WORD.pattern}|[^\w\s]")  # the words of ``WORD``, and each punctuation mark
_WORDLIKE = re.compile(r"\w")


def _ref_counterpart(ops: Iterable[tuple[str, int, int, int, int]], ref_toks: Sequence[str],
                     i_start: int, i_end: int) -> str:
    """The reference words that a replace in the first reference's diff puts against tokens
    ``[i_start, i_end)`` of the candidate, lightly detokenised."""
    words: list[str] = []
    for tag, i1, i2, j1, j2 in ops:
        if tag == "replace" and i1 < i_end and i2 > i_start:
            words.extend(ref_toks[j1:j2])
    text = " ".join(words)
    return re.sub(r" ([^\w\s(\[\"'‘“])", r"\1", text)
