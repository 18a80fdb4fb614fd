"""Grammar checker figures: the seed pair, MQM fluency spans, and speed, for each backend here.

    python benchmarks/grammar.py [--limit N] [--backend harper|languagetool] [--no-ref]

1. Seeds: findings on the ABC seed (a garbled retranslation) and the Hill seed (a clean article)
   by category and severity, which annotated ABC garbles they hit, and every Hill body finding
   (all are false-positive candidates: the Hill has no annotated error).
2. MQM (``../shared/data/mqm_2021_zhen.jsonl``, or ``--data``; ``ref-A`` lines left out): character-level span
   precision/recall/F1 against gold ``Fluency/*`` spans (a severity mismatch counts half, as in
   WMT23 QE task 2; also with severity ignored), and precision against any gold error.
   The reference is passed to the checker for its name filter unless ``--no-ref``.
3. Speed: seconds per 1,000 words (body words of the seeds, hypothesis words of MQM), after the
   backend is warm; the cold start is printed apart. The CPU is shared with other jobs.

LanguageTool runs when ``--languagetool-url`` or a local install (LTP_PATH / --jar-dir) is there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mtqa.checkers.grammar import CATEGORIES, GrammarChecker, locate_languagetool
from mtqa.errors import CheckerUnavailable
from mtqa.evaluate import MqmRecord, load_mqm, span_scores
from mtqa.segment import segment
from mtqa.types import CheckResult, Document, Finding

ROOT = Path(__file__).resolve().parent.parent
ABC = ROOT / "seeds" / "000_df5d74dac48ad764.txt"
HILL = ROOT / "seeds" / "002_98c53f21e16ae677.txt"
ANNOTATION = ROOT / "fixtures" / "seeds_annotation.json"
MQM = ROOT.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"


def _backends(args: argparse.Namespace) -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    if args.backend in (None, "languagetool"):
        if args.languagetool_url:
            out.append(("languagetool", {"languagetool_url": args.languagetool_url}))
        else:
            try:
                locate_languagetool(args.jar_dir)
                out.append(("languagetool", {"languagetool_jar_dir": args.jar_dir}))
            except CheckerUnavailable as exc:
                print(f"languagetool: not run ({exc.reason})")
    if args.backend in (None, "harper"):
        out.append(("harper", {}))
    return out


def seeds(checker: GrammarChecker) -> None:
    garbles = json.loads(ANNOTATION.read_text("utf-8"))[ABC.name]["garbles"]
    for name, path in (("ABC", ABC), ("Hill", HILL)):
        text = path.read_text("utf-8")
        result = checker.check([segment(Document(name, text))])[0]
        by_cat = Counter(f.category for f in result.findings)
        by_sev = Counter(f.severity.value for f in result.findings)
        print(f"  {name}: {len(result.findings)} findings in {_words_of(result)} body words; "
              f"{dict(by_cat)}; {dict(by_sev)}")
        hits: set[str] = set()
        for f in result.findings:
            hit = [g["text"] for g in garbles if g["start"] < f.end and f.start < g["end"]
                   and name == "ABC"]
            hits.update(hit)
            mark = f"hits {hit[0]!r}" if hit else "no annotated garble here"
            print(f"    {f.start:5d} {text[f.start:f.end]!r:22} {f.category:11} {f.severity.value:5} "
                  f"{f.confidence:.1f} {f.rule or '':28} {mark}")
        if name == "ABC":
            print(f"  ABC annotated garbles hit: {len(hits)}/{len(garbles)}")


def _words_of(result: CheckResult) -> int:
    return int(result.features["body_words"])


def mqm(checker: GrammarChecker, limit: int | None, use_ref: bool) -> None:
    records = [r for r in load_mqm(MQM, limit=limit) if r.system != "ref-A"]
    docs = [segment(Document(f"{r.doc_id}:{r.seg_id}:{r.system}", r.hypothesis,
                             ref=(r.reference,) if use_ref and r.reference else ()))
            for r in records]
    t0 = time.perf_counter()
    results = checker.check(docs)
    seconds = time.perf_counter() - t0
    words = sum(len(r.hypothesis.split()) for r in records)
    print(f"  {len(records)} lines, {words} words, {sum(len(r.findings) for r in results)} "
          f"findings, {seconds:.1f}s = {1000 * seconds / max(words, 1):.3f}s per 1,000 words")
    # the README's held-out part: the file's last 10 documents, whatever --limit read
    held_out = set(list(dict.fromkeys(r.doc_id for r in load_mqm(MQM)))[-10:])
    for part, only_held_out in (("all lines", False), ("held out (last 10 documents)", True)):
        pairs = [(r, res) for r, res in zip(records, results)
                 if not only_held_out or r.doc_id in held_out]
        print(f"  -- {part}: {len(pairs)} lines")
        if pairs:
            _span_figures([r for r, _ in pairs], [res for _, res in pairs])


def _span_figures(records: list[MqmRecord], results: list[CheckResult]) -> None:
    texts = [r.hypothesis for r in records]
    fluency = [[(e.start, e.end, e.severity) for e in r.errors if e.category.startswith("Fluency/")]
               for r in records]
    anything = [[(e.start, e.end, e.severity) for e in r.errors] for r in records]

    def spans(keep: Callable[[Finding], bool]) -> list[list[tuple[int, int, str]]]:
        return [[(f.start, f.end, f.severity.value) for f in res.findings if keep(f)]
                for res in results]

    predicted = spans(lambda f: True)
    for label, gold, ignore in (("Fluency/*, severity-aware", fluency, False),
                                ("Fluency/*, severity ignored", fluency, True),
                                ("any category, severity ignored", anything, True)):
        s = span_scores(texts, predicted, gold, ignore_severity=ignore)
        print(f"  {label:32} P {s.precision:.3f}  R {s.recall:.3f}  F1 {s.f1:.3f}  "
              f"(pred {s.predicted_chars} / gold {s.gold_chars} chars)")
    for floor in (0.5, 0.75):
        kept = spans(lambda f: f.confidence >= floor)
        s = span_scores(texts, kept, fluency)
        a = span_scores(texts, kept, anything, ignore_severity=True)
        print(f"  confidence >= {floor:.2f}: {sum(map(len, kept))} findings, Fluency/* P "
              f"{s.precision:.3f} R {s.recall:.3f} F1 {s.f1:.3f}; any-error P {a.precision:.3f}")
    rules = Counter(f.rule or "" for res in results for f in res.findings)
    rows = [(f"category {c}", spans(partial(_has, "category", c))) for c in CATEGORIES]
    rows += [(f"rule {r}", spans(partial(_has, "rule", r))) for r, _ in rules.most_common(8)]
    print("  precision (severity ignored) vs Fluency/*, vs any error:")
    for label, pred in rows:
        if any(pred):
            flu = span_scores(texts, pred, fluency, ignore_severity=True).precision
            anyg = span_scores(texts, pred, anything, ignore_severity=True).precision
            print(f"    {label:34} {sum(map(len, pred)):5d} findings  {flu:.3f}  {anyg:.3f}")


def _has(field: str, value: str, finding: Finding) -> bool:
    return bool(getattr(finding, field) == value)


def speed(checker: GrammarChecker) -> None:
    docs = [segment(Document(p.stem, p.read_text("utf-8"))) for p in (ABC, HILL)]
    results = checker.check(docs)  # warm
    words = sum(_words_of(r) for r in results)
    rounds = 5
    t0 = time.perf_counter()
    for _ in range(rounds):
        checker.check(docs)
    per_1000 = 1000 * (time.perf_counter() - t0) / (rounds * words)
    print(f"  seeds: {per_1000:.3f}s per 1,000 body words (warm, {rounds} rounds of {words} words)")


def main() -> None:
    global MQM  # noqa: PLW0603 - the file the readers below open
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="MQM lines to read (default all)")
    parser.add_argument("--backend", choices=("harper", "languagetool"), default=None)
    parser.add_argument("--languagetool-url", default=os.environ.get("MTQA_LANGUAGETOOL_URL"))
    parser.add_argument("--jar-dir", default=os.environ.get("LTP_JAR_DIR_PATH"))
    parser.add_argument("--no-ref", action="store_true", help="do not pass MQM references")
    parser.add_argument("--data", type=Path, default=MQM, help="the WMT21 zh-en MQM file (default: ../shared/data/ beside the repository)")
    args = parser.parse_args()
    MQM = args.data
    print(f"CPU: {os.cpu_count()} cores, shared with other jobs; timings are indicative")
    for backend, kwargs in _backends(args):
        t0 = time.perf_counter()
        checker = GrammarChecker(backend=backend, **kwargs)  # type: ignore[arg-type]
        with checker:
            checker.check([segment(Document("warm", "A warm-up sentence."))])
            print(f"\n== {checker.signature}  (cold start {time.perf_counter() - t0:.2f}s)")
            print("seeds:")
            seeds(checker)
            print(f"MQM {'without' if args.no_ref else 'with'} references:")
            mqm(checker, args.limit, not args.no_ref)
            print("speed:")
            speed(checker)


if __name__ == "__main__":
    main()
