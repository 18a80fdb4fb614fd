"""LM speed of the fluency checker on this machine, per backend and precision, and cold start.

    python benchmarks/lm_speed.py [--threads 2] [--docs 16]
        [--runs native:fp32,transformers:fp32,native:bf16,native:int8] [--references 32]

Printed for each backend (mtqa's own Llama forward, or transformers) and precision: tokens/s
of batch scoring (real news text: WMT21 zh-en hypotheses joined into ~500-token documents, plus
the seed pair), the same run's fp32 GEMM FLOP/s measured with ``torch.matmul`` (2048^3) right
before and after, efficiency = tokens/s x 2 x parameters / GEMM FLOP/s, whether batch size 1
and the default give the same spans, and whether the spans change against the first run
(character agreement on the documents and the seed pair). Then the cold start: a fresh
``python -c`` that loads the cached model (default backend) and scores the ABC seed, timed from
process start to its report, with its peak RSS (``resource.getrusage``, run first). Then the
reading the reference checker adds (native fp32): the MQM translations of ``--references``
references read plainly and after their references (``score_continuations``: each reference
read once, the translations of all of them in shared passes), as tokens/s and the ratio of the
two times; and the vocabulary projection alone, blocked (``mtqa.surprisal.HEAD_BLOCK``) against
writing out whole rows of logits, on the same hidden states, interleaved over 5 rounds. Other
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

DATA = ROOT.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"  # ../shared/data from the repository root, as CI lays it out
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


def continuations(n_refs: int, threads: int, cache_dir: Path | None) -> None:
    """Plain reading vs reading after the reference, and the blocked vocabulary projection."""
    import torch

    from mtqa.models import load_lm
    from mtqa.surprisal import score_continuations, score_sequences, surprisal

    torch.set_num_threads(threads)
    lm = load_lm(cache_dir=cache_dir)
    pairs: dict[tuple[str, str], None] = {}
    refs: set[str] = set()
    with DATA.open(encoding="utf-8") as fh:
        for raw in fh:
            r = json.loads(raw)
            if len(refs) < n_refs or r["reference"] in refs:
                refs.add(r["reference"])
                pairs[(r["reference"].strip(), r["hypothesis"].strip())] = None
    enc = lm.tokenizer.encode_batch([h for _, h in pairs] + [f + "\n" for f in refs],
                                    add_special_tokens=False)
    hyp_ids = [e.ids for e in enc[: len(pairs)]]
    ref_ids = {f: e.ids for f, e in zip(refs, enc[len(pairs) :])}
    plain = [([lm.prefix_id, *ids], 1) for ids in hyp_ids]
    after = [([lm.prefix_id, *ref_ids[f]], ids) for (f, _), ids in zip(pairs, hyp_ids)]
    tokens = sum(len(ids) for ids in hyp_ids)
    t = time.perf_counter()
    score_sequences(lm.model, plain, max_rows=32, max_tokens=2048)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    score_continuations(lm.model, after, max_rows=32, max_tokens=2048)
    t_after = time.perf_counter() - t
    ref_tokens = sum(len(ids) + 1 for ids in ref_ids.values())
    print(f"{len(pairs)} distinct MQM translations of {len(refs)} references, {tokens} tokens "
          f"({ref_tokens} in the references): plain {tokens / t_plain:.0f} tokens/s, after the "
          f"reference {tokens / t_after:.0f} translation tokens/s; time ratio after/plain "
          f"{t_after / t_plain:.2f} (the reference tokens alone would make it "
          f"{(tokens + ref_tokens) / tokens:.2f})", flush=True)

    class Whole(torch.nn.Module):
        """The same head, not seen as a plain Linear: its rows of logits are written whole."""

        def __init__(self, head: torch.nn.Module) -> None:
            super().__init__()
            self.head = head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(x)
            return out

    head = lm.model.get_output_embeddings()
    with torch.inference_mode():
        rows = [[lm.prefix_id, *i[:39]] for i in hyp_ids if len(i) >= 39][:32]
        hidden = lm.model.get_decoder()(torch.tensor(rows)).last_hidden_state
        hidden = hidden.reshape(-1, head.in_features)
        targets = torch.randint(0, head.out_features, (len(hidden),))
        times: dict[str, list[float]] = {"blocked": [], "whole": []}
        for _ in range(5):
            for name, h in (("blocked", head), ("whole", Whole(head))):
                t = time.perf_counter()
                got = surprisal(h, hidden, targets)
                times[name].append(time.perf_counter() - t)
                if name == "blocked":
                    blocked = got
        diff = float((surprisal(Whole(head), hidden, targets) - blocked).abs().max())
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"vocabulary projection of {len(hidden)} positions: blocked {med['blocked'] * 1e3:.0f} ms, "
          f"whole rows {med['whole'] * 1e3:.0f} ms (ratio {med['whole'] / med['blocked']:.2f}; "
          f"medians of 5 interleaved); max |difference| {diff:.1e} nats", flush=True)


def main() -> None:
    global DATA  # noqa: PLW0603 - the file the readers below open
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=FluencyChecker.BATCH_SIZE)
    ap.add_argument("--runs", default="native:fp32,transformers:fp32,native:bf16,native:int8",
                    help="backend:precision, comma-separated; the first is the reference")
    ap.add_argument("--cache-dir", type=Path)
    ap.add_argument("--references", type=int, default=32,
                    help="MQM references whose translations are read after them (0: skip)")
    ap.add_argument("--data", type=Path, default=DATA, help="the WMT21 zh-en MQM file (default: ../shared/data/ beside the repository)")
    args = ap.parse_args()
    DATA = args.data
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
    if args.references:
        continuations(args.references, args.threads, args.cache_dir)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (each run's model loaded in turn): {rss:.0f} MB")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
