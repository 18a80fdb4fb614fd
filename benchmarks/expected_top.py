"""What reading the model's likeliest tokens off the fluency pass costs (issue 19).

    python benchmarks/expected_top.py [--rounds 5] [--top 3] [--precision fp32]

The fluency checker's LM pass over the seed pair (its own windows, batch size and projection)
is timed with ``score_sequences`` (surprisals only) and ``score_sequences_top`` (surprisals and
the ``--top`` likeliest token ids at every position), interleaved (ABBA), ``--rounds`` each; and
the vocabulary projection alone (``surprisal`` against ``surprisal_top`` on the pass's hidden
states, 4x as many rounds). Printed: the medians, their ratios (the added cost, as a share of a
pass and of the projection), and whether the surprisals are the same floats. The machine may be shared: the load average is printed, and the ratio within
one run is the figure that carries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtqa.checkers.fluency import FluencyChecker, _body_text, _windows  # noqa: E402
from mtqa.segment import segment  # noqa: E402
from mtqa.surprisal import (  # noqa: E402
    score_sequences,
    score_sequences_top,
    surprisal,
    surprisal_top,
)
from mtqa.types import Document  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=FluencyChecker.EXPECTED_TOP)
    ap.add_argument("--precision", default=FluencyChecker.PRECISION)
    args = ap.parse_args()
    docs = [segment(Document(p.name, p.read_text(encoding="utf-8")))
            for p in sorted((ROOT / "seeds").glob("*.txt"))]
    checker = FluencyChecker(precision=args.precision)
    model, tokenizer = checker._require()
    enc = tokenizer.encode_batch([_body_text(sd).text for sd in docs], add_special_tokens=False)
    windows = [w for d, e in enumerate(enc)
               for w in _windows(d, e.ids, checker._prefix, checker.window, checker.context)]
    seqs = [(w.ids, w.first) for w in windows]
    kw = {"max_rows": checker.batch_size, "max_tokens": checker.BATCH_TOKENS,
          "device": checker.device}
    plain_t: list[float] = []
    top_t: list[float] = []
    same = True

    def plain_pass() -> None:
        nonlocal same
        t0 = time.perf_counter()
        plain = score_sequences(model, seqs, **kw)
        plain_t.append(time.perf_counter() - t0)
        same = same and plain == reference

    def top_pass() -> None:
        nonlocal same
        t0 = time.perf_counter()
        scored, _best = score_sequences_top(model, seqs, top=args.top, **kw)
        top_t.append(time.perf_counter() - t0)
        same = same and scored == reference

    reference = score_sequences(model, seqs, **kw)
    for r in range(args.rounds):
        for f in ((plain_pass, top_pass) if r % 2 == 0 else (top_pass, plain_pass)):
            f()
    a, b = statistics.median(plain_t), statistics.median(top_t)
    tokens = sum(len(s) - f for s, f in seqs)
    print(f"model {checker.model_name} ({checker.precision}), {tokens} tokens in {len(seqs)} "
          f"windows, load average {os.getloadavg()[0]:.1f}")
    print(f"pass, surprisals only: median {a:.3f} s; with top-{args.top}: median {b:.3f} s; "
          f"added {100.0 * (b / a - 1.0):+.1f}% of a pass")
    # the projection alone, on the hidden states of the longest window
    import torch

    ids, first = seqs[0]
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=torch.tensor([ids]),  # type: ignore[operator]
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long)
                                     ).last_hidden_state[0, first - 1 : len(ids) - 1]
        targets = torch.tensor(ids[first:])
        head = model.get_output_embeddings()  # type: ignore[operator]
        h_plain: list[float] = []
        h_top: list[float] = []
        for r in range(4 * args.rounds):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                if which:
                    got = surprisal_top(head, hidden, targets, args.top)[0]
                else:
                    got = surprisal(head, hidden, targets)
                (h_top if which else h_plain).append(time.perf_counter() - t0)
                same = same and bool(torch.equal(got, surprisal(head, hidden, targets)))
    c, d = statistics.median(h_plain), statistics.median(h_top)
    print(f"projection of {len(targets)} positions: median {1e3 * c:.1f} ms; with top-{args.top}: "
          f"median {1e3 * d:.1f} ms; added {100.0 * (d / c - 1.0):+.1f}% of the projection, "
          f"{100.0 * (d - c) * tokens / len(targets) / a:+.1f}% of a pass (scaled to its "
          f"{tokens} tokens)")
    print(f"surprisals identical: {same}")
    checker.close()


if __name__ == "__main__":
    main()
