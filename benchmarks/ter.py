"""mtqa.ter against sacreBLEU's public API: the batched TER shift search and the statistics memo.

The reference checker scores every aligned pair (sentence chrF, BLEU and, in parallel mode,
TER) and every document (corpus BLEU, chrF, chrF++, TER over its lines). With sacreBLEU's public
API that is ``sentence_score`` per pair and metric plus ``corpus_score`` per document, with the
references of a document cached by ``Metric(references=...)`` (sacreBLEU's own cache). mtqa
instead extracts each distinct segment's statistics once per batch (``StatsMemo``, which the
13 systems' translations of a WMT line share through their common reference) and runs TER's
shift search on arrays (``BatchTER``). Both paths run here in one process, interleaved, on the
same documents; the figures must be identical, and the ratio of times is printed.

    python benchmarks/ter.py [--data ../shared/data/mqm_2021_zhen.jsonl] [--docs 130] [--rounds 3]

Documents: the first ``--docs`` WMT21 zh-en MQM lines' hypotheses (13 systems per source line)
with their reference, as one batch, as ``mtqa batch``/``evaluate`` give them to the checker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sacrebleu.metrics.bleu import BLEU  # noqa: E402
from sacrebleu.metrics.chrf import CHRF  # noqa: E402
from sacrebleu.metrics.ter import TER  # noqa: E402

from mtqa import ter  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"  # ../shared/data, as CI lays it out

Pair = tuple[str, str]  # (hypothesis, reference)


def load(path: Path, n: int) -> list[Pair]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r["system"] == "ref-A":
                continue
            out.append((r["hypothesis"], r["reference"]))
            if len(out) >= n:
                break
    return out


def public(pairs: list[Pair]) -> list[float]:
    """sacreBLEU's public calls: sentence chrF/BLEU/TER per pair, corpus scores per document."""
    chrf, sbleu, ter_ = CHRF(), BLEU(effective_order=True), TER()
    out = []
    for hyp, ref in pairs:
        out += [chrf.sentence_score(hyp, [ref]).score, sbleu.sentence_score(hyp, [ref]).score,
                ter_.sentence_score(hyp, [ref]).score]
    # corpus scores of each "document" (here: each pair is a one-line document) with the
    # references cached by the metric, as sacreBLEU offers it
    for hyp, ref in pairs:
        for metric in (BLEU, CHRF, lambda **kw: CHRF(word_order=2, **kw), TER):
            m = metric(references=[[ref]])
            out.append(m.corpus_score([hyp], None).score)
    return out


def public_ter_only(pairs: list[Pair]) -> list[float]:
    t = TER()
    return [t.sentence_score(h, [r]).score for h, r in pairs]


def ours_ter_only(pairs: list[Pair]) -> list[float]:
    return ter.sentence_ter([h for h, _ in pairs], [r for _, r in pairs])


def ours(pairs: list[Pair], ter_cls: type[TER] = ter.BatchTER) -> list[float]:
    """The checker's path: one memo for the batch, scores read back from the statistics."""
    chrf, sbleu, bleu, chrfpp, t = CHRF(), BLEU(effective_order=True), BLEU(), CHRF(word_order=2), ter_cls()
    memo = ter.StatsMemo()
    out = []
    stats = {}
    for hyp, ref in pairs:
        for name, m in (("chrf", chrf), ("bleu", bleu), ("ter", t)):
            stats[name] = memo.stats(m, [hyp], [[ref]])[0]
        out += [ter.score(chrf, stats["chrf"]), ter.score(sbleu, stats["bleu"]),
                ter.score(t, stats["ter"])]
    for hyp, ref in pairs:
        b = memo.stats(bleu, [hyp], [[ref]])[0]
        c = memo.stats(chrf, [hyp], [[ref]])[0]
        cpp = memo.stats(chrfpp, [hyp], [[ref]])[0]
        tt = memo.stats(t, [hyp], [[ref]])[0]
        out += [ter.score(bleu, b), ter.score(chrf, c), ter.score(chrfpp, cpp), ter.score(t, tt)]
    return out


def main() -> None:
    global DATA  # noqa: PLW0603 - the file load() reads
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA,
                    help="the WMT21 zh-en MQM file (default: ../shared/data/ beside the repository)")
    ap.add_argument("--docs", type=int, default=130, help="MQM lines (13 systems per source line)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pairs = load(args.data, args.docs)
    print(f"{len(pairs)} pairs ({len(set(r for _, r in pairs))} distinct references); "
          "the CPU is shared with other jobs: ratios within one run, medians of interleaved rounds")
    runs = {"public": public, "ours": ours, "public-ter": public_ter_only, "ours-ter": ours_ter_only,
            "ours-sacrebleu-ter": lambda p: ours(p, TER)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            results[name] = fn(pairs)
            times[name].append(time.perf_counter() - t0)
    assert results["public"] == results["ours"] == results["ours-sacrebleu-ter"], "numbers differ"
    assert results["public-ter"] == results["ours-ter"], "TER differs"
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:20s} {v:7.2f} s")
    print(f"all scores identical; public API / mtqa.ter time ratio: {med['public'] / med['ours']:.2f} "
          f"(whole scoring), {med['public-ter'] / med['ours-ter']:.2f} (sentence TER alone), "
          f"memo with sacreBLEU's TER / public: {med['public'] / med['ours-sacrebleu-ter']:.2f}")


if __name__ == "__main__":
    main()
