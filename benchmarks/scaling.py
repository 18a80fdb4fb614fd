"""Checking time per MB from 100 KB to 20 MB: is the no-LM path linear? (issue 15)

Inputs repeat the seed pair (``seeds/*.txt``) paragraph by paragraph up to each size in UTF-8
bytes; each size is checked as one document in a fresh process (so that its peak RSS is its
own), after a warm-up check that builds the checkers. Printed per size: CPU seconds per MB (the
process's own, so that other work on a shared machine does not count) for segmenting, each
checker and the rest (aggregation, gate), the total, its ratio to the smallest size (the target:
within 1.5x), and the process's peak RSS. ``--jobs`` runs sizes side by side. Sizes up to 1 MB are checked two or
three times and the fastest run is shown, since the machine may be shared.

    python benchmarks/scaling.py                               # 100 KB, 1 MB, 5 MB, 20 MB
    python benchmarks/scaling.py --sizes 100k,1m               # quicker
    python benchmarks/scaling.py --checkers fluency --sizes 20k,100k   # the LM, on its own
    python benchmarks/scaling.py --text lines --sizes 100k,1m  # 'Hello world.' lines; or dots
    python benchmarks/scaling.py --isolation                   # Harper in-process or in a worker

``--isolation`` measures what a process boundary around Harper would cost (the alternative to
masking long tokens, issue 15 item 11): the seed pair and 500 one-sentence documents from
``shared/data/mqm_2021_zhen.jsonl``, linted in-process and through a worker process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "seeds").glob("*.txt"))
MQM = ROOT.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"
_UNITS = {"k": 1_000, "m": 1_000_000}


def parse_size(text: str) -> int:
    """``100k`` → 100,000 bytes; ``20m`` → 20,000,000."""
    text = text.strip().lower()
    return int(float(text[:-1]) * _UNITS[text[-1]]) if text[-1] in _UNITS else int(text)


def build_text(size: int, kind: str = "seed") -> str:
    """Seed paragraphs, repeated in order, up to ``size`` UTF-8 bytes (whole paragraphs).

    ``kind="lines"``: one short line repeated; ``"dots"``: one line of full stops.
    """
    if kind == "lines":
        return "Hello world.\n" * (size // 13)
    if kind == "dots":
        return "." * size
    paras = [p for path in SEEDS for p in path.read_text("utf-8").split("\n") if p.strip()]
    out: list[str] = []
    n, i = 0, 0
    while True:
        p = paras[i % len(paras)]
        cost = len(p.encode("utf-8")) + 2
        if out and n + cost > size:
            break
        out.append(p)
        n += cost
        i += 1
    return "\n\n".join(out)


def run_one(size: int, checkers: tuple[str, ...], kind: str) -> dict[str, float]:
    """Check one ``size``-byte document in this process; seconds per stage and peak RSS."""
    from mtqa.config import Settings
    from mtqa.pipeline import Checker
    from mtqa.segment import segment
    from mtqa.types import Document

    text = build_text(size, kind)
    repeats = max(1, min(3, 2_000_000 // size))  # small sizes: the fastest of a few runs
    best: dict[str, float] = {}
    with Checker(Settings(checkers=checkers)) as checker:
        checker.check(build_text(4_000))  # builds every checker and model
        for _ in range(repeats):
            checker.timings.clear()
            c0 = time.process_time()
            segment(Document(id="s", mt=text))
            seg_cpu = time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            checker.check(text)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # NOTE: CPU seconds, so that other work on a shared machine does not count; the
            # checkers' shares come from their wall-clock timings, scaled to the CPU total
            # (approximate under a varying load: "rest" may then come out slightly negative)
            scale = cpu / wall if wall > 0 else 1.0
            out = {f"{k}_s": v * scale for k, v in checker.timings.items()
                   if not k.endswith(".load")}
            out["segment_s"] = seg_cpu
            out["rest_s"] = cpu - sum(out.values())
            out["total_s"] = cpu
            out["wall"] = wall
            if not best or cpu < best["total_s"]:
                best = out
    out = best
    out["bytes"] = float(len(text.encode("utf-8")))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _run_size(size: int, checkers: tuple[str, ...], kind: str,
              timeout: float) -> dict[str, float] | str:
    cmd = [sys.executable, __file__, "--one", str(size), "--checkers", ",".join(checkers),
           "--text", kind]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:.0f} s"
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}): {proc.stderr[-500:]}"
    row: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


def scaling(sizes: list[int], checkers: tuple[str, ...], kind: str, timeout: float,
            jobs: int) -> None:
    """Run every size in a fresh process and print CPU seconds per MB and their ratios."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    results = pool.map(lambda n: _run_size(n, checkers, kind, timeout), sizes)
    first: dict[str, float] | None = None
    for size, row in zip(sizes, results):  # printed in order, each as soon as it is there
        if isinstance(row, str):
            print(f"{size / 1e6:8.2f} MB  {row}", flush=True)
            continue
        first = first or row
        mb = row["bytes"] / 1e6
        stages = "  ".join(f"{k[:-2]} {v / mb:6.2f}" for k, v in sorted(row.items())
                           if k.endswith("_s") and k != "total_s")
        ratio = (row["total_s"] / mb) / (first["total_s"] / (first["bytes"] / 1e6))
        print(f"{mb:8.2f} MB  total {row['total_s'] / mb:7.2f} CPU s/MB  ratio {ratio:4.2f}  "
              f"peak RSS {row['peak_rss_mb']:7.0f} MB  | CPU s/MB: {stages}  "
              f"(check: {row['wall']:.0f} s wall, {row['total_s']:.0f} s CPU)", flush=True)
    pool.shutdown()


# --- Harper in-process or behind a process boundary -------------------------------------------


def _worker(conn: mp.connection.Connection) -> None:  # type: ignore[name-defined]
    from mtqa.checkers.grammar import _HarperBackend

    backend = _HarperBackend("en-US", frozenset(), frozenset())
    backend.start()
    conn.send("ready")
    while True:
        text = conn.recv()
        if text is None:
            return
        conn.send(backend.check(text))  # _Match is a plain frozen dataclass: it pickles


def isolation() -> None:
    """Seconds to lint the seeds and 500 sentences in-process and through a worker process."""
    from mtqa.checkers.grammar import _HarperBackend

    sets = {"seed pair (2 docs)": [p.read_text("utf-8") for p in SEEDS]}
    if MQM.exists():
        lines = [json.loads(x) for x in MQM.read_text("utf-8").splitlines()[:500]]
        sets["500 sentences (500 docs)"] = [str(x["hypothesis"]) for x in lines]
    t0 = time.perf_counter()
    backend = _HarperBackend("en-US", frozenset(), frozenset())
    backend.start()
    print(f"in-process: build the linter {time.perf_counter() - t0:.2f} s")
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child,), daemon=True)
    proc.start()
    assert parent.recv() == "ready"  # noqa: S101 - a benchmark
    print(f"worker: start the process and build the linter {time.perf_counter() - t0:.2f} s")
    for name, texts in sets.items():
        for _round in range(2):  # interleaved, twice: the machine is shared
            t0 = time.perf_counter()
            n_in = sum(len(backend.check(t)) for t in texts)
            t_in = time.perf_counter() - t0
            t0 = time.perf_counter()
            n_out = 0
            for t in texts:
                parent.send(t)
                n_out += len(parent.recv())
            t_out = time.perf_counter() - t0
            print(f"{name}: in-process {t_in:.3f} s, worker {t_out:.3f} s "
                  f"(+{1000 * (t_out - t_in) / len(texts):.2f} ms per document), "
                  f"{n_in} / {n_out} lints")
    parent.send(None)
    proc.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100k,1m,5m,20m")
    ap.add_argument("--checkers", default="structure,grammar")
    ap.add_argument("--text", choices=("seed", "lines", "dots"), default="seed",
                    help="seed paragraphs, 'Hello world.' lines or one line of dots")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per size")
    ap.add_argument("--jobs", type=int, default=1, help="sizes checked side by side")
    ap.add_argument("--isolation", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    checkers = tuple(c for c in args.checkers.split(",") if c)
    if args.one is not None:
        print(json.dumps(run_one(args.one, checkers, args.text)))
    elif args.isolation:
        isolation()
    else:
        scaling([parse_size(s) for s in args.sizes.split(",")], checkers, args.text, args.timeout,
                args.jobs)


if __name__ == "__main__":
    main()
