"""Fit the fluency scale: sentence fluency 0-100 = the predicted mean human naturalness rating.

    python scripts/fit_fluency.py [--data ../shared/data/roundtrip_bnc_dev.jsonl]
        [--lm-model ID] [--measures slor,word_slor_min,...] [--folds 5] [--dry-run]

Reads every sentence of Lau, Clark & Lappin's BNC round-trip ratings (``original_id`` groups)
with the fluency checker's language model (``benchmarks/roundtrip.py`` caches the readings), and
fits, for that model,

    fluency = 100 * sigmoid(intercept + sum_k coef_k * (measure_k - mean_k) / scale_k)

so that ``1 + 3 * fluency / 100`` predicts the mean rating (1-4) in least squares (an L2
penalty on the coefficients). The measures are ``mtqa.checkers.fluency.sentence_measures``.
Figures are cross-validated by groups (the same fit inside each fold). The result is written
into ``mtqa/data/fluency_scale.json`` under the model's name, with the data's sha256, this
command, the mtqa git revision and the figures (``--dry-run`` prints and writes nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _roundtrip():  # type: ignore[no-untyped-def]
    """``benchmarks/roundtrip.py`` (by path: a ``benchmarks`` package may be installed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("roundtrip", ROOT / "benchmarks" / "roundtrip.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rt = _roundtrip()
from mtqa.checkers import fluency as fl  # noqa: E402
from mtqa.checkers.fluency import FluencyChecker  # noqa: E402

OUT = ROOT / "mtqa" / "data" / "fluency_scale.json"
SCHEMA = "mtqa.fluency-scale/1"
#: the measures of the shipped scale (chosen on cross-validated figures, benchmarks/roundtrip.py)
DEFAULT_MEASURES = ("z_cost_prior",)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=rt.DATA)
    ap.add_argument("--lm-model")
    ap.add_argument("--measures", default=",".join(DEFAULT_MEASURES))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/mtqa-roundtrip"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    names = tuple(m for m in args.measures.split(",") if m)
    unknown = [m for m in names if m not in fl.MEASURES]
    if unknown:
        sys.exit(f"unknown measures {unknown}; known: {', '.join(fl.MEASURES)}")
    rows = rt.load(args.data)
    data_sha = rt.sha256(args.data)
    model_cache = os.environ.get("MTQA_CACHE_DIR")
    checker = FluencyChecker(lm_model=args.lm_model,
                             cache_dir=Path(model_cache) if model_cache else None)
    scores = rt.read_lm(rows, checker, args.cache_dir, data_sha)
    values = [rt.sentence_values(checker, sd, ws) for sd, ws in zip(rt.documents(rows), scores)]
    x = np.array([[v[m] for m in names] for v in values])
    y = np.array([float(r["rating"]) for r in rows])  # type: ignore[arg-type]
    fold = rt.folds_of(rows, args.folds)
    cv = rt.cross_val(x, y, fold, rt.logistic_map)
    pearson, spearman, auc, first = rt.figures(cv, rows)
    params = rt.fit_scale(x, y)
    fitted = rt.apply_scale(params, x)
    rating = 1.0 + 3.0 * cv / 100.0
    print(f"{checker.signature}\nmeasures {names}\n"
          f"cross-validated ({args.folds} folds by original_id): Pearson {pearson:.3f}  "
          f"Spearman {spearman:.3f}  AUC {auc:.3f}  original first {first:.3f}  "
          f"RMSE {np.sqrt(((rating - y) ** 2).mean()):.3f} rating points")
    orig = np.array([bool(r["is_original"]) for r in rows])
    anchors = {
        "originals_median": float(np.median(fitted[orig])),
        "round_trips_median": float(np.median(fitted[~orig])),
        f"rated_ge_{rt.GOOD}_median": float(np.median(fitted[y >= rt.GOOD])),
        f"rated_lt_{rt.GOOD}_median": float(np.median(fitted[y < rt.GOOD])),
    }
    print("fitted on all:", {k: round(v, 1) for k, v in anchors.items()})
    print("coefficients:", dict(zip(names, np.round(params["coef"], 3))),  # type: ignore[arg-type]
          "intercept", round(float(params["intercept"]), 3))  # type: ignore[arg-type]
    if args.dry_run:
        return
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        git = "unknown"
    body = {"measures": list(names), **params}
    # NOTE: the word norms the measures were read with name the fit too (none: as before)
    named = {**body, "norms": checker.norms} if checker.norms else body
    digest = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:8]
    entry = {
        "version": f"{dt.date.today().isoformat()}-{digest}",
        "weights_sha": checker.weights_sha,
        **body,
        "cv": {"folds": args.folds, "pearson": round(pearson, 4), "spearman": round(spearman, 4),
               "auc_original_vs_round_trip": round(auc, 4), "original_first": round(first, 4)},
        "anchors": {k: round(v, 2) for k, v in anchors.items()},
        "data": {"file": args.data.name, "sha256": data_sha, "sentences": len(rows)},
        "command": "python scripts/fit_fluency.py" + (
            f" --lm-model {args.lm_model}" if args.lm_model else ""),
        "mtqa_git": git,
    }
    doc = json.loads(OUT.read_text(encoding="utf-8")) if OUT.exists() else {
        "schema": SCHEMA, "models": {}}
    old = doc["models"].get(checker.model_name) or {}
    if old.get("weights_sha") == checker.weights_sha:
        for key in ("norms", "norms_fit"):  # the word norms the measures were computed with
            if key in old:
                entry[key] = old[key]
    doc["models"][checker.model_name] = entry
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} [{checker.model_name}] version {entry['version']}")


if __name__ == "__main__":
    main()
