"""LM speed of the fluency checker on this machine, per backend and precision, and cold start.

    python benchmarks/lm_speed.py [--threads 2] [--docs 16]
        [--runs native:fp32,transformers:fp32,native:bf16,native:int8]

Printed for each backend (mtqa's own Llama forward, or transformers) and precision: tokens/s
of batch scoring (real news text: WMT21 zh-en hypotheses joined into ~500-token documents, plus
the seed pair), the same run's fp32 GEMM FLOP/s measured with ``torch.matmul`` (2048^3) right
before and after, efficiency = tokens/s x 2 x parameters / GEMM FLOP/s, whether batch size 1
and the default give the same spans, and whether the spans change against the first run
(character agreement on the documents and the seed pair). Then the cold start: a fresh
``python -c`` that loads the cached model (default backend) and scores the ABC seed, timed from
process start to its report, with its peak RSS (``resource.getrusage``, run first). Other
processes on the machine depress these figures: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtqa.checkers.fluency import FluencyChecker  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.types import CheckResult, Document, SegmentedDocument  # noqa: E402

DATA = Path("/work/shared/data/mqm_2021_zhen.jsonl")
SEEDS = ("000_df5d74dac48ad764.txt", "002_98c53f21e16ae677.txt")

COLD = """
import time, sys
t0 = time.perf_counter()
from pathlib import Path
from mtqa.checkers.fluency import FluencyChecker
from mtqa.segment import segment
from mtqa.types import Document
cache = None if sys.argv[1] == "-" else Path(sys.argv[1])
checker = FluencyChecker(cache_dir=cache, threads=int(sys.argv[2]))
t1 = time.perf_counter()
doc = segment(Document("abc", Path("seeds/000_df5d74dac48ad764.txt").read_text(encoding="utf-8")))
res = checker.check([doc])[0]
t2 = time.perf_counter()
# NOTE: VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(f"REPORT fluency={res.doc_score:.1f} spans={len(res.findings)} load={t1 - t0:.2f}s "
      f"score={t2 - t1:.2f}s peak_rss={int(hwm) / 1024:.0f}MB")
"""


def news_docs(n_docs: int) -> list[SegmentedDocument]:
    """~500-token documents of real MT news text: one system's consecutive segments."""
    by_key: dict[tuple[str, str], list[str]] = {}
    with DATA.open(encoding="utf-8") as fh:
        for raw in fh:
            r = json.loads(raw)
            by_key.setdefault((r["doc_id"], r["system"]), []).append(r["hypothesis"])
    docs: list[SegmentedDocument] = []
    for (doc_id, system), segs in by_key.items():
        text: list[str] = []
        k = 0
        while k < len(segs) and sum(len(t) for t in text) < 2200:
            text.append(segs[k])
            k += 1
        docs.append(segment(Document(f"{doc_id}:{system}", "\n".join(text))))
        if len(docs) == n_docs:
            break
    for name in SEEDS:
        docs.append(segment(Document(name, (ROOT / "seeds" / name).read_text(encoding="utf-8"))))
    return docs


def gemm_flops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t))
    return best


def flagged(doc: SegmentedDocument, res: CheckResult) -> np.ndarray:
    out = np.zeros(len(doc.doc.mt), dtype=bool)
    for f in res.findings:
        out[f.start : f.end] = True
    return out


def agreement(docs: list[SegmentedDocument], a: list[CheckResult], b: list[CheckResult]) -> float:
    """Character-level Jaccard of two runs' flagged characters over all documents."""
    inter = union = 0
    for d, x, y in zip(docs, a, b):
        fx, fy = flagged(d, x), flagged(d, y)
        inter += int((fx & fy).sum())
        union += int((fx | fy).sum())
    return inter / union if union else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=FluencyChecker.BATCH_SIZE)
    ap.add_argument("--runs", default="native:fp32,transformers:fp32,native:bf16,native:int8",
                    help="backend:precision, comma-separated; the first is the reference")
    ap.add_argument("--cache-dir", type=Path)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; threads {args.threads}")
    cache = str(args.cache_dir) if args.cache_dir else "-"
    for run in (1, 2):
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", COLD, cache, str(args.threads)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        report, wall = "", 0.0
        assert proc.stdout is not None
        for out_line in proc.stdout:
            if out_line.startswith("REPORT"):
                wall, report = time.perf_counter() - t, out_line.strip()
                break
        _, err = proc.communicate()
        exited = time.perf_counter() - t
        print(f"cold start {run}: {wall:.2f}s from process start to report ({exited:.2f}s to "
              f"exit); {report[7:] if report else err[-500:]}", flush=True)
    # NOTE: measured before this process loads torch, so the children's ru_maxrss (which a
    # child inherits from its parent across fork/exec) is the cold-start process's own peak.
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the cold-start process (getrusage): {child:.0f} MB")
    docs = news_docs(args.docs)
    results: dict[str, list[CheckResult]] = {}
    params = 0
    first = ""
    for run in args.runs.split(","):
        backend, prec = run.split(":")
        first = first or run
        checker = FluencyChecker(cache_dir=args.cache_dir, threads=args.threads, precision=prec,
                                 batch_size=args.batch_size, backend=backend)
        model, _ = checker._require()
        # NOTE: int8 modules hide their weights from parameters(); count the unquantised model
        params = params or sum(p.numel() for p in model.parameters())
        checker.check(docs[:1])  # warm-up
        # NOTE: GEMM measured right before and after, since other load on the machine varies
        before = gemm_flops(args.threads)
        t = time.perf_counter()
        words = checker.score_words(docs)
        dt = time.perf_counter() - t
        after = gemm_flops(args.threads)
        flops = (before + after) / 2
        results[run] = [checker.analyse(d, w) for d, w in zip(docs, words)]
        tokens = sum(len(w.token_surprisal) for w in words)
        tps = tokens / dt
        eff = tps * 2 * params / flops
        line = (f"{run:18s} {tokens} tokens in {dt:.1f}s: {tps:.0f} tokens/s; fp32 GEMM "
                f"{before / 1e9:.0f}/{after / 1e9:.0f} GFLOP/s before/after; efficiency {eff:.2f}")
        if run != first:
            base = results[first]
            seeds = [(d, x, y) for d, x, y in zip(docs, base, results[run]) if d.doc.id in SEEDS]
            same = all([(f.start, f.end, f.severity) for f in x.findings]
                       == [(f.start, f.end, f.severity) for f in y.findings] for _, x, y in seeds)
            dscore = max(abs((x.doc_score or 0) - (y.doc_score or 0)) for x, y in zip(base, results[run]))
            line += (f"; flagged-character Jaccard vs {first} {agreement(docs, base, results[run]):.3f}, "
                     f"seed spans {'identical' if same else 'DIFFER'}, max |doc score diff| {dscore:.2f}")
        # batching must not change results (STYLE rule 10): the seeds and 4 documents one by one
        sub = [k for k, d in enumerate(docs) if d.doc.id in SEEDS or k < 4]
        model, tokenizer = checker._require()
        single = FluencyChecker(model=model, tokenizer=tokenizer, precision=prec, batch_size=1)
        ones = single.check([docs[k] for k in sub])
        moved = sum([(f.start, f.end, f.severity) for f in results[run][k].findings]
                    != [(f.start, f.end, f.severity) for f in r.findings] for k, r in zip(sub, ones))
        line += f"; batch 1 vs {args.batch_size}: spans differ in {moved}/{len(sub)} documents"
        print(line, flush=True)
        checker.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (each run's model loaded in turn): {rss:.0f} MB")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
