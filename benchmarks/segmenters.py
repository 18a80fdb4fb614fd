"""Compare sentence splitters on the seed pair: sentence counts, disagreements, time.

    python benchmarks/segmenters.py

Why syntok: it keeps the broken join ``supply". shortages`` inside one sentence (the damage is a
join, not two sentences), splits ``(Neither country ...)`` off its sentence, and is faster.
"""

from __future__ import annotations

import difflib
import time
from pathlib import Path

import pysbd
from syntok import segmenter

SEEDS = sorted((Path(__file__).resolve().parent.parent / "seeds").glob("*.txt"))


def _pysbd(paras: list[str]) -> list[str]:
    seg = pysbd.Segmenter(language="en", clean=False)
    return [s.strip() for p in paras for s in seg.segment(p)]


def _syntok(paras: list[str]) -> list[str]:
    out = []
    for p in paras:
        for para in segmenter.analyze(p):
            for sent in para:
                out.append("".join(t.spacing + t.value for t in sent).strip())
    return out


def main() -> None:
    for path in SEEDS:
        paras = [p for p in path.read_text(encoding="utf-8").split("\n") if p.strip()]
        results = {}
        for name, fn in (("pysbd", _pysbd), ("syntok", _syntok)):
            t = time.perf_counter()
            for _ in range(10):
                sents = fn(paras)
            results[name] = (sents, (time.perf_counter() - t) / 10)
        print(f"== {path.name}")
        for name, (sents, dt) in results.items():
            print(f"  {name:7s} {len(sents):3d} sentences  {dt * 1000:6.1f} ms")
        diff = difflib.unified_diff(results["pysbd"][0], results["syntok"][0], "pysbd", "syntok",
                                    lineterm="", n=0)
        for line in list(diff)[2:]:
            if not line.startswith("@@"):
                print("   ", line[:130])


if __name__ == "__main__":
    main()
