"""Re-fit mtqa's calibration (``models/calibration.json``) on WMT21 zh-en MQM.

Every MT line of the file (human translations ``ref-*`` left out) is checked as its own
document, once without and once with its reference, by every checker; the raw numbers of each
line (``mtqa.calibrate.unit_features``) and its findings are kept in a feature file, so that
re-fitting takes seconds. The split is by document: the first 41 documents (file order) train,
the last 10 are held out of every fit and threshold and only reported.

    python scripts/calibrate.py                                   # build features, fit, write
    python scripts/calibrate.py --features /tmp/mqm_features.jsonl --lm-cache /tmp/lm.pkl

The LM pass (~380k tokens) takes 12-15 min on 2 cores; ``--lm-cache`` keeps it (a pickle of
``(signature, line indices) -> WordScores`` as ``benchmarks/fluency_mqm.py`` writes it). The
reference checker's LM reading of every line after its reference takes about as long again.
Each unit model's within-segment ranking weight is chosen by cross-validation over the training
documents (``choose_rank_weight``); with ``--paragraph-features``, so are its context inputs,
fitted after it with its weights fixed (``choose_context``); major spans must reach
``SpanModel.MAJOR_PRECISION + MAJOR_MARGIN`` training precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtqa.version import __version__  # noqa: E402
from mtqa import calibrate as cal  # noqa: E402
from mtqa.aggregate import merge_findings  # noqa: E402
from mtqa.evaluate import (  # noqa: E402
    MqmRecord,
    confidence_bins,
    kendall,
    load_mqm,
    paragraph_units,
    pearson,
    span_scores,
    visible_without_reference,
    within_segment_kendall,
)
from mtqa.models import DEFAULT_LM, SHIPPED_LMS, file_sha256  # noqa: E402
from mtqa.types import CheckResult, Document, Finding, Severity, WordEvidence  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"  # ../shared/data, as CI lays it out
HELD_OUT_DOCS = 10
logger = logging.getLogger("calibrate")


def _finding_rows(results: Sequence[CheckResult]) -> list[list[Any]]:
    return [[f.start, f.end, f.checker, f.category, f.severity.value, f.confidence]
            for r in results for f in r.findings]


def _body(sd: Any) -> list[int] | None:
    body = [sd.sentences[i] for i in cal.body_units(sd)]
    return [min(b.start for b in body), max(b.end for b in body)] if body else None


def _evidence(ev: WordEvidence) -> dict[str, Any]:
    return {"start": list(ev.start), "end": list(ev.end),
            "values": {k: list(v) for k, v in ev.values.items()}}


def _unevidence(d: Mapping[str, Any] | None) -> WordEvidence | None:
    if d is None:
        return None
    return WordEvidence(tuple(d["start"]), tuple(d["end"]),
                        {k: tuple(float(x) for x in v) for k, v in d["values"].items()})


def _units(sd: Any, results: list[CheckResult]) -> list[dict[str, Any]]:
    """The scoring units of a checked document as the pipeline scores it
    (``mtqa.aggregate.scoring_units``): sentence count, character range, raw features."""
    from mtqa.aggregate import scoring_units

    ref = next((r.reference for r in results if r.reference is not None), None)
    rows = []
    for unit in scoring_units(sd, ref):
        rows.append({"sentences": len(unit),
                     "range": [min(sd.sentences[i].start for i in unit),
                               max(sd.sentences[i].end for i in unit)],
                     "raw": cal.unit_features(sd, results, unit)})
    return rows


def build_features(path: Path, out: Path, lm_cache: Path | None, limit: int | None,
                   precision: str = "auto", lm_model: str | None = None) -> None:
    """Run every checker on every MT line and write one JSON object per line to ``out``."""
    from mtqa.checkers.fluency import FluencyChecker, WordScores
    from mtqa.checkers.grammar import GrammarChecker
    from mtqa.checkers.reference import ReferenceChecker
    from mtqa.checkers.structure import StructureChecker
    from mtqa.segment import segment

    records = load_mqm(path)
    index = [i for i, r in enumerate(records) if r.system != "ref-A"]
    keep = [i for i in index if not records[i].system.startswith("ref-")]
    if limit is not None:
        segs = list(dict.fromkeys(records[i].seg_id for i in keep))[: max(1, limit // 13)]
        chosen = set(segs)
        keep = [i for i in keep if records[i].seg_id in chosen]
    fluency = FluencyChecker(lm_model=lm_model, precision=precision)
    words: dict[int, WordScores] = {}
    if lm_cache is not None and lm_cache.is_file():
        with lm_cache.open("rb") as fh:
            key, saved = pickle.load(fh)
        if key[0] == fluency.signature:
            words = dict(zip(key[1], saved))
            logger.info("LM word scores of %d lines from %s", len(words), lm_cache)
    free_docs = [segment(Document(id=str(i), mt=records[i].hypothesis)) for i in keep]
    ref_docs = [segment(Document(id=str(i), mt=records[i].hypothesis,
                                 ref=(records[i].reference,))) for i in keep]
    todo = [k for k, i in enumerate(keep) if i not in words]
    t0 = time.perf_counter()
    for c in range(0, len(todo), 256):
        part = todo[c : c + 256]
        for k, ws in zip(part, fluency.score_words([free_docs[k] for k in part])):
            words[keep[k]] = ws
        logger.info("LM: %d/%d lines, %.0f s", c + len(part), len(todo), time.perf_counter() - t0)
    if todo and lm_cache is not None:
        ordered = sorted(words)
        tmp = lm_cache.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(((fluency.signature, tuple(ordered)), [words[i] for i in ordered]), fh)
        os.replace(tmp, lm_cache)
    fl = [fluency.analyse(sd, words[i]) for sd, i in zip(free_docs, keep)]
    fluency.close()
    logger.info("structure, grammar, reference on %d lines", len(keep))
    structure = StructureChecker()
    grammar = GrammarChecker(backend="harper")
    reference = ReferenceChecker(mode="parallel", lm=True, lm_model=lm_model,
                                 lm_precision=precision, embedder_precision=precision)
    st_free = structure.check(free_docs)
    st_ref = structure.check(ref_docs)
    gr_free = grammar.check(free_docs)
    gr_ref = grammar.check(ref_docs)
    rf = []
    for c in range(0, len(ref_docs), 512):
        rf.extend(reference.check(ref_docs[c : c + 512]))
        logger.info("reference: %d/%d", min(c + 512, len(ref_docs)), len(ref_docs))
    signature = {"fluency": fluency.signature, "structure": structure.signature,
                 "grammar": grammar.signature, "reference": reference.signature}
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"signatures": signature, "data": str(path),
                             "sha256": file_sha256(path)}) + "\n")
        for k, i in enumerate(keep):
            r = records[i]
            sd_f, sd_r = free_docs[k], ref_docs[k]
            free = [fl[k], st_free[k], gr_free[k]]
            withref = [fl[k], st_ref[k], gr_ref[k], rf[k]]
            units_f = list(cal.body_units(sd_f))
            units_r = list(cal.body_units(sd_r))
            wf, wr = fl[k].words, rf[k].words
            fh.write(json.dumps({
                "line": i, "doc_id": r.doc_id, "seg_id": r.seg_id, "system": r.system,
                "mqm": r.mqm, "length": len(r.hypothesis),
                "gold": [[e.start, e.end, e.severity] for e in r.errors],
                "gold_categories": [e.category for e in r.errors],
                "free": cal.unit_features(sd_f, free, units_f),
                "ref": cal.unit_features(sd_r, withref, units_r),
                # NOTE: the line as the pipeline scores it: a line of several sentences is
                # several units, each in context (``cal.CONTEXT``)
                "units_free": _units(sd_f, free), "units_ref": _units(sd_r, withref),
                "findings_free": _finding_rows(free),
                "findings_ref": _finding_rows(withref),
                "body_free": _body(sd_f), "body_ref": _body(sd_r),
                "words_fluency": None if wf is None else _evidence(wf),
                "words_ref": None if wr is None else _evidence(wr),
            }) + "\n")
    os.replace(tmp, out)


def build_paragraph_features(path: Path, out: Path, lm_cache: Path | None,
                             precision: str = "auto", docs_limit: int | None = None,
                             lm_model: str | None = None) -> None:
    """Run every checker on paragraph units (``mtqa.evaluate.paragraph_units``) and write one JSON object per
    paragraph to ``out``: its lines, their MQM penalties and character ranges, the summed
    penalty, shifted gold spans, and for each side the raw features of each scoring unit
    (``mtqa.aggregate.scoring_units``) as the pipeline computes them in paragraph context."""
    from mtqa.checkers.fluency import FluencyChecker, WordScores
    from mtqa.checkers.grammar import GrammarChecker
    from mtqa.checkers.reference import ReferenceChecker
    from mtqa.checkers.structure import StructureChecker
    from mtqa.segment import segment

    records = load_mqm(path)
    keep = [r for r in records if not r.system.startswith("ref-")]
    plan = paragraph_units(keep)
    if docs_limit is not None:
        chosen = set(list(dict.fromkeys(p.record.doc_id for p in plan))[:docs_limit])
        plan = [p for p in plan if p.record.doc_id in chosen]
    free_docs = [segment(Document(id=f"p{k}", mt=p.record.hypothesis))
                 for k, p in enumerate(plan)]
    ref_docs = [segment(Document(id=f"p{k}", mt=p.record.hypothesis, ref=(p.record.reference,)))
                for k, p in enumerate(plan)]
    fluency = FluencyChecker(lm_model=lm_model, precision=precision)
    words: dict[int, WordScores] = {}
    if lm_cache is not None and lm_cache.is_file():
        with lm_cache.open("rb") as fh:
            key, saved = pickle.load(fh)
        if key[0] == fluency.signature and len(saved) == len(plan):
            words = dict(enumerate(saved))
    t0 = time.perf_counter()
    todo = [k for k in range(len(plan)) if k not in words]
    for c in range(0, len(todo), 64):
        part = todo[c : c + 64]
        for k, ws in zip(part, fluency.score_words([free_docs[k] for k in part])):
            words[k] = ws
        logger.info("LM: %d/%d paragraphs, %.0f s", c + len(part), len(todo),
                    time.perf_counter() - t0)
    if todo and lm_cache is not None:
        with lm_cache.open("wb") as fh:
            pickle.dump(((fluency.signature, len(plan)), [words[k] for k in range(len(plan))]), fh)
    fl = [fluency.analyse(sd, words[k]) for k, sd in enumerate(free_docs)]
    fluency.close()
    structure = StructureChecker()
    grammar = GrammarChecker(backend="harper")
    reference = ReferenceChecker(mode="parallel", lm=True, lm_model=lm_model,
                                 lm_precision=precision, embedder_precision=precision)
    st_free, st_ref = structure.check(free_docs), structure.check(ref_docs)
    gr_free, gr_ref = grammar.check(free_docs), grammar.check(ref_docs)
    rf = []
    for c in range(0, len(ref_docs), 128):
        rf.extend(reference.check(ref_docs[c : c + 128]))
        logger.info("reference: %d/%d paragraphs, %.0f s", min(c + 128, len(ref_docs)),
                    len(ref_docs), time.perf_counter() - t0)
    signature = {"fluency": fl[0].signature if fl else "", "structure": structure.signature,
                 "grammar": grammar.signature, "reference": reference.signature,
                 "paragraphs": "mtqa.evaluate.paragraph_units, seed 22"}

    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"signatures": signature, "data": str(path),
                             "sha256": file_sha256(path)}) + "\n")
        for k, p in enumerate(plan):
            rec = p.record
            free = [fl[k], st_free[k], gr_free[k]]
            withref = [fl[k], st_ref[k], gr_ref[k], rf[k]]
            wf, wr = fl[k].words, rf[k].words
            fh.write(json.dumps({
                "paragraph": k, "doc_id": rec.doc_id, "system": rec.system,
                "seg_ids": [keep[i].seg_id for i in p.lines], "seg_id": rec.seg_id,
                "line_ranges": [list(r) for r in p.ranges],
                "mqm_lines": [keep[i].mqm for i in p.lines],
                "mqm": rec.mqm, "length": len(rec.hypothesis),
                "gold": [[e.start, e.end, e.severity] for e in rec.errors],
                "gold_categories": [e.category for e in rec.errors],
                "units_free": _units(free_docs[k], free), "units_ref": _units(ref_docs[k], withref),
                "findings_free": _finding_rows(free), "findings_ref": _finding_rows(withref),
                "body_free": _body(free_docs[k]), "body_ref": _body(ref_docs[k]),
                "words_fluency": None if wf is None else _evidence(wf),
                "words_ref": None if wr is None else _evidence(wr),
            }) + "\n")
    os.replace(tmp, out)


def read_features(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        head = json.loads(fh.readline())
        return head, [json.loads(line) for line in fh]


def split(rows: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int], list[str]]:
    docs = list(dict.fromkeys(r["doc_id"] for r in rows))
    held = set(docs[-HELD_OUT_DOCS:])
    train = [k for k, r in enumerate(rows) if r["doc_id"] not in held]
    test = [k for k, r in enumerate(rows) if r["doc_id"] in held]
    return train, test, docs[-HELD_OUT_DOCS:]


def figures(rows: Sequence[Mapping[str, Any]], idx: Sequence[int],
            score: Sequence[float] | Mapping[int, float]) -> dict[str, float]:
    s = [score[k] for k in idx]
    h = [-float(rows[k]["mqm"]) for k in idx]
    g = [str(rows[k]["seg_id"]) for k in idx]
    return {"pearson": pearson(s, h), "kendall": kendall(s, h),
            "within_kendall": within_segment_kendall(s, h, g)}


def git_version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "mtqa"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


VARIANTS = {"lm-free": ("free", True), "nolm-free": ("free", False),
            "lm-ref": ("ref", True), "nolm-ref": ("ref", False)}


def _raw(row: Mapping[str, Any], side: str, lm: bool) -> dict[str, float]:
    raw = dict(row[side])
    if not lm:
        raw = {k: v for k, v in raw.items() if not k.startswith("lm_") and
               not k.startswith("n_fluency_")}
    return raw


def _overlap(a: Sequence[int], b: Sequence[int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


class ParagraphSet:
    """The scoring units of paragraph rows (``build_paragraph_features``) for one variant.

    ``raws[j]``/``target[j]`` are one sentence unit in paragraph context: its raw features
    and its share of the paragraph's MQM (each line's capped penalty spread over the units by
    character overlap); ``members[p]`` are the units of paragraph ``p`` the variant scores.
    """

    def __init__(self, paras: Sequence[Mapping[str, Any]], side: str, lm: bool, name: str,
                 cap: float, lines: bool = False) -> None:
        #: MQM lines (``line_documents``), not paragraphs: each is scored by its units' summed
        #: expected penalty (the quantity mtqa evaluate ranks lines by), not the mean
        self.lines = lines
        self.paras = list(paras)
        self.raws: list[dict[str, float]] = []
        self.target: list[float] = []
        self.para_of: list[int] = []
        self.members: list[list[int]] = []
        self.sentences: list[float] = []
        for p, row in enumerate(self.paras):
            mine = []
            n = 0.0
            for unit in row[f"units_{side}"]:
                raw = _raw({"u": unit["raw"]}, "u", lm)
                # NOTE: feature files built before ``unit_features`` gave the context flag: a
                # unit of a paragraph of several units is in context
                raw.setdefault("in_context", float(len(row[f"units_{side}"]) > 1))
                if cal.variant_for(raw) != name:
                    continue
                share = sum(min(float(m), cap) * _overlap(unit["range"], rng) / max(rng[1] - rng[0], 1)
                            for m, rng in zip(row["mqm_lines"], row["line_ranges"]))
                mine.append(len(self.raws))
                self.raws.append(raw)
                self.target.append(share)
                self.para_of.append(p)
                n += float(unit["sentences"])
            self.members.append(mine)
            self.sentences.append(n)

    def units_of(self, paras: Sequence[int]) -> list[int]:
        return [j for p in paras for j in self.members[p]]

    def aggregates(self, paras: Sequence[int], offset: dict[int, int]) -> list[cal.Aggregate]:
        """The paragraphs ``paras`` as fit aggregates, their units at ``offset[unit]``."""
        kind = "line" if self.lines else "paragraph"
        return [cal.Aggregate(tuple(offset[j] for j in self.members[p]),
                              f"{kind}:{self.paras[p]['seg_id']}", float(self.paras[p]["mqm"]),
                              1.0 if self.lines else self.sentences[p])
                for p in paras if self.members[p]]

    def scores(self, model: cal.UnitModel, paras: Sequence[int]) -> dict[int, float]:
        """mtqa's score of each paragraph: the map of its units' mean expected penalty per
        sentence (100 where the variant scores none of it), as ``mtqa.aggregate`` does; of
        each line, minus the units' summed expected penalty (what ``mtqa evaluate`` reports
        as ``-mtqa expected penalty``)."""
        out = {}
        for p in paras:
            e = sum(model.expected_penalty(self.raws[j]) for j in self.members[p])
            if self.lines:
                out[p] = -e
            else:
                out[p] = cal.penalty_to_score(e / self.sentences[p]) if self.members[p] else 100.0
        return out

    def figures(self, paras: Sequence[int], score: Mapping[int, float]) -> dict[str, float]:
        return figures(self.paras, paras, score)


def _fit(rows: Sequence[Mapping[str, Any]], raws: Sequence[Mapping[str, float]],
         fit_rows: Sequence[int], target: Sequence[float], l2: float, lam: float) -> cal.UnitModel:
    """One unit model on the lines ``fit_rows``, ranking weight ``lam`` within segments."""
    xs = [raws[k] for k in fit_rows]
    ys = [target[k] for k in fit_rows]
    groups = [str(rows[k]["seg_id"]) for k in fit_rows]
    return cal.fit_poisson(xs, ys, l2=l2, prior=cal.PRIOR, groups=groups, rank_weight=lam)


def line_documents(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The MQM lines of a feature file as one-line documents for ``ParagraphSet(lines=True)``:
    a line of several sentences is several scoring units in context, as the pipeline scores it
    (``build_features`` keeps them as ``units_free``/``units_ref``)."""
    docs = []
    for r in rows:
        if "units_free" not in r:
            raise SystemExit("the feature file has no scoring units per line (built before "
                             "2026-12-04): rebuild it with --rebuild")
        docs.append({"doc_id": r["doc_id"], "seg_id": r["seg_id"], "system": r["system"],
                     "mqm": r["mqm"], "mqm_lines": [r["mqm"]],
                     "line_ranges": [[0, int(r["length"])]],
                     "units_free": r["units_free"], "units_ref": r["units_ref"]})
    return docs


def _fit_context(base: cal.UnitModel, parts: Sequence[tuple[ParagraphSet, Sequence[int]]],
                 option: tuple[float, float, float]) -> cal.UnitModel:
    """``base`` with its context inputs fitted on the documents of ``parts`` (each a set and
    the documents of it to fit on: the lines and the paragraphs of the training documents):
    ``option`` is (the units' likelihood weight, the documents' ranking weight, the L2 weight);
    (0, 0, _) is ``base`` itself. A unit without context scores as ``base`` scores it
    (``cal.fit_poisson``'s ``base``)."""
    likelihood, rank, l2 = option
    if (likelihood, rank) == (0.0, 0.0):
        return base
    xs: list[dict[str, float]] = []
    ys: list[float] = []
    aggregates: list[cal.Aggregate] = []
    for par, docs in parts:
        units = par.units_of(docs)
        offset = {j: len(xs) + i for i, j in enumerate(units)}
        xs += [par.raws[j] for j in units]
        ys += [par.target[j] for j in units]
        aggregates += par.aggregates(docs, offset)
    if not xs:
        return base
    return cal.fit_poisson(xs, ys, l2=l2, aggregates=aggregates, aggregate_weight=rank,
                           weights=[likelihood] * len(xs), base=base)


#: weights of the within-segment ranking term tried (``cal.fit_poisson``), and the folds of the
#: cross-validation over training documents that picks one
RANK_WEIGHTS = (0.0, 10.0, 30.0, 100.0)
FOLDS = 4
#: a larger ranking weight must buy this much cross-validated within-segment Kendall: the
#: smallest weight within RANK_GAIN of the best is taken. The ranking term is not free: it
#: moves the absolute level the gate reads (a weight of 100 chosen for a .003 gain put the BNC
#: originals' median score at 74 instead of 85, 2026-12-03), and .003 is within the folds' noise
RANK_GAIN = 0.005
#: the context fits tried, simplest first: (units' likelihood weight, documents' ranking weight,
#: L2 weight); the first leaves the context inputs out. The likelihood is always in: inside a
#: paragraph every unit is in context, so the ranking term alone cannot place the context
#: scores' level (a ranking-only fit chosen on 2026-12-04 put the paragraphs' median score at
#: 93.5 instead of the base's 83.2, where the gate reads it). Before 2026-12-04 paragraphs
#: entered the sentence model's own fit and cost the sentences .005-.017 (issue 22)
CONTEXT_OPTIONS = ((0.0, 0.0, 10.0),) + tuple(
    (1.0, rank, l2) for rank in (0.0, 10.0, 30.0, 100.0) for l2 in (1000.0, 100.0, 10.0))
def _smallest_near_best(weights: Sequence[float], figure: Callable[[float], float]) -> float:
    """The smallest of ``weights`` whose ``figure`` is within RANK_GAIN of the best one's."""
    top = max(figure(w) for w in weights)
    return min(w for w in weights if figure(w) >= top - RANK_GAIN)


def _folds(rows: Sequence[Mapping[str, Any]], fit_rows: Sequence[int]) -> dict[Any, int]:
    """Fold of each training document (every system's lines of a document in one fold)."""
    docs = list(dict.fromkeys(rows[k]["doc_id"] for k in fit_rows))
    return {d: i % FOLDS for i, d in enumerate(docs)}


def choose_rank_weight(rows: Sequence[Mapping[str, Any]], raws: Sequence[Mapping[str, float]],
                       fit_rows: Sequence[int], target: Sequence[float], l2: float
                       ) -> tuple[float, dict[str, float]]:
    """The sentence ranking weight with the best cross-validated within-segment Kendall (the
    smallest within ``RANK_GAIN`` of it), among those whose cross-validated pooled Kendall
    stays within .01 of the likelihood-only fit's.

    Folds are whole training documents, so no segment is in both sides of a fold; held-out
    documents are never read.
    """
    fold_of = _folds(rows, fit_rows)

    def cv(lam: float) -> list[float]:
        figs: list[list[float]] = []
        for f in range(FOLDS):
            tr = [k for k in fit_rows if fold_of[rows[k]["doc_id"]] != f]
            te = [k for k in fit_rows if fold_of[rows[k]["doc_id"]] == f]
            model = _fit(rows, raws, tr, target, l2, lam)
            sf = figures(rows, te, {k: -model.expected_penalty(raws[k]) for k in te})
            figs.append([sf["kendall"], sf["within_kendall"]])
        return [float(np.nanmean([r[i] for r in figs])) for i in range(2)]

    table = {lam: cv(lam) for lam in RANK_WEIGHTS}
    floor = table[0.0][0] - 0.01
    best = _smallest_near_best([lam for lam in RANK_WEIGHTS if table[lam][0] >= floor],
                               lambda x: table[x][1])
    out: dict[str, float] = {"rank_weight": best}
    for lam, t in table.items():
        out[f"cv_pooled_rank{lam:g}"] = t[0]
        out[f"cv_within_rank{lam:g}"] = t[1]
    return best, out


def choose_context(rows: Sequence[Mapping[str, Any]], raws: Sequence[Mapping[str, float]],
                   fit_rows: Sequence[int], target: Sequence[float], l2: float, lam: float,
                   lines: ParagraphSet, par: ParagraphSet, par_train: Sequence[int]
                   ) -> tuple[tuple[float, float, float], dict[str, float]]:
    """The context fit (``CONTEXT_OPTIONS``) with the best cross-validated within-segment
    Kendall of paragraphs (the simplest within ``RANK_GAIN`` of it), among those that keep the
    cross-validated figures of the lines as the pipeline scores them (a line of several
    sentences in context) within .005 of the base model's, and the paragraphs' pooled Kendall
    within .01.

    Each fold fits the sentence model on its training documents' lines (ranking weight
    ``lam``), then the context inputs on its training documents' lines and paragraphs, and
    scores the other documents' lines and paragraphs.
    """
    fold_of = _folds(rows, fit_rows)
    table: dict[tuple[float, float, float], list[list[float]]] = {o: [] for o in CONTEXT_OPTIONS}
    for f in range(FOLDS):
        tr = [k for k in fit_rows if fold_of[rows[k]["doc_id"]] != f]
        te = [k for k in fit_rows if fold_of[rows[k]["doc_id"]] == f]
        ptr = [p for p in par_train if fold_of.get(par.paras[p]["doc_id"]) != f]
        pte = [p for p in par_train if fold_of.get(par.paras[p]["doc_id"]) == f]
        if len(pte) <= 2:
            continue
        base = _fit(rows, raws, tr, target, l2, lam)
        for option in CONTEXT_OPTIONS:
            model = _fit_context(base, [(lines, tr), (par, ptr)], option)
            lf = lines.figures(te, lines.scores(model, te))
            pf = par.figures(pte, par.scores(model, pte))
            table[option].append([lf["kendall"], lf["within_kendall"],
                                  pf["kendall"], pf["within_kendall"]])
    if not table[CONTEXT_OPTIONS[0]]:
        # NOTE: too few training paragraphs to cross-validate (a --limit run): no context
        return CONTEXT_OPTIONS[0], {"context_likelihood": 0.0, "paragraph_rank_weight": 0.0}
    mean = {o: [float(np.nanmean([r[i] for r in t])) for i in range(4)]
            for o, t in table.items()}
    none = mean[CONTEXT_OPTIONS[0]]
    ok = [CONTEXT_OPTIONS[0]] + [
        o for o in CONTEXT_OPTIONS[1:] if mean[o][0] >= none[0] - 0.005
        and mean[o][1] >= none[1] - 0.005 and mean[o][2] >= none[2] - 0.01]
    top = max(mean[o][3] for o in ok)
    best = next(o for o in ok if mean[o][3] >= top - RANK_GAIN)
    out: dict[str, float] = {"context_likelihood": best[0], "paragraph_rank_weight": best[1],
                             "context_l2": best[2]}
    for (lik, rank, l2c), figs in mean.items():
        tag = f"lik{lik:g}_rank{rank:g}_l2{l2c:g}"
        for name, v in zip(("line_pooled", "line_within", "paragraph_pooled",
                            "paragraph_within"), figs):
            out[f"cv_{name}_{tag}"] = v
    return best, out


def fit_all(head: Mapping[str, Any], rows: list[dict[str, Any]], l2: float, cap: float,
            paragraphs: Sequence[Mapping[str, Any]] | None = None,
            records: Sequence[MqmRecord] = ()) -> tuple[dict[str, cal.UnitModel], dict[str, Any]]:
    """The unit models of every variant; with ``paragraphs`` (and the MQM ``records`` they were
    built from, for chrF on the same paragraphs) each with the context inputs chosen by
    ``choose_context`` fitted on top (the lines and paragraphs of the training documents)."""
    train, test, held_docs = split(rows)
    held = set(held_docs)
    chrf: dict[int, float] = {}
    if paragraphs:
        import sacrebleu

        texts = {(p.record.seg_id, p.record.system): p.record
                 for p in paragraph_units([r for r in records if not r.system.startswith("ref-")])}
        for k, prow in enumerate(paragraphs):
            rec = texts.get((prow["seg_id"], prow["system"]))
            if rec is None:
                raise SystemExit(f"{head['data']}: paragraph {prow['seg_id']} of "
                                 f"{prow['system']} is not one mtqa.evaluate.paragraph_units "
                                 "makes now; rebuild the paragraph features")
            if prow["doc_id"] in held:
                chrf[k] = sacrebleu.sentence_chrf(rec.hypothesis, [rec.reference]).score
    target = [min(float(r["mqm"]), cap) for r in rows]
    models: dict[str, cal.UnitModel] = {}
    report: dict[str, Any] = {}
    for name, (side, lm) in VARIANTS.items():
        raws = [_raw(r, side, lm) for r in rows]
        # NOTE: a line that is all boilerplate (a photo credit) has no body to score; mtqa gives
        # it 100, and it is left out of the fit
        usable = [cal.variant_for(x) == name for x in raws]
        fit_rows = [k for k in train if usable[k]]
        par = ParagraphSet(paragraphs, side, lm, name, cap) if paragraphs else None
        lines = ParagraphSet(line_documents(rows), side, lm, name, cap, lines=True) \
            if paragraphs else None
        p_train = [p for p, r in enumerate(paragraphs or []) if r["doc_id"] not in held]
        p_test = [p for p, r in enumerate(paragraphs or []) if r["doc_id"] in held]
        lam, cv = choose_rank_weight(rows, raws, fit_rows, target, l2)
        model = base = _fit(rows, raws, fit_rows, target, l2, lam)
        if par is not None and lines is not None:
            option, cv_context = choose_context(rows, raws, fit_rows, target, l2, lam, lines,
                                                par, p_train)
            model = _fit_context(model, [(lines, fit_rows), (par, p_train)], option)
            cv.update(cv_context)
        score = [cal.penalty_to_score(model.expected_penalty(x)) if ok else 100.0
                 for x, ok in zip(raws, usable)]
        f_train, f_test = figures(rows, train, score), figures(rows, test, score)
        figs = {f"train_{k}": v for k, v in f_train.items()}
        figs.update({f"held_out_{k}": v for k, v in f_test.items()})
        if par is not None and lines is not None:
            # NOTE: the lines as the pipeline scores them (several sentences: units in context)
            lf = lines.figures(test, lines.scores(model, test))
            figs.update({f"held_out_pipeline_{k}": v for k, v in lf.items()})
            ps = par.scores(model, p_test)
            figs.update({f"held_out_paragraph_{k}": v for k, v in par.figures(p_test, ps).items()})
            # the level the gate reads: the paragraphs' summed expected penalty over their
            # (capped) MQM, with the context inputs and without
            units = par.units_of(p_test)
            gold = max(sum(par.target[j] for j in units), 1e-9)
            figs["held_out_paragraph_level"] = sum(
                model.expected_penalty(par.raws[j]) for j in units) / gold
            figs["held_out_paragraph_level_base"] = sum(
                base.expected_penalty(par.raws[j]) for j in units) / gold
            if side == "ref":
                cf = par.figures(p_test, {p: chrf[p] for p in p_test})
                figs.update({f"held_out_paragraph_chrf_{k}": v for k, v in cf.items()})
        figs.update(cv)
        models[name] = cal.UnitModel(model.inputs, model.center, model.scale, model.coef,
                                     model.intercept, figs, model.prior)
        report[name] = figs
    return models, {"held_out_docs": held_docs, "train_lines": len(train),
                    "held_out_lines": len(test), "figures": report}


def gold_spans(row: Mapping[str, Any], side: str) -> list[tuple[int, int, str]]:
    """The gold errors a side's span and word models are fitted to find (their target).

    With the reference (``side == "ref"``) every annotated error; without it only the errors
    English alone can show (``mtqa.evaluate.visible_without_reference``: fluency, style,
    non-translation): a mistranslation is invisible without the source or a reference, and
    fitted to it a reference-free model learns to spread a bad sentence's probability over its
    content words (issue 19). Rule-based structure findings keep their own severity.
    """
    spans = [(int(s), int(e), str(v)) for s, e, v in row["gold"]]
    if side == "ref":
        return spans
    cats = row.get("gold_categories")
    if cats is None or len(cats) != len(spans):
        err = (f"feature line {row.get('line')}: no 'gold_categories' beside its gold spans; "
               "rebuild the feature file (--rebuild)")
        raise ValueError(err)
    return [g for g, c in zip(spans, cats) if visible_without_reference(str(c))]


def _gold(row: Mapping[str, Any], side: str) -> np.ndarray:
    """Per character of a line: 0, or the severity (1 minor, 2 major) of ``side``'s gold."""
    g = np.zeros(int(row["length"]), dtype=np.int8)
    for s, e, sev in gold_spans(row, side):
        g[s:e] = np.maximum(g[s:e], 1 if sev == "minor" else 2)
    return g


def _replaced(side: str, checker: str, category: str, words_active: bool) -> bool:
    """Findings that make no span of their own: a diff without a parallel reference, or, where
    the word model applies, the fluency checker's spans and the diff (evidence only)."""
    if category == "reference-mismatch":
        return side == "free" or words_active
    return words_active and checker == "fluency"


#: each line's predicted findings, as ``mtqa.aggregate`` makes them before merging
Predicted = list[list[Finding]]


def _word_finding(s: int, e: int, major: bool, p: float, side: str) -> Finding:
    """A word-model span as ``mtqa.aggregate.word_findings`` reports it (message left out)."""
    severity = Severity.MAJOR if major else Severity.MINOR
    if side == "ref":
        return Finding(s, e, "mistranslation", severity, "reference", "", p, "word-model")
    return Finding(s, e, "garbled" if major else "unnatural-phrasing", severity, "fluency", "",
                   p, "word-model")


def apply_span_model(rows: Sequence[Mapping[str, Any]], side: str, expected: Sequence[float],
                     model: cal.SpanModel | None, words: Sequence[list[Finding]] | None = None,
                     active: Sequence[bool] | None = None) -> Predicted:
    """Each line's predicted findings (as ``mtqa.aggregate`` makes them, before merging): the
    word model's (``words``), then the checkers' as the span model keeps and grades them, with
    its probability of an error as their confidence."""
    out: Predicted = []
    for k, (row, e) in enumerate(zip(rows, expected)):
        on = bool(active[k]) if active is not None else False
        pred = list(words[k]) if words is not None else []
        for s, t, checker, category, sev, conf in row[f"findings_{side}"]:
            if t <= s or _replaced(side, checker, category, on):
                continue
            severity = Severity(sev)
            if model is not None and checker in cal.SPAN_CHECKERS:
                p_err, p_major = model.probabilities(checker, category, e, conf,
                                                     severity is not Severity.MINOR)
                if p_err < model.keep:
                    continue
                conf = p_err
                if severity is not Severity.CRITICAL:
                    severity = Severity.MAJOR if p_major >= model.major else Severity.MINOR
            pred.append(Finding(s, t, category, severity, checker, "", float(conf)))
        out.append(pred)
    return out


def span_figures(rows: Sequence[Mapping[str, Any]], idx: Sequence[int], pred: Predicted,
                 side: str) -> dict[str, float]:
    """Character figures of the lines ``idx`` against ``side``'s gold (``gold_spans``), and
    against the other side's: ``all_*`` (every error) reference-free, ``visible_*`` (what
    English alone shows) with the reference."""
    texts = ["x" * int(rows[k]["length"]) for k in idx]
    p = [[(f.start, f.end, f.severity.value) for f in pred[k]] for k in idx]
    gold = [gold_spans(rows[k], side) for k in idx]
    a = span_scores(texts, p, gold)
    b = span_scores(texts, p, gold, ignore_severity=True)
    out = {"f1": a.f1, "precision": a.precision, "recall": a.recall,
           "major_precision": a.major_precision, "f1_ignoring_severity": b.f1,
           "precision_ignoring_severity": b.precision, "recall_ignoring_severity": b.recall}
    other = "ref" if side == "free" else "free"
    c = span_scores(texts, p, [gold_spans(rows[k], other) for k in idx])
    name = "all" if other == "ref" else "visible"
    out.update({f"{name}_f1": c.f1, f"{name}_precision": c.precision,
                f"{name}_recall": c.recall, f"{name}_major_precision": c.major_precision})
    return out


def span_bins(rows: Sequence[Mapping[str, Any]], texts: Sequence[str], idx: Sequence[int],
              pred: Predicted, side: str) -> tuple[Any, ...]:
    """Confidence calibration (``mtqa.evaluate.confidence_bins``) of the lines ``idx``' spans
    merged as a report merges them, against ``side``'s gold."""
    merged = [[(s.start, s.end, s.confidence) for s in merge_findings(texts[k], pred[k])]
              for k in idx]
    return confidence_bins([texts[k] for k in idx], merged, [gold_spans(rows[k], side)
                                                             for k in idx])


class _CharIndex:
    """Every line's characters laid end to end, for scoring many threshold pairs quickly.

    The figures are those of ``mtqa.evaluate.span_scores`` (severity mismatch counts half)
    against ``side``'s gold, computed with difference arrays instead of per-character loops.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], idx: Sequence[int], side: str) -> None:
        lengths = [int(rows[k]["length"]) for k in idx]
        self.offset = dict(zip(idx, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)))
        self.size = int(sum(lengths))
        self.gold = (np.concatenate([_gold(rows[k], side) for k in idx]) if idx
                     else np.zeros(0, np.int8))

    def figures(self, spans: Sequence[tuple[int, int, int]]) -> Point:
        """(F1, precision, recall, major precision) of global ``(start, end, 1|2)`` spans."""
        any_d = np.zeros(self.size + 1, np.int32)
        maj_d = np.zeros(self.size + 1, np.int32)
        if spans:
            arr = np.asarray(spans, dtype=np.int64)
            np.add.at(any_d, arr[:, 0], 1)
            np.add.at(any_d, arr[:, 1], -1)
            big = arr[arr[:, 2] == 2]
            np.add.at(maj_d, big[:, 0], 1)
            np.add.at(maj_d, big[:, 1], -1)
        pred = (np.cumsum(any_d)[:-1] > 0).astype(np.int8)
        pred[np.cumsum(maj_d)[:-1] > 0] = 2
        hit = (pred > 0) & (self.gold > 0)
        credit = float(np.sum(hit & (pred == self.gold))) + 0.5 * float(
            np.sum(hit & (pred != self.gold)))
        n_pred, n_gold = float(np.sum(pred > 0)), float(np.sum(self.gold > 0))
        p = credit / n_pred if n_pred else 0.0
        r = credit / n_gold if n_gold else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        n_major = float(np.sum(pred == 2))
        major_p = float(np.sum((pred == 2) & (self.gold > 0))) / n_major if n_major else math.nan
        return f1, p, r, major_p


#: training figures of a threshold pair: (F1, precision, recall, major precision)
Point = tuple[float, float, float, float]

#: the training major precision asked for above ``SpanModel.MAJOR_PRECISION``: precision at a
#: threshold picked on the training documents overstates it on new ones (with the reference it
#: fell from .37 to .29-.31 on the held-out documents when the floor was met exactly)
MAJOR_MARGIN = 0.05
#: reference-free, thresholds are chosen for precision (an editor who sees noise learns to
#: ignore the colours): the most precise pair with at least this training recall of the
#: visible errors (issue 19 asks precision >= .5 at recall >= .2 on new documents)
FREE_MIN_RECALL = 0.05
#: reference-free, a span is major only when the model's probability that it is a major error
#: is at least this: one major span in a 20-word sentence fails the default gate
FREE_MAJOR_MIN = 0.5


def _choose(points: Sequence[tuple[Point, float, float]], side: str, floor: float
            ) -> tuple[Point, float, float]:
    """The threshold pair ``(figures, keep, major)`` a side's fit keeps: with the reference the
    best training F1, reference-free the best precision at ``FREE_MIN_RECALL`` recall (the best
    F1 where none reaches it); in both among the pairs whose major precision reaches ``floor``
    (or that have no major span)."""
    ok = [p for p in points if p[0][3] != p[0][3] or p[0][3] >= floor] or list(points)
    if side == "free":
        enough = [p for p in ok if p[0][2] >= FREE_MIN_RECALL]
        if enough:
            return max(enough, key=lambda p: (p[0][1], p[0][0]))
    return max(ok, key=lambda p: (p[0][0], p[0][1]))


def _major_grid(side: str, grid: Sequence[float]) -> list[float]:
    low = FREE_MAJOR_MIN if side == "free" else 0.0
    return [v for v in grid if v >= low] + [1.01]


def _word_evidence_of(row: Mapping[str, Any], side: str
                      ) -> tuple[WordEvidence | None, WordEvidence | None]:
    fluency = _unevidence(row.get("words_fluency"))
    reference = _unevidence(row.get("words_ref")) if side == "ref" else None
    if row.get(f"body_{side}") is None or not cal.word_evidence_ready(fluency, reference, side):
        return None, None
    return fluency, reference


#: a side's word-model inputs of each line it applies to: row -> (words, inputs)
WordTable = dict[int, tuple[list[tuple[int, int]], np.ndarray]]


def word_table(rows: Sequence[Mapping[str, Any]], texts: Sequence[str], side: str,
               expected: Sequence[float]) -> WordTable:
    """The word model's inputs for every line whose evidence it reads (once per refit: the fit
    and the lines' spans both read them)."""
    table: WordTable = {}
    for k, row in enumerate(rows):
        fluency, reference = _word_evidence_of(row, side)
        if fluency is None:
            continue
        bs, be = row[f"body_{side}"]
        words, x = cal.word_inputs(texts[k], [(bs, be, expected[k])], fluency, reference, side)
        if words:
            table[k] = (words, x)
    return table


def fit_words(rows: Sequence[Mapping[str, Any]], texts: Sequence[str], side: str,
              per_row: WordTable) -> tuple[cal.WordModel, dict[str, Any]]:
    """Fit the word model of one side on the training documents and tune its thresholds.

    Every word of a line is labelled with the share of its characters inside the side's gold
    error spans (``gold_spans``); the logistic model is weighted by characters. The thresholds
    are chosen on the word spans alone (``_choose``) among the pairs whose major spans are at
    least ``SpanModel.MAJOR_PRECISION + MAJOR_MARGIN`` precise.
    """
    train, test, _ = split(rows)
    names = cal.WORD_INPUTS[side]
    fit_rows = [k for k in train if k in per_row]
    x_tr = np.concatenate([per_row[k][1] for k in fit_rows])
    y_tr = np.concatenate([[float((_gold(rows[k], side)[s:e] > 0).mean())
                            for s, e in per_row[k][0]] for k in fit_rows])
    w_tr = np.concatenate([[float(e - s) for s, e in per_row[k][0]] for k in fit_rows])
    center = x_tr.mean(axis=0)
    scale = x_tr.std(axis=0)
    scale = np.where(scale < 1e-9, 1.0, scale)
    coef = cal.fit_logistic((x_tr - center) / scale, y_tr, w_tr, l2=1e-3)
    probe = cal.WordModel(side, names, tuple(map(float, center)), tuple(map(float, scale)),
                          tuple(coef[1:]), coef[0], 0.0, 0.0)
    # training words laid end to end: global offsets, and whether the gap to the next word of
    # the same line is blank (two flagged neighbours of one severity make one span)
    index = _CharIndex(rows, train, side)
    gs, ge, prob, blank = [], [], [], []
    for k in fit_rows:
        words, x = per_row[k]
        base, text = int(index.offset[k]), texts[k]
        p = probe.probabilities(x)
        for j, (s, e) in enumerate(words):
            gs.append(base + s)
            ge.append(base + e)
            prob.append(float(p[j]))
            nxt = words[j + 1][0] if j + 1 < len(words) else None
            blank.append(nxt is not None and not text[e:nxt].strip())
    a_s, a_e, a_p, a_b = map(np.asarray, (gs, ge, prob, blank))
    nxt_s = np.r_[a_s[1:], 0]
    nxt_p = np.r_[a_p[1:], 0.0]
    grid_keep = [round(v, 3) for v in np.arange(0.1, 0.85, 0.025)]
    grid_major = _major_grid(side, [round(v, 3) for v in np.arange(0.15, 0.9, 0.025)])
    points = []
    for keep in grid_keep:
        for major in grid_major:
            if major < keep:
                continue
            on, big = a_p >= keep, a_p >= major
            join = on & a_b & (nxt_p >= keep) & ((nxt_p >= major) == big)
            spans = [(int(s), int(e), 2 if b else 1) for s, e, b in zip(a_s[on], a_e[on], big[on])]
            spans += [(int(e), int(n), 2 if b else 1)
                      for e, n, b in zip(a_e[join], nxt_s[join], big[join])]
            points.append((index.figures(spans), keep, major))
    (f1, precision, recall, mp), keep, major = _choose(
        points, side, cal.SpanModel.MAJOR_PRECISION + MAJOR_MARGIN)
    figs: dict[str, Any] = {"train_f1_words_alone": f1, "train_precision_words_alone": precision,
                            "train_recall_words_alone": recall,
                            "train_major_precision_words_alone": mp,
                            "train_words": float(len(gs))}
    return dataclasses.replace(probe, keep=keep, major=major), figs


def word_spans(texts: Sequence[str], model: cal.WordModel, table: WordTable) -> Predicted:
    """Each line's word-model spans as findings (none where it does not apply)."""
    out: Predicted = []
    for k, text in enumerate(texts):
        words, x = table.get(k, ([], np.zeros((0, len(model.inputs)))))
        out.append([_word_finding(s, e, big, p, model.side)
                    for s, e, big, p in model.spans(text, words, model.probabilities(x))])
    return out


def fit_spans(rows: Sequence[Mapping[str, Any]], side: str, expected: Sequence[float],
              words: Predicted | None = None,
              active: Sequence[bool] | None = None) -> tuple[cal.SpanModel, dict[str, Any]]:
    """Fit the span model of one side on the training documents and tune its thresholds.

    Its targets are the side's gold (``gold_spans``). The thresholds are chosen by ``_choose``
    among the pairs whose major spans are at least ``SpanModel.MAJOR_PRECISION + MAJOR_MARGIN``
    precise; where no pair reaches that (the rule-based structure findings keep their severity
    and may hold it down), among the pairs within .02 of the best major precision reached, and
    the figures say so.
    """
    train, test, _ = split(rows)
    on = list(active) if active is not None else [False] * len(rows)
    feats, err, maj, weight = [], [], [], []
    keys = sorted({f"{ch}:{cat}" for k, r in enumerate(rows)
                   for _s, _e, ch, cat, _v, _c in r[f"findings_{side}"]
                   if ch in cal.SPAN_CHECKERS and not _replaced(side, ch, cat, on[k])})
    for k in train:
        row, gold = rows[k], _gold(rows[k], side)
        for s, t, checker, category, sev, conf in row[f"findings_{side}"]:
            if t <= s or checker not in cal.SPAN_CHECKERS or f"{checker}:{category}" not in keys:
                continue
            if _replaced(side, checker, category, on[k]):
                continue
            feats.append(cal.span_inputs(f"{checker}:{category}", keys, expected[k], conf,
                                         sev in ("major", "critical")))
            err.append(float((gold[s:t] > 0).mean()))
            maj.append(float((gold[s:t] == 2).mean()))
            weight.append(float(t - s))
    if feats:
        x = np.asarray(feats)
        w_err = cal.fit_logistic(x, np.asarray(err), np.asarray(weight))
        w_maj = cal.fit_logistic(x, np.asarray(maj), np.asarray(weight))
    else:  # NOTE: no statistical finding to weigh (the word model's spans alone)
        w_err = w_maj = (0.0,) * (len(keys) + 4)
    probe = cal.SpanModel(tuple(keys), w_err, w_maj, 0.0, 0.0)
    # every training finding once: (global start, end, fixed severity or None, p_err, p_major)
    index = _CharIndex(rows, train, side)
    fixed: list[tuple[int, int, int]] = []
    scored: list[tuple[int, int, float, float]] = []
    for k in train:
        base, length = int(index.offset[k]), int(rows[k]["length"])
        if words is not None:
            fixed.extend((base + f.start, base + f.end, 1 if f.severity is Severity.MINOR else 2)
                         for f in words[k])
        for s, t, checker, category, sev, conf in rows[k][f"findings_{side}"]:
            s, t = max(s, 0), min(t, length)
            if t <= s or _replaced(side, checker, category, on[k]):
                continue
            if checker in cal.SPAN_CHECKERS:
                pe, pm = probe.probabilities(checker, category, expected[k], conf,
                                             sev in ("major", "critical"))
                scored.append((base + s, base + t, pe, pm))
            else:
                fixed.append((base + s, base + t, 2 if sev in ("major", "critical") else 1))
    grid = [round(v, 3) for v in np.arange(0.0, 0.81, 0.025)]
    points: list[tuple[Point, float, float]] = []
    for keep in grid:
        kept = [(s, t, pm) for s, t, pe, pm in scored if pe >= keep]
        for major in _major_grid(side, grid):
            spans = fixed + [(s, t, 2 if pm >= major else 1) for s, t, pm in kept]
            points.append((index.figures(spans), keep, major))
    reached = max((p[0][3] for p in points if p[0][3] == p[0][3]), default=math.nan)
    floor = cal.SpanModel.MAJOR_PRECISION + MAJOR_MARGIN
    if not reached >= floor:
        floor = reached - 0.02
    _figs, keep, major = _choose(points, side, floor)
    model = cal.SpanModel(tuple(keys), w_err, w_maj, keep, major)
    pred = apply_span_model(rows, side, expected, model, words, active)
    before = apply_span_model(rows, side, expected, None)
    figs: dict[str, Any] = {f"train_{k}": v
                            for k, v in span_figures(rows, train, pred, side).items()}
    figs.update({f"held_out_{k}": v for k, v in span_figures(rows, test, pred, side).items()})
    figs.update({f"held_out_uncalibrated_{k}": v
                 for k, v in span_figures(rows, test, before, side).items()})
    figs["train_best_major_precision_reachable"] = reached
    return cal.SpanModel(model.groups, model.error, model.major_coef, model.keep, model.major,
                         figs), figs


def fit_side(rows: Sequence[Mapping[str, Any]], texts: Sequence[str], side: str,
             unit: cal.UnitModel) -> tuple[cal.WordModel, cal.SpanModel, tuple[Any, ...]]:
    """The word and span models of one side, and the held-out confidence calibration of the
    spans they make together (``span_bins``); each model's figures include the bins'."""
    expected = [unit.expected_penalty(r[side]) if cal.variant_for(r[side]) == f"lm-{side}"
                else 0.0 for r in rows]
    table = word_table(rows, texts, side, expected)
    active = [k in table for k in range(len(rows))]
    wm, wfigs = fit_words(rows, texts, side, table)
    ws = word_spans(texts, wm, table)
    _, test, _ = split(rows)
    wfigs.update({f"held_out_alone_{k}": v
                  for k, v in span_figures(rows, test, ws, side).items()})
    sm, sfigs = fit_spans(rows, side, expected, ws, active)
    bins = span_bins(rows, texts, test, apply_span_model(rows, side, expected, sm, ws, active),
                     side)
    for b in bins:
        if b.spans:
            sfigs[f"held_out_bin{b.low:.1f}_confidence"] = b.confidence
            sfigs[f"held_out_bin{b.low:.1f}_precision"] = b.precision
            sfigs[f"held_out_shown_from{b.low:.1f}_precision"] = b.shown_precision
    # NOTE: a figure with nothing to measure (no major span) is left out: NaN never equals itself
    sfigs = {k: v for k, v in sfigs.items() if v == v}
    sm = dataclasses.replace(sm, figures=sfigs)
    wfigs.update({k: v for k, v in sfigs.items() if not k.startswith("held_out_uncalibrated")})
    return dataclasses.replace(wm, figures={k: v for k, v in wfigs.items() if v == v}), sm, bins


def render_bins(side: str, bins: Sequence[Any]) -> str:
    """The held-out confidence calibration of one side's spans, as a small table."""
    gold = "every error" if side == "ref" else "fluency, style, non-translation errors"
    lines = [f"spans-{side}: held-out confidence vs precision (characters on {gold})",
             f"  {'confidence':11s} {'spans':>6s} {'mean':>6s} {'P':>6s} {'overlap':>8s} "
             f"{'shown':>6s} {'P shown':>8s}"]
    lines += [f"  {b.low:.1f}-{b.high:.1f}    {b.spans:6d} {b.confidence:6.3f} {b.precision:6.3f} "
              f"{b.overlap:8.3f} {b.shown_spans:6d} {b.shown_precision:8.3f}" for b in bins]
    return "\n".join(lines)


#: a document is "bad" for the gate when its segments average more penalty than one major error
BAD_DOC_MQM = 5.0


def gate_threshold(rows: Sequence[Mapping[str, Any]], model: cal.UnitModel, side: str
                   ) -> dict[str, float]:
    """The document score below which the gate should fail a document, from the training docs.

    A document here is one system's translation of one WMT document (about 13 segments); its
    score is mtqa's (the mean expected penalty of its lines mapped to 0-100), its label is bad
    when its human MQM averages more than ``BAD_DOC_MQM`` per segment. The threshold maximises
    balanced accuracy on the training documents; held-out figures are reported beside it.
    """
    train, test, _ = split(rows)
    by_doc: dict[tuple[str, str], list[int]] = {}
    for k, r in enumerate(rows):
        by_doc.setdefault((r["system"], r["doc_id"]), []).append(k)

    def table(idx: Sequence[int]) -> list[tuple[float, bool]]:
        chosen = set(idx)
        out = []
        for ks in by_doc.values():
            ks = [k for k in ks if k in chosen]
            if not ks:
                continue
            e = [model.expected_penalty(rows[k][side]) if cal.variant_for(rows[k][side])
                 == f"lm-{side}" else 0.0 for k in ks]
            gold = sum(float(rows[k]["mqm"]) for k in ks) / len(ks)
            out.append((cal.penalty_to_score(sum(e) / len(e)), gold > BAD_DOC_MQM))
        return out

    def rates(tab: Sequence[tuple[float, bool]], t: float) -> dict[str, float]:
        tp = sum(1 for s, bad in tab if bad and s < t)
        fp = sum(1 for s, bad in tab if not bad and s < t)
        fn = sum(1 for s, bad in tab if bad and s >= t)
        tn = sum(1 for s, bad in tab if not bad and s >= t)
        recall = tp / max(tp + fn, 1)
        specificity = tn / max(tn + fp, 1)
        return {"balanced_accuracy": (recall + specificity) / 2,
                "precision": tp / max(tp + fp, 1), "recall": recall,
                "pass_rate_good": specificity, "documents": float(len(tab))}

    tab_train, tab_test = table(train), table(test)
    best = max((rates(tab_train, t)["balanced_accuracy"], t)
               for t in np.arange(40.0, 90.01, 0.5))
    t = float(best[1])
    figs = {"min_score": t, "bad_doc_mqm_per_segment": BAD_DOC_MQM}
    figs.update({f"train_{k}": v for k, v in rates(tab_train, t).items()})
    figs.update({f"held_out_{k}": v for k, v in rates(tab_test, t).items()})
    return figs


def features_model(head: dict[str, Any], path: Path, lm_model: str | None) -> str:
    """The language model a feature file was read with (its fluency signature's), refusing a
    file read with another model than ``--lm-model`` names: the default feature path is shared
    by every model, and a calibration fitted on one model's readings and written as another's
    would be refused by the pipeline (or, worse, applied)."""
    identity = cal.lm_identity(str(dict(head.get("signatures", {})).get("fluency", "")))
    if identity is None:
        sys.exit(f"calibrate: {path} names no language model in its signatures; rebuild it")
    name = identity.split("@", 1)[0]
    wanted = lm_model or DEFAULT_LM
    if name != wanted and Path(wanted).name != Path(name).name:
        sys.exit(f"calibrate: {path} was read with {name}, not {wanted}: pass --lm-model {name}, "
                 "or --rebuild (or another --features file) to read with this one")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--features", type=Path, default=Path("/tmp/mtqa_mqm_features.jsonl"))
    parser.add_argument("--lm-cache", type=Path, default=None)
    parser.add_argument("--rebuild", action="store_true", help="Recompute the feature file.")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="The LM's and the sentence encoder's precision for the feature "
                             "pass (auto: bf16 where the CPU has it natively, as mtqa's "
                             "default).")
    parser.add_argument("--lm-model", default=None,
                        help="the language model to read with (default: the default model, "
                             "Gemma-3-270M; SmolLM2-135M-Instruct: the first default)")
    parser.add_argument("--l2", type=float, default=10.0)
    parser.add_argument("--cap", type=float, default=25.0,
                        help="MQM penalties above this are fitted as this (non-translation).")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the shipped file of the model: "
                             "models/calibration.json for the default model, "
                             "models/calibration-smollm2-135m.json for SmolLM2)")
    parser.add_argument("--dry-run", action="store_true", help="Fit and print; write nothing.")
    parser.add_argument("--paragraph-features", type=Path, default=None,
                        help="Paragraph units' feature file (issue 22): built when missing, "
                             "with --paragraph-lm-cache for its LM reading.")
    parser.add_argument("--paragraph-lm-cache", type=Path, default=None)
    parser.add_argument("--build-only", action="store_true",
                        help="Build the missing feature files and stop.")
    parser.add_argument("--spans-only", type=Path, default=None, metavar="CALIBRATION",
                        help="Keep the unit models (and their figures) of this calibration file "
                             "and re-fit only the word and span models (seconds, not minutes).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.rebuild or not args.features.is_file():
        build_features(args.data, args.features, args.lm_cache, args.limit, args.precision,
                       args.lm_model)
    if args.paragraph_features is not None and (args.rebuild or
                                                not args.paragraph_features.is_file()):
        build_paragraph_features(args.data, args.paragraph_features, args.paragraph_lm_cache,
                                 args.precision, None if args.limit is None else 2,
                                 args.lm_model)
    if args.build_only:
        return
    head, rows = read_features(args.features)
    read_with = features_model(head, args.features, args.lm_model)
    records = load_mqm(Path(head["data"]))
    texts = [records[int(r["line"])].hypothesis for r in rows]
    if args.spans_only is not None:
        kept = cal.load_calibration(args.spans_only)
        models = dict(kept.models)
        info = {k: v for k, v in kept.provenance.items()
                if k in ("held_out_docs", "train_lines", "held_out_lines")}
        info["figures"] = {k: v for k, v in dict(kept.provenance.get("figures", {})).items()
                           if k in models}
        info["unit_models_from"] = f"{args.spans_only.name} ({kept.fingerprint()})"
    else:
        paragraphs = None
        if args.paragraph_features is not None:
            _phead, paragraphs = read_features(args.paragraph_features)
        models, info = fit_all(head, rows, args.l2, args.cap, paragraphs, records)
    spans: dict[str, cal.SpanModel] = {}
    word_models: dict[str, cal.WordModel] = {}
    for side in ("free", "ref"):
        unit = models[f"lm-{side}"]
        word_models[side], spans[side], bins = fit_side(rows, texts, side, unit)
        info["figures"][f"spans-{side}"] = dict(spans[side].figures)
        info["figures"][f"words-{side}"] = dict(word_models[side].figures)
        info["figures"][f"gate-{side}"] = gate_threshold(rows, unit, side)
        print(render_bins(side, bins))
    for name, figs in info["figures"].items():
        print(f"{name:10s} " + " ".join(f"{k}={v:.3f}" for k, v in figs.items()))
    if args.dry_run:
        return
    calib = cal.Calibration(
        # NOTE: the model in the version, so a report's ``calibration:VERSION`` says which
        version=f"{time.strftime('%Y-%m-%d')}-{read_with}", models=models,
        spans=spans, words=word_models,
        provenance={"data": Path(head["data"]).name, "data_sha256": head["sha256"],
                    "mtqa_version": __version__, "code": git_version(),
                    "signatures": head["signatures"], "fit": "Poisson regression, log link, "
                    f"L2 {args.l2:g}, MQM capped at {args.cap:g}, weights of finding counts >= 0, "
                    "rule-based findings at fixed MQM weights (prior)",
                    "split": "by document: first 41 train, last 10 held out",
                    **info, "refit": "python scripts/calibrate.py"},
    )
    if args.out is None:
        if read_with not in SHIPPED_LMS:
            sys.exit(f"calibrate: the features were read with {read_with}, not a shipped model: "
                     "name the calibration file to write with --out")
        args.out = ROOT / "models" / Path(cal.shipped_calibration(read_with)).name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(calib.to_dict(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
