"""Reference checker in parallel mode against WMT21 zh-en MQM judgements.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reference_mqm.py [--limit N] [--threads T]``

Each line of ``../shared/data/mqm_2021_zhen.jsonl`` becomes a one-line ``Document`` (``mt`` the
system's hypothesis, ``ref`` the ref-A translation) checked with ``mode="parallel"``; ``ref-A``'s
own lines are left out. Prints, beside sentence chrF computed with sacreBLEU directly:

* segment level: pooled Pearson and Kendall tau-b and within-segment Kendall (systems ranked on
  each source segment, averaged) of ``doc_score`` (the combined reference score) against
  ``-mqm``; for all systems but ref-A, for MT systems only (ref-B out too, as in the data
  README's baselines), and for the held-out last ten documents (the combination was chosen on the
  other 41);
* span level: character precision/recall/F1 of the findings against gold target spans (all
  categories, then Accuracy/* only), a severity mismatch counting half, as in WMT23 QE task 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, pearsonr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sacrebleu.metrics.chrf import CHRF  # noqa: E402

from mtqa.checkers.reference import ReferenceChecker  # noqa: E402
from mtqa.evaluate import within_segment_kendall  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.types import CheckResult, Document, Severity  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"
Row = dict[str, object]


def within_segment(rows: Sequence[Row], score: Sequence[float]) -> float:
    y = [-float(r["mqm"]) for r in rows]  # type: ignore[arg-type]
    return within_segment_kendall(score, y, [str(r["seg_id"]) for r in rows])


def correlations(rows: Sequence[Row], score: Sequence[float]) -> str:
    y = [-float(r["mqm"]) for r in rows]  # type: ignore[arg-type]
    return (f"{pearsonr(score, y).statistic:8.3f} {kendalltau(score, y).statistic:8.3f} "
            f"{within_segment(rows, score):8.3f}")


def _char_labels(n: int, spans: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Per character: -1 unflagged, else the highest severity rank flagged there."""
    out = np.full(n, -1, dtype=np.int8)
    for s, e, rank in spans:
        out[s:e] = np.maximum(out[s:e], rank)
    return out


def span_prf(pred: Sequence[np.ndarray], gold: Sequence[np.ndarray], ignore_severity: bool = False) -> tuple[float, float, float]:
    credit = npred = ngold = 0.0
    for p, g in zip(pred, gold):
        both = (p >= 0) & (g >= 0)
        credit += float(both.sum()) if ignore_severity else float((both & (p == g)).sum() + 0.5 * (both & (p != g)).sum())
        npred += float((p >= 0).sum())
        ngold += float((g >= 0).sum())
    prec = credit / npred if npred else 0.0
    rec = credit / ngold if ngold else 0.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


GOLD_RANK = {"minor": 0, "major": 1, "critical": 2}


def gold_spans(row: Row, keep: Callable[[str], bool]) -> list[tuple[int, int, int]]:
    out = []
    for e in row["errors"]:  # type: ignore[attr-defined]
        if e["side"] == "target" and e["end"] > e["start"] and keep(e["category"]):
            out.append((e["start"], e["end"], GOLD_RANK.get(e["severity"].lower(), 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="score only the first N lines (0: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--chunk", type=int, default=500, help="documents per check() call")
    ap.add_argument("--data", type=Path, default=DATA, help="the WMT21 zh-en MQM file (default: ../shared/data/ beside the repository)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows: list[Row] = [json.loads(line) for line in args.data.open(encoding="utf-8")]
    doc_order = list(dict.fromkeys(str(r["doc_id"]) for r in rows))
    held_out = set(doc_order[-10:])
    rows = [r for r in rows if r["system"] != "ref-A"]
    if args.limit:
        rows = rows[: args.limit]
    print(f"{len(rows)} lines (ref-A left out), {len({r['seg_id'] for r in rows})} segments, "
          f"{len({r['system'] for r in rows})} systems; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    t0 = time.perf_counter()
    chrf = CHRF()
    chrf_direct = [chrf.sentence_score(str(r["hypothesis"]), [str(r["reference"])]).score for r in rows]
    t_chrf = time.perf_counter() - t0

    t0 = time.perf_counter()
    checker = ReferenceChecker(mode="parallel")
    t_load = time.perf_counter() - t0
    results: list[CheckResult] = []
    t0 = time.perf_counter()
    for k in range(0, len(rows), args.chunk):
        chunk = rows[k : k + args.chunk]
        docs = [segment(Document(id=str(k + n), mt=str(r["hypothesis"]), ref=(str(r["reference"]),)))
                for n, r in enumerate(chunk)]
        results.extend(checker.check(docs))
        print(f"  {len(results)}/{len(rows)} lines, {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    t_check = time.perf_counter() - t0
    print(f"model load {t_load:.1f}s; checked {len(rows)} lines in {t_check:.0f}s "
          f"({1000 * t_check / len(rows):.1f} ms/line, TER is most of it); direct chrF {t_chrf:.1f}s")
    print(f"signature: {results[0].signature}")

    combined = [float(r.doc_score) if r.doc_score is not None else 0.0 for r in results]
    feat = {name: [float(r.features.get(name, 0.0)) for r in results]
            for name in ("chrf", "bleu", "ter", "mean_similarity", "fact_mismatches")}
    max_dev = max(abs(a - b) for a, b in zip(feat["chrf"], chrf_direct))
    print(f"checker chrF vs sacreBLEU sentence chrF: max |difference| {max_dev:.2e}")

    scores = {
        "sentence chrF (sacreBLEU direct)": chrf_direct,
        "reference doc_score (combined)": combined,
        "  component: sentence BLEU": feat["bleu"],
        "  component: -TER": [-x for x in feat["ter"]],
        "  component: MiniLM cosine": feat["mean_similarity"],
        "  -fact mismatches": [-x for x in feat["fact_mismatches"]],
    }
    subsets = {
        "all systems but ref-A": list(range(len(rows))),
        "MT only (ref-B out too)": [k for k, r in enumerate(rows) if r["system"] != "ref-B"],
        "MT only, held-out last 10 docs": [k for k, r in enumerate(rows)
                                           if r["system"] != "ref-B" and r["doc_id"] in held_out],
        "MT only, first 41 docs (fitting)": [k for k, r in enumerate(rows)
                                             if r["system"] != "ref-B" and r["doc_id"] not in held_out],
    }
    for sub, idx in subsets.items():
        if len(idx) < 10:
            continue
        sub_rows = [rows[k] for k in idx]
        print(f"\n== segment level, {sub} ({len(idx)} lines)")
        print(f"{'score':36s} {'Pearson':>8s} {'Kendall':>8s} {'within':>8s}")
        for name, s in scores.items():
            print(f"{name:36s} {correlations(sub_rows, [s[k] for k in idx])}")

    fact_lines = [k for k, r in enumerate(results) if r.features.get("fact_mismatches", 0) > 0]
    mqm = np.array([float(r["mqm"]) for r in rows])  # type: ignore[arg-type]
    if fact_lines:
        rest = np.setdiff1d(np.arange(len(rows)), fact_lines)
        print(f"\nlines with a fact mismatch: {len(fact_lines)} ({len(fact_lines) / len(rows):.1%}); "
              f"mean MQM {mqm[fact_lines].mean():.2f} vs {mqm[rest].mean():.2f} without")

    print("\n== span level (characters; severity mismatch counts half)")
    sev_rank = {Severity.MINOR: 0, Severity.MAJOR: 1, Severity.CRITICAL: 2}
    n = [len(str(r["hypothesis"])) for r in rows]
    preds = {
        "all findings": lambda f: True,
        "fact-mismatch only": lambda f: f.category == "fact-mismatch",
        "reference-mismatch only": lambda f: f.category == "reference-mismatch",
    }
    golds = {"all target spans": lambda c: True, "Accuracy/* spans only": lambda c: c.startswith("Accuracy")}
    for gname, keep in golds.items():
        gold = [_char_labels(n[k], gold_spans(r, keep)) for k, r in enumerate(rows)]
        share = sum(int((g >= 0).sum()) for g in gold) / sum(n)
        print(f"gold: {gname} ({share:.1%} of characters)")
        for pname, sel in preds.items():
            pred = [_char_labels(n[k], [(f.start, f.end, sev_rank[f.severity]) for f in res.findings if sel(f)])
                    for k, res in enumerate(results)]
            p, r, f1 = span_prf(pred, gold)
            f1_any = span_prf(pred, gold, ignore_severity=True)[2]
            share_p = sum(int((x >= 0).sum()) for x in pred) / sum(n)
            print(f"  {pname:26s} P {p:.3f} R {r:.3f} F1 {f1:.3f}   F1 ignoring severity {f1_any:.3f}"
                  f"   (flags {share_p:.1%} of characters)")
        everything = [np.zeros(k, dtype=np.int8) for k in n]
        p, r, f1 = span_prf(everything, gold, ignore_severity=True)
        print(f"  {'floor: flag everything':26s} P {p:.3f} R {r:.3f} F1 {f1:.3f}   (severity ignored)")


if __name__ == "__main__":
    main()
