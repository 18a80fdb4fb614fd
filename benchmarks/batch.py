"""End-to-end batch throughput on 200 real news articles, and where the time goes.

Articles are built from WMT21 zh-en MQM (``../shared/data/mqm_2021_zhen.jsonl``, or ``--data``): the
hypotheses of one ``doc_id`` and one system, in ``doc_seg_id`` order, one segment per line, with
the human reference (ref-A) of the same segments as ``ref`` and the Chinese as ``src``. The
human references themselves (system ref-A) are left out. ``run_batch`` then checks them end to
end (load, segment, checkers, aggregate, gate, JSONL/CSV/HTML outputs, SQLite store), in a fresh
store; a second run over the same store shows what a resume costs.

Printed: articles/minute (with and without model loading), seconds per checker from
``Checker.timings``, the share of the wall time inside the language model's readings (both
checkers' calls into ``mtqa.surprisal``: issue 17's target is >= 85%), and the share spent
outside the fluency checker (loading included; the older figure, from before the reference
checker read pairs with the same model).

    python benchmarks/batch.py --checkers structure
    python benchmarks/batch.py                        # every checker available here
    python benchmarks/batch.py -n 40 --profile 25     # and the functions that take the time

``--engine ray`` compares the engines instead, in one process on the same articles, each run
with a fresh store: the local engine, Ray Data with 1 and with 2 actors (each run starts its
own local Ray instance, as ``mtqa batch --engine ray`` does; ``ray.init``'s time is measured
apart), then the local engine again (the machine's load drifts: ratios are to the mean of the
two local runs). Printed: articles/minute (model loading included, as a batch pays it), with
and without Ray's start-up, the ratio to the local engine (target for 2 actors on 2 cores: at
least 0.85), the peak memory of every Ray process (PSS and RSS summed over the driver's
descendants, sampled every second), and whether each engine wrote the same JSONL.

    python benchmarks/batch.py --engine ray --checkers structure,fluency
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from mtqa.batch import run_batch
from mtqa.config import CHECKERS, Settings
from mtqa.pipeline import Checker

#: ../shared/data from the repository root, as CI lays it out (``--data`` points elsewhere)
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mqm_2021_zhen.jsonl"


def build_articles(path: Path, n: int, with_ref: bool) -> list[dict[str, object]]:
    """``n`` articles (id, mt, ref, src), ordered by doc_id then system."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    with path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["system"] != "ref-A":
                groups[(rec["doc_id"], rec["system"])].append(rec)
    articles = []
    for (doc_id, system), segs in sorted(groups.items())[:n]:
        segs.sort(key=lambda r: int(r["doc_seg_id"]))  # type: ignore[call-overload]
        article: dict[str, object] = {
            "id": f"{doc_id}/{system}",
            "mt": "\n".join(str(r["hypothesis"]) for r in segs),
            "src": "\n".join(str(r["source"]) for r in segs),
            "system": system,
        }
        if with_ref:
            article["ref"] = "\n".join(str(r["reference"]) for r in segs)
        articles.append(article)
    return articles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--checkers", default=",".join(CHECKERS))
    parser.add_argument("--no-ref", action="store_true", help="Articles without references.")
    parser.add_argument("--html", action="store_true", help="Also write the HTML pages.")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lm-model", default=None,
                        help="the language model (default: the default model, Gemma-3-270M)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: compare the local engine with Ray Data (1 and 2 actors).")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="Profile the run (cProfile, which slows Python code more than "
                             "model code) and print the N functions with the most own time.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    articles = build_articles(args.data, args.n, with_ref=not args.no_ref)
    words = sum(len(str(a["mt"]).split()) for a in articles)
    settings = Settings(checkers=tuple(args.checkers.split(",")), batch_size=args.batch_size,
                        device=args.device, threads=args.threads, lm_model=args.lm_model)
    if args.engine == "ray":
        compare_engines(articles, words, settings, args.chunk_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = root / "articles.jsonl"
        inputs.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles),
                          encoding="utf-8")
        out = root / "results.jsonl"
        extra = {"csv_out": root / "results.csv", "html_dir": root / "html" if args.html else None}
        profile = cProfile.Profile() if args.profile else None
        lm_seconds = _time_lm_readings()
        with Checker(settings) as checker:
            t0 = time.perf_counter()
            if profile is not None:
                profile.enable()
            summary = run_batch([inputs], out, checker=checker, chunk_size=args.chunk_size, **extra)
            if profile is not None:
                profile.disable()
            wall = time.perf_counter() - t0
            read = lm_seconds[0]  # the first run's (the resume below reads nothing, but still)
            timings = dict(checker.timings)
        skipped = sorted({f"{s['checker']} ({s['reason'][:60]})"
                          for line in out.read_text(encoding="utf-8").splitlines()
                          for s in json.loads(line).get("skipped", [])
                          if s["reason"] != "turned off in the settings"})
        t1 = time.perf_counter()
        again = run_batch([inputs], out, settings, chunk_size=args.chunk_size, **extra)
        resume = time.perf_counter() - t1

    load = sum(v for k, v in timings.items() if k.endswith(".load"))
    lm = timings.get("fluency", 0.0) + timings.get("fluency.load", 0.0)
    checked = sum(v for k, v in timings.items() if not k.endswith(".load"))
    print(f"{len(articles)} articles, {words:,} words, checkers {','.join(settings.checkers)}, "
          f"device {settings.device}, refs {'no' if args.no_ref else 'yes'}, "
          f"LM {settings.lm_model or 'default'}")
    print(f"scored {summary.scored}, passed {summary.passed}, failed {summary.failed}, "
          f"errors {len(summary.errors)}")
    print(f"wall {wall:.1f}s: {60 * len(articles) / wall:.0f} articles/min; "
          f"without model loading ({load:.1f}s) {60 * len(articles) / max(wall - load, 1e-9):.0f}"
          " articles/min")
    for name, seconds in sorted(timings.items(), key=lambda kv: -kv[1]):
        print(f"  {name:18s} {seconds:8.2f}s  {100 * seconds / wall:5.1f}%")
    print(f"  {'(outside checkers)':18s} {wall - checked - load:8.2f}s  "
          f"{100 * (wall - checked - load) / wall:5.1f}%  segmentation, aggregation, gate, "
          "store, outputs")
    if "fluency" in settings.checkers and lm:
        outside = wall - lm
        steady = wall - load
        print(f"outside the fluency checker: {outside:.1f}s of {wall:.1f}s = "
              f"{100 * outside / wall:.1f}%; with no model loading counted: "
              f"{100 * (steady - timings.get('fluency', 0.0)) / steady:.1f}%")
        print(f"in the language model's readings (the fluency checker's and the reference "
              f"checker's, mtqa.surprisal): {read:.1f}s = {100 * read / steady:.1f}% of the wall "
              f"time without model loading (target >= 85%)")
    else:
        print("no language model ran: the share outside it is 100% by definition")
    print(f"resume over the same store: {again.reused} reused, {again.scored} checked, "
          f"{resume:.1f}s")
    if skipped:
        print(f"skipped checkers: {'; '.join(skipped)}")
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.profile)
        print(text.getvalue())


def _time_lm_readings() -> list[float]:
    """Seconds spent in ``mtqa.surprisal``'s readings from now on (every checker imports them
    at call time, so wrapping the module's functions times them all; only the outermost call
    counts, as ``score_continuations`` calls ``score_sequences`` for a transformers model): a
    one-item list."""
    import mtqa.surprisal as surprisal

    total = [0.0]
    depth = [0]
    for name in ("score_sequences", "score_sequences_top", "score_continuations"):
        inner = getattr(surprisal, name)

        def timed(*a: object, _inner: object = inner, **k: object) -> object:
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return _inner(*a, **k)  # type: ignore[operator]
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    total[0] += time.perf_counter() - t0

        setattr(surprisal, name, timed)
    return total


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _memory(pids: list[int]) -> tuple[int, int]:
    """(PSS, RSS) in bytes summed over ``pids`` (processes that are gone count 0)."""
    pss = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss


class _PeakMemory:
    """Samples the memory of every process below this one (Ray's) in a thread."""

    def __init__(self) -> None:
        self.peak = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):  # NOTE: a sample reads every process's smaps: 0.2 s took ~20% of a core
            pss, rss = _memory(_descendants(os.getpid()))
            self.peak = (max(self.peak[0], pss), max(self.peak[1], rss))

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def compare_engines(articles: list[dict[str, object]], words: int, settings: Settings,
                    chunk_size: int) -> None:
    """Local engine, then Ray Data with 1 and 2 actors, on the same articles; one process."""
    import ray

    n = len(articles)
    cores = os.cpu_count() or 1
    print(f"{n} articles, {words:,} words, checkers {','.join(settings.checkers)}, {cores} cores, "
          f"ray {ray.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = root / "articles.jsonl"
        inputs.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles),
                          encoding="utf-8")
        runs: dict[str, float] = {}
        t0 = time.perf_counter()
        local = run_batch([inputs], root / "local" / "r.jsonl", settings, chunk_size=chunk_size)
        runs["local"] = time.perf_counter() - t0
        print(f"local engine: {runs['local']:.1f}s", flush=True)
        sampler = _PeakMemory()
        t0 = time.perf_counter()
        # NOTE: what mtqa.ray_engine does when it starts Ray itself (each run below does)
        ray.init(num_cpus=cores + 1, include_dashboard=False, logging_level="WARNING")
        startup = time.perf_counter() - t0
        ray.shutdown()
        try:
            for actors in (1, 2):
                t0 = time.perf_counter()
                summary = run_batch([inputs], root / f"ray{actors}" / "r.jsonl", settings,
                                    chunk_size=chunk_size, engine="ray", workers=actors)
                runs[f"ray, {actors} actor{'s' if actors > 1 else ''}"] = time.perf_counter() - t0
                same = ((root / f"ray{actors}" / "r.jsonl").read_bytes()
                        == (root / "local" / "r.jsonl").read_bytes())
                print(f"ray with {actors} actor(s): scored {summary.scored}, same JSONL as the "
                      f"local engine: {same}", flush=True)
        finally:
            pss, rss = sampler.stop()
        # NOTE: the local engine once more, last: on a shared machine the load drifts, and the
        # ratios are taken against the mean of the runs before and after the Ray runs
        t0 = time.perf_counter()
        run_batch([inputs], root / "local2" / "r.jsonl", settings, chunk_size=chunk_size)
        runs["local, again"] = time.perf_counter() - t0
    base = (runs["local"] + runs["local, again"]) / 2
    print(f"local engine: scored {local.scored}, errors {len(local.errors)}")
    print(f"Ray start-up (ray.init of a local instance, measured apart): {startup:.1f}s; each "
          "Ray run below starts its own, and is shown with and without it")
    for name, wall in runs.items():
        steady = wall - (0.0 if name.startswith("local") else startup)
        print(f"  {name:16s} {wall:7.1f}s  {60 * n / wall:7.1f} articles/min  "
              f"{base / wall:5.2f} x local;  without the start-up "
              f"{60 * n / steady:7.1f} articles/min  {base / steady:5.2f} x local")
    print(f"peak memory of all Ray processes: PSS {pss / 2**30:.2f} GiB, RSS {rss / 2**30:.2f} GiB "
          "(RSS counts shared libraries once per process)")


if __name__ == "__main__":
    main()
