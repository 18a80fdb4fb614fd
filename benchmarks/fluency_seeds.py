"""The fluency checker on the seed pair: body fluency of the garbled ABC text and the clean Hill one.

    python benchmarks/fluency_seeds.py [--precision bf16] [--cache-dir DIR]

Prints both body fluencies, every LM span, which annotated garbles of the ABC seed
(``fixtures/seeds_annotation.json``) the spans overlap, and the major spans on the Hill body
(false alarms: the Hill text is clean).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtqa.checkers.fluency import FluencyChecker  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.types import Document, Severity  # noqa: E402

ABC, HILL = "000_df5d74dac48ad764.txt", "002_98c53f21e16ae677.txt"
#: garbles the lead listed as the LM's job beyond the structure rules (texts of the annotation)
LM_TARGETS = (
    "in the during the",
    "the statute. powerful of Russia within the body",
    "ammunition it is difficult to stock up",
    "from the rostrum",
    "that At",
    "supply”. shortages",
    "successful. even",
    "measures. sanctions",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", default=FluencyChecker.PRECISION)
    ap.add_argument("--cache-dir", type=Path)
    args = ap.parse_args()
    ann = json.loads((ROOT / "fixtures" / "seeds_annotation.json").read_text(encoding="utf-8"))
    docs = [segment(Document(n, (ROOT / "seeds" / n).read_text(encoding="utf-8"))) for n in (ABC, HILL)]
    with FluencyChecker(cache_dir=args.cache_dir, precision=args.precision) as checker:
        started = time.perf_counter()
        results = checker.check(docs)
        elapsed = time.perf_counter() - started
        print(f"{checker.signature}  ({elapsed:.1f}s for both seeds)")
    for sd, res in zip(docs, results):
        f = res.features
        print(f"\n== {sd.doc.id}: body fluency {res.doc_score:.1f}  tokens {f['tokens']:.0f}  "
              f"mean surprisal {f['surprisal_mean']:.2f}  SLOR mean {f['slor_mean']:.2f}  "
              f"spans {len(res.findings)} (major {f['major_spans']:.0f})")
        scored = [s for s in res.sentence_scores if s is not None]
        print(f"   sentence fluency: min {min(scored):.1f}  median {sorted(scored)[len(scored) // 2]:.1f}")
        for x in res.findings:
            print(f"   {x.severity.value:6s} {x.category:18s} conf {x.confidence:.2f} "
                  f"[{x.start}:{x.end}] {sd.doc.mt[x.start : x.end]!r}")
    abc, hill = results
    gold = ann[ABC]["garbles"]
    print(f"\nABC body fluency {abc.doc_score:.1f} vs Hill {hill.doc_score:.1f} "
          f"({'lower, as it should be' if (abc.doc_score or 0) < (hill.doc_score or 0) else 'NOT lower'})")
    print("\nannotated ABC garbles overlapped by an LM span (* = listed as the LM's job):")
    found = 0
    for g in gold:
        hits = [x for x in abc.findings if x.start < g["end"] and g["start"] < x.end]
        target = g["text"] in LM_TARGETS
        found += bool(hits) and target
        sev = ",".join(x.severity.value for x in hits) or "-"
        print(f"   {'*' if target else ' '} {'found ' if hits else 'missed'} {sev:12s} "
              f"{g['category']:24s} {g['text']!r}")
    n_targets = sum(g["text"] in LM_TARGETS for g in gold)
    print(f"LM targets found: {found}/{n_targets}")
    spans_hit = sum(any(x.start < g["end"] and g["start"] < x.end for g in gold) for x in abc.findings)
    print(f"ABC span precision against the annotation: {spans_hit}/{len(abc.findings)}")
    false_major = [x for x in hill.findings if x.severity is not Severity.MINOR]
    print(f"major spans on the Hill body (false alarms; target <= 1): {len(false_major)}; "
          f"all Hill spans {len(hill.findings)}")


if __name__ == "__main__":
    main()
