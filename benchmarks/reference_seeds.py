"""Reference checker on the seed pair: alignment quality, coverage, facts, time.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reference_seeds.py [--limit N] [--threads T]``

1. Alignment precision/recall of every linker and score against the hand alignment in
   ``fixtures/seed_alignment.json`` (precision counts sure or possible links, recall sure links),
   at the checker's threshold and at each linker's best threshold (an optimistic figure: the
   annotation has 15 sure links, so the best threshold is fitted on the data it is scored on).
2. Two checks on WMT21 zh-en documents (``../shared/data/mqm_2021_zhen.jsonl``) that the seed
   pair cannot give: a translation aligned with its shuffled reference (every row has exactly
   one true partner) and a translation aligned with another story's reference (every link is
   wrong). ``--limit`` caps the number of documents.
3. Coverage and fact mismatches that ``ReferenceChecker`` reports on the seed pair.
4. Warm time to align and score the two articles (923 and 583 words).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtqa import align as A  # noqa: E402
from mtqa.checkers.reference import ReferenceChecker  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.types import Document, Kind, SegmentedDocument  # noqa: E402

MQM = ROOT.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"


def load_gold(path: Path, mt: SegmentedDocument, ref: SegmentedDocument) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Sure and sure-or-possible links, sentences found by their text."""
    data = json.loads(path.read_text(encoding="utf-8"))
    mt_idx = {mt.text(s): i for i, s in enumerate(mt.sentences)}
    ref_idx = {ref.text(s): j for j, s in enumerate(ref.sentences)}
    sure, possible = set(), set()
    for link in data["links"]:
        i = mt_idx[link["mt_text"]]
        for r in link["sure"]:
            sure.add((i, ref_idx[r["ref_text"]]))
        for r in link["possible"]:
            possible.add((i, ref_idx[r["ref_text"]]))
    return sure, sure | possible


def prf(pred: set[tuple[int, int]], sure: set[tuple[int, int]], possible: set[tuple[int, int]]) -> tuple[float, float, float]:
    p = len(pred & possible) / len(pred) if pred else 0.0
    r = len(pred & sure) / len(sure) if sure else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def score_variants(cos: A.Matrix, lex: A.Matrix) -> dict[str, A.Matrix]:
    return {
        "cosine": cos,
        "csls(cosine)": A.csls(cos),
        "tf-idf": lex,
        "z(cos)+z(tfidf)": A.relative_score(cos, lex),
    }


def seed_alignment(checker: ReferenceChecker, mt: SegmentedDocument, ref: SegmentedDocument) -> None:
    sure, possible = load_gold(ROOT / "fixtures" / "seed_alignment.json", mt, ref)
    mb = [i for i, s in enumerate(mt.sentences) if s.kind is Kind.BODY]
    rb = [j for j, s in enumerate(ref.sentences) if s.kind is Kind.BODY]
    assert checker._encoder is not None
    emb = checker._embed([mt.text(mt.sentences[i]) for i in mb] + [ref.text(ref.sentences[j]) for j in rb])
    cos = (emb[: len(mb)] @ emb[len(mb):].T).astype(np.float64)
    lex = A.lexical_similarity([mt.text(mt.sentences[i]) for i in mb], [ref.text(ref.sentences[j]) for j in rb])
    print(f"== seed alignment: {len(mb)} x {len(rb)} body sentences, {len(sure)} sure + "
          f"{len(possible) - len(sure)} possible links")
    print(f"{'score':18s} {'linker':12s} {'best t':>7s} {'P':>5s} {'R':>5s} {'F1':>5s}   (threshold fitted here)")
    for sname, m in score_variants(cos, lex).items():
        grid = np.unique(np.round(np.quantile(m, np.linspace(0.5, 1.0, 101)), 3))
        for lname, fn in A.LINKERS.items():
            best = max(((prf({(mb[a], rb[b]) for a, b in fn(m, float(t))}, sure, possible), float(t)) for t in grid),
                       key=lambda x: (x[0][2], x[0][0]))
            (p, r, f), t = best
            print(f"{sname:18s} {lname:12s} {t:7.3f} {p:5.2f} {r:5.2f} {f:5.2f}")
    print("\nthe checker's align(): union on z(cos)+z(tfidf) kept above the floor, plus union on "
          f"(cos+tfidf)/2 >= {A.ABSOLUTE}:")
    for t in (1.2, 1.4, checker.threshold, 1.8, 2.0):
        pred = {(mb[a], rb[b]) for a, b in A.align(cos, lex, t, checker.floor)}
        p, r, f = prf(pred, sure, possible)
        mark = "  <- default" if t == checker.threshold else ""
        print(f"  threshold {t:.1f} floor {checker.floor:.2f}: links {len(pred):2d} P {p:.2f} R {r:.2f} F1 {f:.2f}{mark}")
    gold_mt = {i for i, _ in sure}
    gold_ref = {j for _, j in sure}
    print(f"gold coverage (sure links): mt {len(gold_mt) / len(mb):.2f}, ref {len(gold_ref) / len(rb):.2f}; "
          f"(sure or possible): mt {len({i for i, _ in possible}) / len(mb):.2f}, "
          f"ref {len({j for _, j in possible}) / len(rb):.2f}")


def mqm_checks(checker: ReferenceChecker, limit: int) -> None:
    rows = [json.loads(line) for line in MQM.open(encoding="utf-8")]
    docs: dict[str, dict[int, tuple[str, str]]] = collections.defaultdict(dict)
    for r in rows:
        if r["system"] == "Facebook-AI":
            docs[r["doc_id"]][r["doc_seg_id"]] = (r["hypothesis"], r["reference"])
    ids = [d for d in dict.fromkeys(r["doc_id"] for r in rows) if len(docs[d]) >= 3][:limit]
    texts: dict[str, int] = {}
    for d in ids:
        for h, ref in docs[d].values():
            texts.setdefault(h, len(texts))
            texts.setdefault(ref, len(texts))
    t0 = time.perf_counter()
    emb = checker._embed(list(texts))
    print(f"\n== WMT21 zh-en checks: {len(ids)} documents (Facebook-AI output vs ref-A), "
          f"{len(texts)} sentences embedded in {time.perf_counter() - t0:.1f}s")
    rng = random.Random(0)
    linkers = {"align() default": None, "union z t=1.6 (no floor)": "union",
               "mutual-best z t=1.6": "mutual-best", "hungarian z t=1.6": "hungarian",
               "monotone-dp z t=1.6": "monotone-dp", "union abs>=0.4": "abs"}
    tally = {k: [0, 0, 0, 0, 0] for k in linkers}  # tp, pred, gold, unrelated links, mt sentences
    for k, d in enumerate(ids):
        segs = sorted(docs[d])
        hyp = [docs[d][s][0] for s in segs]
        perm = list(range(len(segs)))
        rng.shuffle(perm)
        ref = [docs[d][segs[p]][1] for p in perm]
        other = ids[(k + 1) % len(ids)]
        ref2 = [docs[other][s][1] for s in sorted(docs[other])]
        gold = {(i, perm.index(i)) for i in range(len(segs))}
        for refs, related in ((ref, True), (ref2, False)):
            cos = (emb[[texts[h] for h in hyp]] @ emb[[texts[r] for r in refs]].T).astype(np.float64)
            lex = A.lexical_similarity(hyp, refs)
            for name, how in linkers.items():
                if how is None:
                    pred = set(A.align(cos, lex, checker.threshold, checker.floor))
                elif how == "abs":
                    pred = set(A.link_union(A.absolute_score(cos, lex), 0.4))
                else:
                    pred = set(A.LINKERS[how](A.relative_score(cos, lex), checker.threshold))
                if related:
                    tally[name][0] += len(pred & gold)
                    tally[name][1] += len(pred)
                    tally[name][2] += len(gold)
                else:
                    tally[name][3] += len(pred)
                    tally[name][4] += len(hyp)
    print(f"{'linker':28s} {'shuffled P':>10s} {'R':>5s}   {'unrelated links per sentence':>28s}")
    for name, (tp, npred, ngold, fl, nmt) in tally.items():
        print(f"{name:28s} {tp / max(npred, 1):10.3f} {tp / max(ngold, 1):5.3f}   {fl / max(nmt, 1):28.3f}")


def checker_figures(checker: ReferenceChecker, sd: SegmentedDocument, runs: int) -> None:
    result = checker.check([sd])[0]
    ref = result.reference
    assert ref is not None
    print(f"\n== ReferenceChecker on the seed pair: mode {ref.mode}")
    print(f"links {len(ref.alignment)}, mt coverage {ref.mt_coverage:.2f}, ref coverage {ref.ref_coverage:.2f}, "
          f"unsupported {len(ref.unsupported)}, missed {len(ref.missed)}")
    print("corpus metrics on aligned pairs: " + ", ".join(f"{m.name} {m.score:.1f}" for m in ref.metrics))
    print(f"mean similarity {result.features['mean_similarity']:.3f}")
    facts = [f for f in result.findings if f.category == "fact-mismatch"]
    diffs = [f for f in result.findings if f.category == "reference-mismatch"]
    print(f"fact mismatches: {len(facts)}; reference-mismatch (diff) findings: {len(diffs)} covering "
          f"{sum(f.end - f.start for f in diffs)} of {len(sd.doc.mt)} characters")
    for f in facts:
        print(f"  [{f.rule}] {sd.doc.mt[f.start:f.end]!r}: {f.message}")
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        checker.check([sd])
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    enc_t = []
    texts = [sd.text(s) for s in sd.body] + [
        s for s in (segment(Document(id="r", mt=sd.doc.ref[0])).text(x)
                    for x in segment(Document(id="r", mt=sd.doc.ref[0])).body)]
    assert checker._encoder is not None
    for _ in range(runs):
        t = time.perf_counter()
        checker._encoder.encode(texts)
        enc_t.append(time.perf_counter() - t)
    print(f"warm check of the pair ({len(sd.doc.mt.split())} + {len(sd.doc.ref[0].split())} words): "
          f"median wall {statistics.median(wall):.3f}s (min {min(wall):.3f}), median CPU {statistics.median(cpu):.3f}s; "
          f"of which embedding {len(texts)} body sentences: median {statistics.median(enc_t):.3f}s "
          f"[{runs} runs, torch threads {_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs]")


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def main() -> None:
    global MQM  # noqa: PLW0603 - the file the readers below open
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=51, help="WMT21 documents for the shuffled/unrelated checks (0: skip)")
    ap.add_argument("--runs", type=int, default=5, help="timing runs")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data", type=Path, default=MQM, help="the WMT21 zh-en MQM file (default: ../shared/data/ beside the repository)")
    args = ap.parse_args()
    MQM = args.data
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    checker = ReferenceChecker()
    print(f"model load {time.perf_counter() - t:.1f}s; {checker.signature}")
    mt_text = (ROOT / "seeds" / "000_df5d74dac48ad764.txt").read_text(encoding="utf-8")
    ref_text = (ROOT / "seeds" / "002_98c53f21e16ae677.txt").read_text(encoding="utf-8")
    mt = segment(Document(id="000", mt=mt_text, ref=(ref_text,)))
    ref = segment(Document(id="002", mt=ref_text))
    seed_alignment(checker, mt, ref)
    if args.limit:
        mqm_checks(checker, args.limit)
    checker_figures(checker, mt, args.runs)


if __name__ == "__main__":
    main()
