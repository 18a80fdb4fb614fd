"""Sentence fluency against people on machine round trips (Lau, Clark & Lappin's BNC ratings).

    python benchmarks/roundtrip.py [--data ../shared/data/roundtrip_bnc_dev.jsonl]
        [--lm-model ID] [--precision fp32|bf16|auto] [--folds 5] [--gate [--policy FILE] [--grid]]
        [--speed N [--speed-with MODEL:PRECISION ...]] [--cache-dir /tmp/mtqa-roundtrip]

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
fluency scale, the score map's constants and the policy (``--policy FILE`` applies another).
``--speed N`` prints tokens/s on the first N sentences for the table's model and each
``--speed-with MODEL:PRECISION``, interleaved, and whether each reads a sentence the same in a
batch as alone (transformers' bf16 is not covered by mtqa's batch-invariance guarantee).
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
from scipy.optimize import minimize
from scipy.stats import pearsonr, rankdata, spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtqa.checkers import fluency as fl  # noqa: E402
from mtqa.checkers.fluency import FluencyChecker, WordScores  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.types import Document, DocumentReport, SegmentedDocument  # noqa: E402

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


def _reading(checker: FluencyChecker) -> str:
    """The checker's signature less its fitted scale, which does not change what the LM reads."""
    return re.sub(r"\|scale:[^|]*", "", checker.signature)


def read_lm(rows: Sequence[dict[str, object]], checker: FluencyChecker, cache: Path,
            data_sha: str) -> list[WordScores]:
    """The checker's word surprisals of every sentence, cached by signature and data."""
    key = hashlib.sha256(f"{_reading(checker)}|{data_sha}".encode()).hexdigest()[:16]
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


def fit_scale(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> dict[str, object]:
    """Least squares of 1 + 3 sigmoid(b + z.w) against ratings ``y``; z = standardised x."""
    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / scale
    target = (y - 1.0) / 3.0

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        eta = p[0] + z @ p[1:]
        s = 1.0 / (1.0 + np.exp(-eta))
        r = s - target
        g = 2.0 * r * s * (1.0 - s) / len(y)
        grad = np.concatenate([[g.sum()], z.T @ g + 2.0 * l2 * p[1:]])
        return float((r ** 2).mean() + l2 * (p[1:] ** 2).sum()), grad

    res = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    return {"mean": mean.tolist(), "scale": scale.tolist(), "intercept": float(res.x[0]),
            "coef": res.x[1:].tolist()}


def apply_scale(p: dict[str, object], x: np.ndarray) -> np.ndarray:
    z = (x - np.asarray(p["mean"])) / np.asarray(p["scale"])
    eta = float(p["intercept"]) + z @ np.asarray(p["coef"])  # type: ignore[arg-type]
    return 100.0 / (1.0 + np.exp(-eta))


def logistic_map(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``fit_scale`` as a ``cross_val`` fit: the fitted 0-100 map."""
    params = fit_scale(x, y)
    return lambda t: apply_scale(params, t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--lm-model")
    ap.add_argument("--precision", default=FluencyChecker.PRECISION,
                    help="the LM's weight type (auto, fp32, bf16); default the checker's")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/mtqa-roundtrip"))
    ap.add_argument("--gate", action="store_true",
                    help="block rates of the default policy (every checker runs)")
    ap.add_argument("--policy", type=Path, help="with --gate: this policy file instead")
    ap.add_argument("--grid", action="store_true",
                    help="with --gate: block rates over min_fluency x min_score (the trade-off)")
    ap.add_argument("--speed", type=int, default=0, metavar="N",
                    help="tokens/s and batch invariance on the first N sentences")
    ap.add_argument("--speed-with", action="append", default=[], metavar="MODEL:PRECISION",
                    help="with --speed: also this model (default: the default model) in this "
                         "precision, interleaved (repeatable), e.g. default:fp32")
    args = ap.parse_args()
    rows = load(args.data)
    data_sha = sha256(args.data)
    rating = np.array([float(r["rating"]) for r in rows])  # type: ignore[arg-type]
    fold = folds_of(rows, args.folds)
    model_cache = os.environ.get("MTQA_CACHE_DIR")
    checker_cache = Path(model_cache) if model_cache else None
    checker = FluencyChecker(lm_model=args.lm_model, cache_dir=checker_cache,
                             precision=args.precision)
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
    print("\ncandidate 0-100 maps (scripts/fit_fluency.py's logistic fit, inside the folds):")
    for name, keys in MAPS.items():
        x = np.column_stack([table[k] for k in keys])
        pred = cross_val(x, rating, fold, logistic_map)
        p, s, a, o = figures(pred, rows)
        print(f"{name:34s} {p:8.3f} {s:8.3f} {a:6.3f} {o:7.3f}")
    if args.speed:
        others = []
        for spec in args.speed_with:
            model, _, precision = spec.partition(":")
            others.append(FluencyChecker(lm_model=None if model == "default" else model,
                                         cache_dir=checker_cache,
                                         precision=precision or FluencyChecker.PRECISION))
        speed(rows, [*others, checker], args.speed)
    if args.gate or args.policy:
        reports = gate_reports(rows, args.cache_dir, data_sha, scores, checker, args.lm_model)
        gate(rows, reports, args.policy)
        if args.grid:
            grid(rows, reports, args.policy)


# --- candidate measures -----------------------------------------------------------------------

#: sets of measures combined by a ridge fit inside the folds
COMBOS: dict[str, tuple[str, ...]] = {
    "ridge: slor + word min/mean": ("slor", "word_slor_min", "word_slor_mean"),
    "ridge: slor + normlp + word lp": ("slor", "normlp", "word_lp_min", "word_lp_mean",
                                       "word_lp_max"),
    "ridge: z_cost + slor + log_tokens": ("z_cost", "slor", "log_tokens"),
    "ridge: all LM measures": (*fl.MEASURES, "z0_max"),
}
#: sets of measures a fluency scale (``scripts/fit_fluency.py --measures``) may read
MAPS: dict[str, tuple[str, ...]] = {
    "map: slor": ("slor",),
    "map: z_cost": ("z_cost",),
    "map: z_cost_prior": ("z_cost_prior",),
    "map: z_cost_prior + slor": ("z_cost_prior", "slor"),
    "map: z_cost_prior + word_slor_mean": ("z_cost_prior", "word_slor_mean"),
    "map: z_cost_prior + log_tokens": ("z_cost_prior", "log_tokens"),
    "map: all LM measures": fl.MEASURES,
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
    """Tokens/s of each checker on the first ``n`` sentences, interleaved, medians of rounds;
    and whether its readings depend on the batch (the same sentences one per forward pass)."""
    sds = documents(rows[:n])
    times: dict[int, list[float]] = {i: [] for i in range(len(checkers))}
    tokens: dict[int, int] = {}
    batched: dict[int, list[WordScores]] = {}
    for _ in range(rounds):
        for i, c in enumerate(checkers):
            started = time.perf_counter()
            batched[i] = c.score_words(sds)
            times[i].append(time.perf_counter() - started)
            tokens[i] = sum(len(s.token_surprisal) for s in batched[i])
    print(f"\nspeed on the first {n} sentences ({rounds} rounds interleaved, median; "
          f"load average {os.getloadavg()[0]:.1f}); batch invariance: the largest difference "
          f"of a token's surprisal read in batches of {checkers[0].batch_size} and alone:")
    for i, c in enumerate(checkers):
        t = float(np.median(times[i]))
        size = c.batch_size
        c.batch_size = 1
        try:
            alone = c.score_words(sds)
        finally:
            c.batch_size = size
        diff = max(float(np.max(np.abs(np.subtract(a.token_surprisal, b.token_surprisal))))
                   for a, b in zip(batched[i], alone) if a.token_surprisal)
        print(f"  {c.signature}: {tokens[i]} tokens in {t:.1f}s = {tokens[i] / t:.0f} tokens/s; "
              f"batched vs alone max |diff| {diff:.2e} nats")


#: what ``--gate`` re-applies to the cached reports, so their edits need no new pipeline run
_REAPPLIED = ("data/fluency_scale.json", "data/default_policy.toml", "gate.py")
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


def gate_reports(rows: Sequence[dict[str, object]], cache: Path, data_sha: str,
                 scores: Sequence[WordScores], checker: FluencyChecker,
                 lm_model: str | None = None) -> list[DocumentReport]:
    """The default pipeline's report of each sentence, checked as its own document.

    The whole pipeline's reports are cached; the fluency scale (from ``scores``, the same
    one-sentence readings) and the score map (``mtqa.calibrate.penalty_to_score`` of the
    report's expected penalty) are applied to them on every run.
    """
    import dataclasses

    import mtqa
    from mtqa.calibrate import penalty_to_score

    settings = mtqa.Settings(lm_model=lm_model, precision=checker.precision)
    key = hashlib.sha256(f"{_source_hash()}|{json.dumps(settings.to_dict(), sort_keys=True)}"
                         f"|{_reading(checker)}|{data_sha}".encode()).hexdigest()[:16]
    path = cache / f"gate-{key}.pkl"
    if path.exists():
        with path.open("rb") as fh:
            reports: list[DocumentReport] = pickle.load(fh)
    else:
        started = time.perf_counter()
        # NOTE: the pipeline's fluency checker reads each sentence exactly as the table's
        # checker did (same model and settings, checked below): its readings come from the
        # same cache instead of a second LM pass
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
    out = []
    for d, sd, ws in zip(reports, documents(rows), scores):
        e = d.features["expected_penalty"]
        out.append(dataclasses.replace(d, score=d.score if e is None else penalty_to_score(e),
                                       fluency=checker.analyse(sd, ws).doc_score))
    return out


def gate(rows: Sequence[dict[str, object]], reports: Sequence[DocumentReport],
         policy_path: Path | None = None) -> None:
    """Block rates of a policy (default: mtqa's) for originals, good and bad round trips."""
    from mtqa.gate import decide, load_policy

    policy = load_policy(policy_path)
    verdicts = [decide(d, policy) for d in reports]
    where = policy_path or "mtqa/data/default_policy.toml"
    print(f"\npolicy {policy.name!r} ({where}), each sentence its own document "
          f"(blocked share, blocking rules):")
    for name, idx in groups(rows).items():
        blocked = [i for i in idx if not verdicts[i].passed]
        rules = Counter(x.rule for i in blocked for x in verdicts[i].reasons if x.blocking)
        score = np.array([reports[i].score for i in idx])
        flu = np.array([reports[i].fluency or 0.0 for i in idx])
        print(f"  {name:26s} n={len(idx):4d} blocked {len(blocked) / len(idx):6.1%}  "
              f"score median {np.median(score):5.1f}  fluency median {np.median(flu):5.1f}  "
              + ", ".join(f"{k} {v}" for k, v in rules.most_common()))


def groups(rows: Sequence[dict[str, object]]) -> dict[str, list[int]]:
    """Row indices of the originals, the good round trips (rated >= GOOD) and the bad ones."""
    return {
        "originals": [i for i, r in enumerate(rows) if r["is_original"]],
        f"round trips rated >= {GOOD}": [i for i, r in enumerate(rows) if not r["is_original"]
                                         and float(r["rating"]) >= GOOD],  # type: ignore[arg-type]
        f"round trips rated < {GOOD}": [i for i, r in enumerate(rows) if not r["is_original"]
                                        and float(r["rating"]) < GOOD],  # type: ignore[arg-type]
    }


def grid(rows: Sequence[dict[str, object]], reports: Sequence[DocumentReport],
         policy_path: Path | None = None) -> None:
    """Block rates of the policy with ``min_fluency`` and ``min_score`` varied (its other rules
    as they are): what holding clean sentences back costs in bad ones let through."""
    import dataclasses

    from mtqa.gate import decide, load_policy

    policy = load_policy(policy_path)
    parts = list(groups(rows).values())
    print("\nmin_fluency min_score: blocked originals / round trips >= 2.5 / < 2.5")
    for mf in (30, 35, 40, 45, 50):
        for ms in (0, 20, 30, 40, 50):
            p = dataclasses.replace(policy, min_fluency=float(mf), min_score=float(ms))
            blocked = np.array([not decide(d, p).passed for d in reports])
            print(f"  {mf:3d} {ms:3d}: " + " ".join(f"{blocked[idx].mean():6.1%}" for idx in parts))


if __name__ == "__main__":
    main()
