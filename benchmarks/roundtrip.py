"""Sentence fluency against people on machine round trips (Lau, Clark & Lappin's BNC ratings).

    python benchmarks/roundtrip.py [--data ../shared/data/roundtrip_bnc_dev.jsonl]
        [--lm-model ID] [--folds 5] [--gate] [--speed N] [--cache-dir /tmp/mtqa-roundtrip]

Each sentence of the file is read by the fluency checker's language model on its own (as a
one-sentence document). Printed, for every candidate acceptability measure and for the checker's
own sentence ``fluency``: Pearson and Spearman with the mean human rating, the AUC of telling
originals from their round trips (``identical_to_original`` left out), and the share of groups
whose original gets the best value (a tie with k others counts 1/(k+1)). Measures that are
fitted (the ridge combinations, the 0-100 map) are fitted inside group-wise cross-validation
(folds by ``original_id``) and scored on the pooled out-of-fold predictions; the plain LM
measures need no fit. The LM's readings are cached under ``--cache-dir`` by the checker's
signature, so a re-run only refits.

``--gate`` also runs the whole default pipeline (every checker) on each sentence as its own
document and prints the share the default policy blocks for originals, good round trips (mean
rating >= 2.5) and bad ones (< 2.5), with the rules that blocked them (the LM readings are
the table's, not read again). The reports are cached by
a hash of the mtqa sources and settings, leaving out what is re-applied on every run: the
fluency scale, the score map's constants and the policy. ``--speed N`` prints tokens/s on the
first N sentences (with ``--lm-model``, the default model too, interleaved; float32: bf16
comes with the bf16 work on ``mtqa/llama.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import math
import pickle
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, rankdata, spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtqa.checkers import fluency as fl  # noqa: E402
from mtqa.checkers.fluency import FluencyChecker, WordScores  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.types import Document, SegmentedDocument  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "roundtrip_bnc_dev.jsonl"
GOOD = 2.5


# --- data and LM readings ---------------------------------------------------------------------


def load(path: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def documents(rows: Sequence[dict[str, object]]) -> list[SegmentedDocument]:
    return [segment(Document(str(r["id"]), str(r["text"]))) for r in rows]


def read_lm(rows: Sequence[dict[str, object]], checker: FluencyChecker, cache: Path,
            data_sha: str) -> list[WordScores]:
    """The checker's word surprisals of every sentence, cached by signature and data."""
    # NOTE: the fitted scale does not change what the LM reads: it is left out of the key
    reading = re.sub(r"\|scale:[^|]*", "", checker.signature)
    key = hashlib.sha256(f"{reading}|{data_sha}".encode()).hexdigest()[:16]
    path = cache / f"lm-{key}.pkl"
    if path.exists():
        with path.open("rb") as fh:
            cached: list[WordScores] = pickle.load(fh)
        return cached
    started = time.perf_counter()
    scores = checker.score_words(documents(rows))
    print(f"# LM pass: {time.perf_counter() - started:.0f}s, {checker.signature}", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(scores, fh)
    return scores


# --- figures ----------------------------------------------------------------------------------


def auc(values: np.ndarray, positive: np.ndarray) -> float:
    """P(a positive's value > a negative's), ties counted half (Mann-Whitney)."""
    r = rankdata(values)
    n1 = int(positive.sum())
    n0 = len(values) - n1
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def original_first(values: np.ndarray, rows: Sequence[dict[str, object]]) -> float:
    """Share of groups whose original has the best value; a tie with k others counts 1/(k+1)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r["original_id"]), []).append(i)
    credit = []
    for members in groups.values():
        orig = [i for i in members if rows[i]["is_original"]]
        if not orig or len(members) < 2:
            continue
        best = max(values[i] for i in members)
        if values[orig[0]] < best - 1e-12:
            credit.append(0.0)
        else:
            credit.append(1.0 / sum(values[i] >= best - 1e-12 for i in members))
    return float(np.mean(credit))


def figures(values: np.ndarray, rows: Sequence[dict[str, object]]) -> tuple[float, ...]:
    rating = np.array([float(r["rating"]) for r in rows])  # type: ignore[arg-type]
    keep = np.array([not r["identical_to_original"] for r in rows])
    orig = np.array([bool(r["is_original"]) for r in rows])
    return (float(pearsonr(values, rating)[0]), float(spearmanr(values, rating)[0]),
            auc(values[keep], orig[keep]), original_first(values, rows))


def folds_of(rows: Sequence[dict[str, object]], k: int) -> np.ndarray:
    """Fold of each row: groups (``original_id``) dealt to folds in a fixed shuffled order."""
    groups = sorted({str(r["original_id"]) for r in rows})
    order = np.random.default_rng(0).permutation(len(groups))
    fold = {groups[g]: i % k for i, g in enumerate(order)}
    return np.array([fold[str(r["original_id"])] for r in rows])


def cross_val(x: np.ndarray, y: np.ndarray, fold: np.ndarray,
              fit: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]
              ) -> np.ndarray:
    out = np.zeros(len(y))
    for f in np.unique(fold):
        test = fold == f
        out[test] = fit(x[~test], y[~test])(x[test])
    return out


def ridge(alpha: float = 1.0) -> Callable[[np.ndarray, np.ndarray],
                                          Callable[[np.ndarray], np.ndarray]]:
    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        mu, sd = x.mean(0), x.std(0) + 1e-9
        z = (x - mu) / sd
        w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
        b = y.mean()
        return lambda t: (t - mu) / sd @ w + b
    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--lm-model")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/mtqa-roundtrip"))
    ap.add_argument("--gate", action="store_true")
    ap.add_argument("--speed", type=int, default=0, metavar="N",
                    help="tokens/s on the first N sentences, with the default model too")
    args = ap.parse_args()
    rows = load(args.data)
    data_sha = sha256(args.data)
    rating = np.array([float(r["rating"]) for r in rows])  # type: ignore[arg-type]
    fold = folds_of(rows, args.folds)
    model_cache = os.environ.get("MTQA_CACHE_DIR")
    checker_cache = Path(model_cache) if model_cache else None
    checker = FluencyChecker(lm_model=args.lm_model, cache_dir=checker_cache)
    print(f"{args.data.name}: {len(rows)} sentences, sha256 {data_sha[:12]}; "
          f"{checker.signature}; {args.folds} folds by original_id")
    scores = read_lm(rows, checker, args.cache_dir, data_sha)
    sds = documents(rows)
    table = measures(sds, scores, checker)
    print(f"\n{'measure':34s} {'Pearson':>8s} {'Spearman':>8s} {'AUC':>6s} {'orig1st':>7s}")
    for name, values in table.items():
        p, s, a, o = figures(values, rows)
        print(f"{name:34s} {p:8.3f} {s:8.3f} {a:6.3f} {o:7.3f}")
    print("\nfitted inside the folds (ridge on standardised measures, out-of-fold predictions):")
    for name, keys in COMBOS.items():
        x = np.column_stack([table[k] for k in keys])
        pred = cross_val(x, rating, fold, ridge())
        p, s, a, o = figures(pred, rows)
        print(f"{name:34s} {p:8.3f} {s:8.3f} {a:6.3f} {o:7.3f}")
    if args.speed:
        others = [] if args.lm_model is None else [FluencyChecker(cache_dir=checker_cache)]
        speed(rows, [*others, checker], args.speed)
    if args.gate:
        gate(rows, args.cache_dir, data_sha, scores, checker)


# --- candidate measures -----------------------------------------------------------------------

#: sets of measures combined by a ridge fit inside the folds
COMBOS: dict[str, tuple[str, ...]] = {
    "ridge: slor + word min/mean": ("slor", "word_slor_min", "word_slor_mean"),
    "ridge: slor + normlp + word lp": ("slor", "normlp", "word_lp_min", "word_lp_mean",
                                       "word_lp_max"),
    "ridge: z_cost + slor + log_tokens": ("z_cost", "slor", "log_tokens"),
    "ridge: all LM measures": (*fl.MEASURES, "z0_max"),
}


def sentence_values(checker: FluencyChecker, sd: SegmentedDocument,
                    ws: WordScores) -> dict[str, float]:
    """``sentence_measures`` of a one-sentence document, as the checker computes them."""
    z0 = checker._standardise(sd, ws, ws.excess)
    cost = np.maximum(z0 - checker.PENALTY_FROM, 0.0)
    return fl.sentence_measures(np.asarray(ws.lm), np.asarray(ws.unigram),
                                np.asarray(ws.tokens, dtype=np.float64), cost)


def measures(sds: Sequence[SegmentedDocument], scores: Sequence[WordScores],
             checker: FluencyChecker) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}

    def put(name: str, value: float) -> None:
        out.setdefault(name, []).append(value)

    for sd, ws in zip(sds, scores):
        res = checker.analyse(sd, ws)
        put("mtqa fluency (this checker)", float(res.doc_score or 0.0))
        tok = np.asarray(ws.token_surprisal)
        put("log-prob (sum)", -float(tok.sum()))
        for k, v in sentence_values(checker, sd, ws).items():
            put(k, v)
        z0 = checker._standardise(sd, ws, ws.excess)
        put("z0_max", -float(z0.max()))
    return {k: np.asarray(v) for k, v in out.items()}


# --- speed and gate ---------------------------------------------------------------------------


def speed(rows: Sequence[dict[str, object]], checkers: Sequence[FluencyChecker], n: int,
          rounds: int = 3) -> None:
    """Tokens/s of each checker on the first ``n`` sentences, interleaved, medians of rounds."""
    sds = documents(rows[:n])
    times: dict[int, list[float]] = {i: [] for i in range(len(checkers))}
    tokens: dict[int, int] = {}
    for _ in range(rounds):
        for i, c in enumerate(checkers):
            started = time.perf_counter()
            scores = c.score_words(sds)
            times[i].append(time.perf_counter() - started)
            tokens[i] = sum(len(s.token_surprisal) for s in scores)
    print(f"\nspeed on the first {n} sentences ({rounds} rounds interleaved, median; "
          f"load average {os.getloadavg()[0]:.1f}):")
    for i, c in enumerate(checkers):
        t = float(np.median(times[i]))
        print(f"  {c.signature}: {tokens[i]} tokens in {t:.1f}s = {tokens[i] / t:.0f} tokens/s")


#: what ``--gate`` re-applies to the cached reports, so their edits need no new pipeline run
_REAPPLIED = ("data/fluency_scale.json", "data/default_policy.toml")
_SCORE_MAP = re.compile(r"^SCORE_[A-Z_]+\s*(?::[^=]*)?=.*$", re.M)


def _source_hash() -> str:
    """The mtqa sources that make the pipeline's spans and expected penalties."""
    h = hashlib.sha256()
    pkg = ROOT / "mtqa"
    for p in sorted(pkg.rglob("*")):
        rel = p.relative_to(pkg).as_posix()
        if p.is_file() and p.suffix in (".py", ".toml", ".json") and rel not in _REAPPLIED:
            text = p.read_text(encoding="utf-8")
            if rel == "calibrate.py":
                text = _SCORE_MAP.sub("", text)  # the score map's constants are re-applied
            if rel == "data/calibration.json":  # which records them
                text = re.sub(r'^  "score_(map|scale)": .*$', "", text, flags=re.M)
            h.update(rel.encode() + text.encode())
    return h.hexdigest()[:16]


def gate(rows: Sequence[dict[str, object]], cache: Path, data_sha: str,
         scores: Sequence[WordScores], checker: FluencyChecker) -> None:
    """Block rates of the default policy, each sentence checked as its own document.

    The whole pipeline's reports are cached; the fluency scale (from ``scores``, the same
    one-sentence readings), the score map (``mtqa.calibrate.penalty_to_score`` of the report's
    expected penalty) and the default policy are applied to them on every run.
    """
    import dataclasses

    import mtqa
    from mtqa.calibrate import penalty_to_score
    from mtqa.gate import decide, load_policy

    settings = mtqa.Settings()
    key = hashlib.sha256(f"{_source_hash()}|{json.dumps(settings.to_dict(), sort_keys=True)}"
                         f"|{data_sha}".encode()).hexdigest()[:16]
    path = cache / f"gate-{key}.pkl"
    if path.exists():
        with path.open("rb") as fh:
            reports = pickle.load(fh)
    else:
        started = time.perf_counter()
        # NOTE: the pipeline's fluency checker reads each sentence exactly as the table's
        # checker did (same model and settings, checked below; float32 results do not depend
        # on batching): its readings come from the same cache instead of a second LM pass
        by_text = {str(r["text"]): ws for r, ws in zip(rows, scores)}
        reading = FluencyChecker.score_words

        def cached(self: FluencyChecker, docs: Sequence[SegmentedDocument]) -> list[WordScores]:
            if self.signature != checker.signature:
                raise RuntimeError(f"{self.signature} is not {checker.signature}")
            return [by_text[sd.doc.mt] for sd in docs]

        FluencyChecker.score_words = cached  # type: ignore[method-assign]
        try:
            with mtqa.Checker(settings) as pipeline:
                report = pipeline.check_many(mtqa.Document(id=str(r["id"]), mt=str(r["text"]))
                                             for r in rows)
        finally:
            FluencyChecker.score_words = reading  # type: ignore[method-assign]
        reports = [dataclasses.replace(
            d, meta={}, features={"expected_penalty": d.features.get(
                "calibrated.expected_penalty")}) for d in report.documents]
        print(f"# pipeline: {time.perf_counter() - started:.0f}s", file=sys.stderr)
        cache.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            pickle.dump(reports, fh)
    policy = load_policy()
    sds = documents(rows)
    verdicts = []
    for d, sd, ws in zip(reports, sds, scores):
        e = d.features["expected_penalty"]
        fluency = checker.analyse(sd, ws).doc_score
        d = dataclasses.replace(d, score=d.score if e is None else penalty_to_score(e),
                                fluency=fluency)
        verdicts.append({"score": d.score, "fluency": d.fluency,
                         "rules": [x.rule for x in decide(d, policy).reasons]})
    print(f"\npolicy {policy.name!r}, each sentence its own document (blocked share, rules):")
    parts = {
        "originals": [i for i, r in enumerate(rows) if r["is_original"]],
        f"round trips rated >= {GOOD}": [i for i, r in enumerate(rows) if not r["is_original"]
                                         and float(r["rating"]) >= GOOD],  # type: ignore[arg-type]
        f"round trips rated < {GOOD}": [i for i, r in enumerate(rows) if not r["is_original"]
                                        and float(r["rating"]) < GOOD],  # type: ignore[arg-type]
    }
    for name, idx in parts.items():
        blocked = [i for i in idx if verdicts[i]["rules"]]
        rules = Counter(rule for i in blocked for rule in verdicts[i]["rules"])
        score = np.array([verdicts[i]["score"] for i in idx])
        flu = np.array([verdicts[i]["fluency"] or 0.0 for i in idx])
        print(f"  {name:26s} n={len(idx):4d} blocked {len(blocked) / len(idx):6.1%}  "
              f"score median {np.median(score):5.1f}  fluency median {np.median(flu):5.1f}  "
              + ", ".join(f"{k} {v}" for k, v in rules.most_common()))


if __name__ == "__main__":
    main()
