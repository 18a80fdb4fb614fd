"""LM speed on this machine in float32 and bfloat16, one run, and cold start.

    python benchmarks/lm_speed.py [--threads 2] [--docs 16] [--sentences 500] [--rounds 2]
        [--references 32] [--skip-cold] [--lm-model NAME]
    python benchmarks/lm_speed.py --compare-models [--threads 2] [--docs 16] [--rounds 3]

``--compare-models`` instead times the two supported models on the same text in one run
(SmolLM2-135M and Gemma-3-270M, each in fp32 and bf16, rounds interleaved): the fluency
checker's reading in seconds and words/s (tokens differ between their vocabularies, words do
not), a warm check of the seed pair with its reference, the 500 BNC sentences, and each model's
cold start and peak RSS in a fresh process. It prints the figure the default model is chosen
on: Gemma-3-270M's bf16 speed against SmolLM2's fp32 speed.

Otherwise, for one model (``--lm-model``, default the default model):

Printed, fp32 and bf16 interleaved within the run (the machine may be shared: the load average
is printed, and ratios within one run are the figures that carry):
- GEMM GFLOP/s of ``torch.matmul`` in each precision: 2048^3, and the model's own shapes (2048
  rows through its q/k/v, o, gate/up, down and vocabulary-block projections, FLOP-weighted);
- tokens/s of the fluency checker's LM reading in each precision (real news text: WMT21 zh-en
  hypotheses joined into ~500-token documents, plus the seed pair; medians of ``--rounds``),
  with efficiency = tokens/s x 2 x parameters / the 2048^3 GEMM rate of that precision;
- bf16 against fp32: per-token surprisal differences, flagged-character Jaccard, whether the
  seed spans are identical, and whether batch size 1 gives the same floats (batch invariance);
- a warm check of the seed pair with its reference (``mtqa check seeds/000_* --ref
  seeds/002_*``: every checker), seconds, in each precision;
- a batch of the first ``--sentences`` sentences of ``roundtrip_bnc_dev.jsonl``, one document
  each, through ``Checker.check_many`` (every checker available), in each precision, and the
  ratio; with the fluency checker's share of it;
- cold start: a fresh process that loads the cached model (``precision=auto``) and scores the
  ABC seed, from process start to its report, and its peak RSS;
- the reading the reference checker adds (``--references``): MQM translations read plainly and
  after their references, and the vocabulary projection blocked against whole rows.
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
BNC = ROOT.parent / "shared" / "data" / "roundtrip_bnc_dev.jsonl"
PRECISIONS = ("fp32", "bf16")
SEEDS = ("000_df5d74dac48ad764.txt", "002_98c53f21e16ae677.txt")

COLD = """
import time, sys
t0 = time.perf_counter()
from pathlib import Path
from mtqa.checkers.fluency import FluencyChecker
from mtqa.segment import segment
from mtqa.types import Document
cache = None if sys.argv[1] == "-" else Path(sys.argv[1])
checker = FluencyChecker(cache_dir=cache, threads=int(sys.argv[2]),
                         lm_model=None if sys.argv[3] == "-" else sys.argv[3])
t1 = time.perf_counter()
doc = segment(Document("abc", Path("seeds/000_df5d74dac48ad764.txt").read_text(encoding="utf-8")))
res = checker.check([doc])[0]
t2 = time.perf_counter()
# NOTE: VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(f"REPORT fluency={res.doc_score:.1f} spans={len(res.findings)} {checker.precision} "
      f"load={t1 - t0:.2f}s "
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


def gemm_rates(threads: int, rounds: int = 3) -> dict[str, dict[str, float]]:
    """GFLOP/s of ``torch.matmul`` per precision: 2048^3 and the model's shapes (2048 rows),
    precisions interleaved, best of ``rounds``."""
    import torch

    torch.set_num_threads(threads)
    shapes = {"2048^3": [(2048, 2048, 2048)],
              "model": [(2048, 576, 960), (2048, 576, 576), (2048, 576, 3072), (2048, 1536, 576),
                        (2048, 576, 2048)]}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    mats = {(name, p): [(torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)) for m, k, n in sh]
            for name, sh in shapes.items() for p, dt in dtypes.items()}
    best: dict[str, dict[str, float]] = {p: {} for p in dtypes}
    for _ in range(rounds):
        for (name, p), pairs in mats.items():
            flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)
            a, b = pairs[0]
            a @ b
            t = time.perf_counter()
            for a, b in pairs:
                a @ b
            rate = flops / (time.perf_counter() - t) / 1e9
            best[p][name] = max(best[p].get(name, 0.0), rate)
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


def continuations(n_refs: int, threads: int, cache_dir: Path | None,
                  lm_model: str | None = None) -> None:
    """Plain reading vs reading after the reference, and the blocked vocabulary projection."""
    import torch

    from mtqa.models import load_lm
    from mtqa.surprisal import score_continuations, score_sequences, surprisal

    torch.set_num_threads(threads)
    lm = load_lm(lm_model, cache_dir=cache_dir)
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
            # NOTE: the rows in the head's own type, as surprisal() rounds them for the blocks
            out: torch.Tensor = self.head(x.to(self.head.weight.dtype))
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


def cold_start(threads: int, cache_dir: Path | None, lm_model: str | None = None) -> None:
    cache = str(cache_dir) if cache_dir else "-"
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", COLD, cache, str(threads), lm_model or "-"],
                            cwd=ROOT,
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
    print(f"cold start{f' ({lm_model})' if lm_model else ''}: {wall:.2f}s from process start to report ({exited:.2f}s to exit); "
          f"{report[7:] if report else err[-500:]}", flush=True)


def same_spans(x: CheckResult, y: CheckResult) -> bool:
    return ([(f.start, f.end, f.severity) for f in x.findings]
            == [(f.start, f.end, f.severity) for f in y.findings])


def lm_reading(docs: list[SegmentedDocument], args: argparse.Namespace,
               gemm: dict[str, dict[str, float]]) -> None:
    """Tokens/s per precision (interleaved rounds), bf16 against fp32, batch invariance."""
    checkers = {p: FluencyChecker(cache_dir=args.cache_dir, threads=args.threads, precision=p,
                                  lm_model=args.lm_model)
                for p in PRECISIONS}
    params = sum(p.numel() for p in checkers["fp32"]._require()[0].parameters())
    for c in checkers.values():
        c.score_words(docs[:1])  # warm-up
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    words = {}
    for _ in range(args.rounds):
        for p, c in checkers.items():
            t = time.perf_counter()
            words[p] = c.score_words(docs)
            times[p].append(time.perf_counter() - t)
    tokens = sum(len(w.token_surprisal) for w in words["fp32"])
    tps = {}
    for p in PRECISIONS:
        dt = float(np.median(times[p]))
        tps[p] = tokens / dt
        eff = tps[p] * 2 * params / (gemm[p]["2048^3"] * 1e9)
        print(f"LM reading {p}: {tokens} tokens in {dt:.1f}s (median of {args.rounds}): "
              f"{tps[p]:.0f} tokens/s; efficiency {eff:.2f} of the {p} 2048^3 GEMM rate "
              f"({params / 1e6:.0f}M parameters)", flush=True)
    print(f"LM reading bf16/fp32 speed ratio {tps['bf16'] / tps['fp32']:.2f}")
    a = np.concatenate([w.token_surprisal for w in words["fp32"]])
    b = np.concatenate([w.token_surprisal for w in words["bf16"]])
    d = np.abs(a - b)
    res = {p: [checkers[p].analyse(x, w) for x, w in zip(docs, words[p])] for p in PRECISIONS}
    seeds = [k for k, x in enumerate(docs) if x.doc.id in SEEDS]
    same = all(same_spans(res["fp32"][k], res["bf16"][k]) for k in seeds)
    moved = sum(not same_spans(x, y) for x, y in zip(res["fp32"], res["bf16"]))
    dscore = max(abs((x.doc_score or 0) - (y.doc_score or 0)) for x, y in zip(*res.values()))
    print(f"bf16 vs fp32 token surprisal |difference|: mean {d.mean():.4f}, p99 "
          f"{np.quantile(d, .99):.3f}, max {d.max():.3f} nats (mean surprisal {a.mean():.3f} vs "
          f"{b.mean():.3f}); flagged-character Jaccard {agreement(docs, res['fp32'], res['bf16']):.3f}; "
          f"seed spans {'identical' if same else 'DIFFER'}; spans differ in {moved}/{len(docs)} "
          f"documents; max |doc fluency difference| {dscore:.2f}", flush=True)
    model, tokenizer = checkers["bf16"]._require()
    single = FluencyChecker(model=model, tokenizer=tokenizer, batch_size=1, precision="bf16")
    sub = [k for k, x in enumerate(docs) if x.doc.id in SEEDS or k < 4]
    ones = single.score_words([docs[k] for k in sub])
    moved = sum(list(words["bf16"][k].token_surprisal) != list(w.token_surprisal)
                for k, w in zip(sub, ones))
    print(f"bf16 batch 1 vs {FluencyChecker.BATCH_SIZE}: token surprisals differ (any float) in "
          f"{moved}/{len(sub)} documents", flush=True)
    for c in checkers.values():
        c.close()


def pipeline_inputs(n_sentences: int) -> tuple[list[Document], list[Document]]:
    """The seed pair (the ABC copy with The Hill as reference) and the first ``n_sentences`` BNC
    sentences, one document each."""
    from mtqa.io import load, read_text

    seeds = ROOT / "seeds"
    ref = read_text(seeds / SEEDS[1])
    pair = [d for d in load(seeds / SEEDS[0], ref=(ref,)) if isinstance(d, Document)]
    sentences: list[Document] = []
    with BNC.open(encoding="utf-8") as fh:
        for raw in fh:
            if len(sentences) == n_sentences:
                break
            sentences.append(Document(f"s{len(sentences)}", json.loads(raw)["text"]))
    return pair, sentences


def pipeline_runs(args: argparse.Namespace) -> None:
    """Warm seed-pair check with its reference, and the sentence batch, per precision."""
    from mtqa.config import Settings
    from mtqa.pipeline import Checker

    pair, sentences = pipeline_inputs(args.sentences)
    cache = str(args.cache_dir) if args.cache_dir else None
    checkers = {p: Checker(Settings(precision=p, threads=args.threads, cache_dir=cache,
                                    lm_model=args.lm_model))
                for p in PRECISIONS}
    pair_times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for c in checkers.values():
        c.check_many(pair)  # loads every checker
    for _ in range(3):
        for p, c in checkers.items():
            t = time.perf_counter()
            c.check_many(pair)
            pair_times[p].append(time.perf_counter() - t)
    for p in PRECISIONS:
        print(f"warm seed-pair check with its reference, {p}: {np.median(pair_times[p]):.2f}s "
              f"(median of 3; {', '.join(f'{x:.2f}' for x in pair_times[p])})", flush=True)
    batch: dict[str, float] = {}
    for p, c in checkers.items():
        before = dict(getattr(c, "timings", {}) or {})
        t = time.perf_counter()
        c.check_many(sentences)
        batch[p] = time.perf_counter() - t
        after = dict(getattr(c, "timings", {}) or {})
        lm = after.get("fluency", 0.0) - before.get("fluency", 0.0)
        print(f"{len(sentences)} BNC sentences, one document each, {p}: {batch[p]:.1f}s "
              f"({len(sentences) / batch[p]:.1f} documents/s; fluency checker {lm:.1f}s)",
              flush=True)
    print(f"sentence batch fp32/bf16 time ratio {batch['fp32'] / batch['bf16']:.2f}")
    for c in checkers.values():
        c.close()


MODELS = {"SmolLM2-135M": "SmolLM2-135M-Instruct", "Gemma-3-270M": "gemma3-270m"}


def compare_models(args: argparse.Namespace) -> None:
    """Both supported models, both precisions, on the same text in one run (rounds interleaved)."""
    from mtqa.config import Settings
    from mtqa.pipeline import Checker

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; threads {args.threads}")
    for label, name in MODELS.items():
        if not args.skip_cold:
            cold_start(args.threads, args.cache_dir, name)
    docs = news_docs(args.docs)
    n_words = sum(len(d.doc.mt.split()) for d in docs)
    runs = [(label, name, p) for label, name in MODELS.items() for p in PRECISIONS]
    fl = {(label, p): FluencyChecker(cache_dir=args.cache_dir, threads=args.threads, precision=p,
                                     lm_model=name) for label, name, p in runs}
    for c in fl.values():
        c.score_words(docs[:1])  # warm-up
    times: dict[tuple[str, str], list[float]] = {k: [] for k in fl}
    for _ in range(args.rounds):
        for k, c in fl.items():
            t = time.perf_counter()
            c.score_words(docs)
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    for (label, p), dt in med.items():
        print(f"LM reading {label} {p}: {n_words} words in {dt:.1f}s (median of {args.rounds}; "
              f"{', '.join(f'{x:.1f}' for x in times[(label, p)])}): {n_words / dt:.0f} words/s",
              flush=True)
    for c in fl.values():
        c.close()
    ratio = med[("SmolLM2-135M", "fp32")] / med[("Gemma-3-270M", "bf16")]
    print(f"Gemma-3-270M bf16 speed / SmolLM2-135M fp32 speed: {ratio:.2f} "
          f"(>= 1: Gemma in bf16 reads at least as fast as SmolLM2 did in fp32)", flush=True)
    pair, sentences = pipeline_inputs(500)
    cache = str(args.cache_dir) if args.cache_dir else None
    for label, name, p in runs:
        c = Checker(Settings(precision=p, threads=args.threads, cache_dir=cache, lm_model=name))
        c.check_many(pair)  # loads every checker
        pt = []
        for _ in range(3):
            t = time.perf_counter()
            c.check_many(pair)
            pt.append(time.perf_counter() - t)
        t = time.perf_counter()
        c.check_many(sentences)
        st = time.perf_counter() - t
        print(f"{label} {p}: warm seed pair with reference {np.median(pt):.2f}s (median of 3); "
              f"{len(sentences)} BNC sentences {st:.1f}s", flush=True)
        c.close()


def main() -> None:
    global DATA  # noqa: PLW0603 - the file the readers below open
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=500)
    ap.add_argument("--cache-dir", type=Path)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--references", type=int, default=32,
                    help="MQM references whose translations are read after them (0: skip)")
    ap.add_argument("--data", type=Path, default=DATA, help="the WMT21 zh-en MQM file (default: ../shared/data/ beside the repository)")
    ap.add_argument("--lm-model", help="the model to time (default: the default model)")
    ap.add_argument("--compare-models", action="store_true",
                    help="time SmolLM2-135M and Gemma-3-270M side by side instead")
    args = ap.parse_args()
    DATA = args.data
    if args.compare_models:
        compare_models(args)
        return
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; threads {args.threads}")
    if not args.skip_cold:
        cold_start(args.threads, args.cache_dir, args.lm_model)
        # NOTE: measured before this process loads torch, so the children's ru_maxrss (which a
        # child inherits from its parent across fork/exec) is the cold-start process's own peak.
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of the cold-start process (getrusage): {child:.0f} MB", flush=True)
    gemm = gemm_rates(args.threads)
    for p in PRECISIONS:
        print(f"GEMM {p}: 2048^3 {gemm[p]['2048^3']:.0f} GFLOP/s, the model's shapes "
              f"{gemm[p]['model']:.0f} GFLOP/s", flush=True)
    print(f"GEMM bf16/fp32 ratio: 2048^3 {gemm['bf16']['2048^3'] / gemm['fp32']['2048^3']:.2f}, "
          f"model shapes {gemm['bf16']['model'] / gemm['fp32']['model']:.2f}")
    if args.docs:
        lm_reading(news_docs(args.docs), args, gemm)
    if args.sentences:
        pipeline_runs(args)
    if args.references:
        continuations(args.references, args.threads, args.cache_dir, args.lm_model)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (both precisions' models loaded): {rss:.0f} MB")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
