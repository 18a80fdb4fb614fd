"""Precision and recall of mtqa's spans and boilerplate labels against the seed annotation.

    python benchmarks/seeds_annotation.py [--checkers structure,fluency,grammar,reference]

A predicted span is a true positive when it overlaps an annotated garble; an annotated garble is
found when some span overlaps it. Boilerplate is scored per paragraph.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mtqa.config import Settings
from mtqa.pipeline import Checker
from mtqa.types import Document, Kind, Severity

ROOT = Path(__file__).resolve().parent.parent
ABC, HILL = "000_df5d74dac48ad764.txt", "002_98c53f21e16ae677.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkers", default="structure")
    ap.add_argument("--min-confidence", type=float, default=0.0,
                    help="score only the spans at or above this confidence (what text/HTML show)")
    ap.add_argument("--no-ref", action="store_true", help="check the ABC copy without the reference")
    args = ap.parse_args()
    ann = json.loads((ROOT / "fixtures" / "seeds_annotation.json").read_text(encoding="utf-8"))
    settings = Settings(checkers=tuple(args.checkers.split(",")))
    with Checker(settings) as checker:
        docs = [Document(n, (ROOT / "seeds" / n).read_text(encoding="utf-8")) for n in (ABC, HILL)]
        ref = {ABC: (docs[1].mt,)} if "reference" in settings.checkers and not args.no_ref else {}
        docs = [Document(d.id, d.mt, ref=ref.get(d.id, ())) for d in docs]
        report = checker.check_many(docs)
    for d in report.documents:
        d = dataclasses.replace(d, spans=tuple(s for s in d.spans
                                               if s.confidence >= args.min_confidence))
        gold = ann[d.id]["garbles"]
        def hit(s, g):  # noqa: ANN001, ANN202
            return s.start < g["end"] and g["start"] < s.end
        tp = [s for s in d.spans if any(hit(s, g) for g in gold)]
        fp = [s for s in d.spans if s not in tp]
        found = [g for g in gold if any(hit(s, g) for s in d.spans)]
        structural = [g for g in gold if g["structural"]]
        found_struct = [g for g in structural if g in found]
        majors_fp = [s for s in fp if s.severity is not Severity.MINOR]
        majors = [s for s in d.spans if s.severity is not Severity.MINOR]
        minors_tp = sum(s.severity is Severity.MINOR for s in tp)
        struct_major = [g for g in structural if g["severity"] == "major" and any(
            hit(s, g) for s in majors)]
        other = [g for g in gold if not g["structural"]]
        print(f"== {d.id}  checkers={args.checkers}  score={d.score:.1f}  fluency={d.fluency}")
        print(f"  spans {len(d.spans)}  precision {len(tp) / max(len(d.spans), 1):.2f}  "
              f"recall {len(found) / max(len(gold), 1):.2f} ({len(found)}/{len(gold)})  "
              f"structural recall {len(found_struct)}/{len(structural)}  false major {len(majors_fp)}")
        print(f"  min confidence {args.min_confidence:g}: major precision "
              f"{len(majors) - len(majors_fp)}/{len(majors)}  minor precision "
              f"{minors_tp}/{len(d.spans) - len(majors)}  structural majors found as major "
              f"{len(struct_major)}/{sum(g['severity'] == 'major' for g in structural)}  "
              f"non-structural found {sum(g in found for g in other)}/{len(other)}")
        for g in gold:
            print(f"    {'found ' if g in found else 'MISSED'} {g['category']:24s} {g['text']!r}")
        for s in fp:
            print(f"    false  {s.severity.value:8s} {s.checker:10s} {s.text!r}: {s.message[:80]}")
        paras = ann[d.id]["paragraphs"]
        pred = {}
        for s in d.sentences:
            pred.setdefault(d.mt[: s.start].count("\n"), set()).add(s.kind)
        gold_bp = [p["kind"] == "boilerplate" for p in paras]
        pred_bp = [Kind.BOILERPLATE in k for _, k in sorted(pred.items())]
        tp_bp = sum(a and b for a, b in zip(gold_bp, pred_bp))
        print(f"  boilerplate paragraphs: gold {sum(gold_bp)}  predicted {sum(pred_bp)}  "
              f"precision {tp_bp / max(sum(pred_bp), 1):.2f}  recall {tp_bp / max(sum(gold_bp), 1):.2f}")


if __name__ == "__main__":
    main()
