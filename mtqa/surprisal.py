"""Token surprisal with a causal language model, batched (shared by the LM-reading checkers).

``score_sequences`` reads token sequences and returns the surprisal (nats) of each token from a
given position on, each predicted from every token before it. Sequences are sorted by length
and cut into batches of at most ``max_rows`` rows and ``max_tokens`` padded positions, padded at
the end (so causal attention alone keeps padding out of every real position), and the results
come back in input order.

Batch invariance: with ``mtqa.llama``'s models a sequence's numbers are the same floats
whichever other sequences share its forward pass, and for any ``max_rows``, in bfloat16 and
float32. Every row of a pass is padded to ``padded_length`` of its own length (a pass only
holds rows of one padded length), so the attention kernel, whose blocking changes with the
sequence length, sees a length the row alone decides; and every matrix product, the vocabulary
head's included, runs on a fixed number of rows (``mtqa.llama.ROWS``), the
last one padded: oneDNN and MKL choose kernels by the number of rows, and with AMX bfloat16 a
row's result changes with it by up to 1/64 of a value (issue 17; AVX512-BF16 without AMX did
not show it). ``tests/test_precision.py`` checks both. ``score_continuations`` scores texts given a context (the reference
checker reads a translation after its reference): a context that several items share is read
once when the model can continue from a cache (``mtqa.llama``).

torch is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar, cast

if TYPE_CHECKING:
    import torch

    from mtqa.llama import Cache

__all__ = [
    "batches", "padded_length", "score_continuations", "score_sequences",
    "score_sequences_top", "surprisal", "surprisal_top",
]

#: vocabulary entries per block of the log-normaliser: a block of logits (``mtqa.llama.ROWS``
#: x HEAD_BLOCK floats, 1-4 MB) stays in cache between the projection and its logsumexp, which makes the
#: projection 15-30% faster on 2 cores than writing out all 49k logits of a row at once
#: (``benchmarks/lm_speed.py`` prints the ratio)
HEAD_BLOCK = 2048


#: padded positions of the passes run through the model's layers together
#: (``mtqa.llama.LlamaDecoder.forward_many``): their products pad one last block of
#: ``mtqa.llama.ROWS`` rows between them instead of one each (peak memory: ~100 MB of
#: activations in bf16 at 640 hidden / 2,048 intermediate)
PACK_TOKENS = 8192


_T = TypeVar("_T")


def _packs(passes: Sequence[_T], sizes: Sequence[int], limit: int = PACK_TOKENS
           ) -> list[list[_T]]:
    """Consecutive passes gathered while their padded positions (``sizes``: rows x width)
    stay within ``limit`` (a pass larger than that alone)."""
    out: list[list[_T]] = []
    size = 0
    for members, mine in zip(passes, sizes):
        if out and size + mine <= limit:
            out[-1].append(members)
            size += mine
        else:
            out.append([members])
            size = mine
    return out


def padded_length(n: int) -> int:
    """The length a sequence of ``n`` tokens is padded to: the next multiple of 8 up to 64, then
    of an eighth of the power of two at or below ``n`` (at most 1/8 of padding: 100 -> 104,
    300 -> 320, 1000 -> 1024)."""
    step = 8 if n <= 64 else 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Consecutive runs of ``lengths`` (sorted longest first) for one forward pass each.

    A run holds sequences of one ``padded_length``; it ends before a sequence of another, or one
    that would make it longer than ``max_rows`` rows or its padded size (rows x the padded
    length) larger than ``max_tokens``.
    """
    out: list[list[int]] = []
    width = 0
    for k, n in enumerate(lengths):
        mine = padded_length(n)
        if out and mine == width and len(out[-1]) < max_rows and (len(out[-1]) + 1) * width <= max_tokens:
            out[-1].append(k)
        else:
            out.append([k])
            width = mine
    return out


def _padded(seqs: Sequence[Sequence[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``seqs``, padded at the end to ``padded_length`` of the
    longest."""
    import torch

    width = padded_length(max(len(s) for s in seqs))
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, seq in enumerate(seqs):
        ids[r, : len(seq)] = torch.tensor(list(seq))
        mask[r, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def surprisal(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log p(target)`` for each row of ``hidden`` (float64), in chunks of ``mtqa.llama.ROWS``.

    A plain linear head (no bias: Llama's) is applied block by block over the vocabulary and
    the blocks' log-normalisers combined (in float32), the target's logit read from its own
    block: the result is ``logsumexp(logits) - logits[target]`` of the logits the product
    gives, so it is never negative. With bfloat16 weights the rows are rounded to bfloat16 for
    the products (as the decoder's are) and the products' outputs are bfloat16 (oneDNN on CPU
    has no float32 output for them); the distribution scored is the one those logits define.
    Any other head is called whole on each chunk.
    """
    return _head_pass(head, hidden, targets, 0)[0]


def surprisal_top(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                  top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``surprisal`` (the same floats) and the ids of the ``top`` likeliest tokens of each row,
    likeliest first (``(rows, top)``, long), read off the same logits: each block's own top
    ``top`` are kept and the best of those taken."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    values, best = _head_pass(head, hidden, targets, top)
    assert best is not None  # noqa: S101 - asked for
    return values, best


def _chunk() -> int:
    """Rows of every product of the vocabulary head: the decoder's ``mtqa.llama.ROWS`` (read at
    call time; imports torch)."""
    from mtqa import llama

    return llama.ROWS


def _head_pass(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
               top: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Surprisals of ``targets`` and, with ``top > 0``, the ids of each row's top tokens
    (no gradients: the products write into a buffer)."""
    import torch

    with torch.no_grad():
        return _head_rows(head, hidden, targets, top)


def _head_rows(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
               top: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    import torch

    weight = getattr(head, "weight", None)
    blocked = (isinstance(head, torch.nn.Linear) and head.bias is None
               and isinstance(weight, torch.Tensor) and weight.dim() == 2)
    chunk = _chunk()
    parts = []
    tops = []
    for c in range(0, len(targets), chunk):
        rows, wanted = hidden[c : c + chunk], targets[c : c + chunk]
        if blocked:
            assert weight is not None  # noqa: S101 - checked above
            # NOTE: every product of the head has ROWS rows, the last chunk padded with
            # zero rows: a row's logits then do not depend on how many rows share its chunk
            # (oneDNN's kernels change with the number of rows; see mtqa.llama.ROWS)
            n = len(wanted)
            full = rows.new_zeros((chunk, rows.shape[1]), dtype=weight.dtype)
            full[:n] = rows
            rows = full
            norms = []
            running = _RunningTop(n, top, rows.device) if top else None
            picked = torch.zeros(len(wanted), dtype=torch.float32, device=rows.device)
            buffer = torch.empty((chunk, HEAD_BLOCK), dtype=weight.dtype, device=rows.device)
            for v in range(0, weight.shape[0], HEAD_BLOCK):
                block = weight[v : v + HEAD_BLOCK]
                # one buffer for every block's logits (each is read before the next is written)
                logits = (torch.mm(rows, block.t(), out=buffer) if len(block) == HEAD_BLOCK
                          else torch.mm(rows, block.t()))[:n]
                lse, peak = _logsumexp_max(logits)
                norms.append(lse)
                # NOTE: the target's logit is read from the same block of logits the
                # normaliser sums (not a separate dot product): in bfloat16 the product's
                # output is rounded, and a target logit computed apart could exceed the
                # rounded ones and give a negative surprisal (issue 17)
                here = ((wanted >= v) & (wanted < v + logits.shape[1])).nonzero()[:, 0]
                if len(here):
                    picked[here] = logits[here, wanted[here] - v].float()
                if running is not None:
                    running.add(logits, v, peak)
            lse = torch.logsumexp(torch.stack(norms, dim=1), dim=1)
            if running is not None:
                tops.append(running.ids())
        else:
            logits = head(rows).float()
            lse = torch.logsumexp(logits, dim=1)
            picked = logits.gather(1, wanted[:, None])[:, 0]
            if top:
                whole = _RunningTop(len(wanted), top, rows.device)
                for v in range(0, logits.shape[1], HEAD_BLOCK):
                    whole.add(logits[:, v : v + HEAD_BLOCK], v)
                tops.append(whole.ids())
        parts.append((lse - picked).double())
    values = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    if not top:
        return values, None
    best = torch.cat(tops) if tops else torch.zeros((0, top), dtype=torch.long)
    return values, best


class _HeadPool:
    """Rows for the vocabulary head, gathered across forward passes: the head runs on every
    full chunk (``mtqa.llama.ROWS`` rows) of them as they come and once, padded, on the rest at
    ``finish``. Each pass's head products would otherwise pad their last chunk (half a chunk wasted on average,
    per pass); the floats are the same either way, since every product has ``ROWS`` rows
    whichever rows fill it."""

    def __init__(self, head: torch.nn.Module, top: int) -> None:
        self.head, self.top = head, top
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.count = 0
        self.values: list[torch.Tensor] = []
        self.best: list[torch.Tensor] = []
        #: (sequence, rows) of what was added, in order
        self.owners: list[tuple[int, int]] = []

    def add(self, states: torch.Tensor, targets: torch.Tensor,
            owners: Sequence[tuple[int, int]]) -> None:
        """Rows ``states`` predicting ``targets``; ``owners``: whose they are, in order
        (sequence index, number of rows)."""
        self.pending.append((states, targets))
        self.owners.extend(owners)
        self.count += len(targets)
        chunk = _chunk()
        if self.count >= chunk:
            self._run(self.count - self.count % chunk)

    def finish(self, sequences: int) -> tuple[list[list[float]], list[list[tuple[int, ...]]]]:
        """Each of ``sequences`` sequences' surprisals and top ids (none without ``top``, or
        for a sequence nothing was added for)."""
        if self.count:
            self._run(self.count)
        values = [v for part in self.values for v in part.tolist()]
        best = [tuple(t) for part in self.best for t in part.tolist()]
        out: list[list[float]] = [[] for _ in range(sequences)]
        tops: list[list[tuple[int, ...]]] = [[] for _ in range(sequences)]
        pos = 0
        for i, n in self.owners:
            out[i] = values[pos : pos + n]
            if self.top:
                tops[i] = best[pos : pos + n]
            pos += n
        return out, tops

    def _run(self, n: int) -> None:
        import torch

        states = torch.cat([s for s, _ in self.pending])
        targets = torch.cat([t for _, t in self.pending])
        got, best = _head_pass(self.head, states[:n], targets[:n], self.top)
        self.values.append(got)
        if best is not None:
            self.best.append(best)
        self.pending = [(states[n:], targets[n:])] if n < len(targets) else []
        self.count = len(targets) - n


def _logsumexp_max(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.logsumexp(logits.float(), dim=1)`` as explicit float32 steps (the row maximum,
    ``exp(x - max)``, its sum, ``log``, ``+ max``) on one float32 copy of ``logits``, each step
    in place, and the row maximum (float32, exact). Widening bfloat16 is exact, so these are the
    floats the same steps give on the bfloat16 logits through type promotion; converting once
    first is 1.5-1.8x faster here than a mixed-type subtraction (which converts element by
    element, unvectorised). Finite logits only (a linear head's)."""
    import torch

    x = logits.to(torch.float32, copy=True)  # a copy even of float32: ``logits`` is read later
    top = x.amax(dim=1, keepdim=True)
    return x.sub_(top).exp_().sum(dim=1).log_().add_(top[:, 0]), top[:, 0]


class _RunningTop:
    """The ``top`` largest logits of each of ``n`` rows over vocabulary blocks added in id
    order, and their ids: likeliest first, equal logits lowest id first (``_top_ids``)."""

    def __init__(self, n: int, top: int, device: torch.device | str) -> None:
        import torch

        self.top = top
        self.values = torch.full((n, top), -math.inf, dtype=torch.float32, device=device)
        self.best = torch.full((n, top), -1, dtype=torch.long, device=device)
        self.seen = 0

    def add(self, logits: torch.Tensor, first: int, peak: torch.Tensor | None = None) -> None:
        """The block of logits of ids ``first``.. (after every lower id); ``peak``: each
        row's maximum of it as float32, when already at hand."""
        import torch

        if peak is None:
            peak = logits.amax(dim=1).float()
        self.seen = first + logits.shape[1]
        # NOTE: only rows whose block maximum beats their running top-th value can change
        # their top (about top * ln(blocks) blocks of 128 per row, not all of them); a tie
        # with it loses, since this block's ids are the higher ones
        need = (peak > self.values[:, -1]).nonzero()[:, 0]
        if not len(need):
            return
        vals, ids = _top_ids(logits[need], self.top)
        both_v = torch.cat([self.values[need], vals], dim=1)
        both_i = torch.cat([self.best[need], ids + first], dim=1)
        # stable: a running entry (a lower id) stays before an equal new one
        order = torch.sort(both_v, dim=1, descending=True, stable=True).indices[:, : self.top]
        self.values[need] = both_v.gather(1, order)
        self.best[need] = both_i.gather(1, order)

    def ids(self) -> torch.Tensor:
        return self.best[:, : min(self.top, self.seen)]


def _top_ids(logits: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` largest logits of each row, likeliest first, equal logits in the order of
    their ids (lowest first), as (values, float32; ids): a defined order, so the expected
    words do not depend on a sort's tie order (bfloat16 logits tie often: 8 bits of mantissa).

    Each logit is widened (exactly) to the next wider float type and its column's tie rank
    written into the low bits the widening leaves zero: keys that keep the logits' order and
    have no ties, so ``torch.topk`` on them has one answer. Finite logits only."""
    import torch

    k = min(top, logits.shape[1])
    # float type -> (the wider type it widens to exactly, that type's integer view, the low
    # bits a widened value leaves zero)
    wide = {torch.bfloat16: (torch.float32, torch.int32, 16),
            torch.float16: (torch.float32, torch.int32, 13),
            torch.float32: (torch.float64, torch.int64, 29)}.get(logits.dtype)
    if wide is None or logits.shape[1] > 1 << wide[2]:
        # NOTE: no spare bits (float64 logits, or more columns than codes): a stable sort by
        # value keeps equal values in column order
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
        return logits.gather(1, order).float(), order
    dtype, itype, spare = wide
    x = logits.to(dtype) + 0.0  # + 0.0: -0.0 becomes +0.0 (they are equal logits)
    bits = x.view(itype)
    col = torch.arange(logits.shape[1], device=logits.device, dtype=itype)
    # a larger key for a lower id: positive floats grow with their bits, negative ones shrink
    code = torch.where(bits >= 0, (1 << spare) - 1 - col, col)
    keys = (bits | code).view(dtype)
    ids = torch.topk(keys, k, dim=1).indices
    return x.gather(1, ids).float(), ids


def score_sequences(
    model: torch.nn.Module,
    seqs: Sequence[tuple[Sequence[int], int]],
    *,
    max_rows: int,
    max_tokens: int,
    device: str = "cpu",
) -> list[list[float]]:
    """Surprisal of tokens ``ids[first:]`` of each ``(ids, first)``, ``first >= 1``, in order.

    ``model`` has ``get_decoder()`` (called with ``input_ids`` and ``attention_mask``, returning
    ``last_hidden_state``) and ``get_output_embeddings()``, as transformers' causal LMs and
    ``mtqa.llama.LlamaLM`` do. Only scored positions reach the vocabulary projection, so padding
    never enters a score and the (tokens x vocabulary) logits stay small.
    """
    return _score_sequences(model, seqs, 0, max_rows, max_tokens, device)[0]


def score_sequences_top(
    model: torch.nn.Module,
    seqs: Sequence[tuple[Sequence[int], int]],
    *,
    top: int,
    max_rows: int,
    max_tokens: int,
    device: str = "cpu",
) -> tuple[list[list[float]], list[list[tuple[int, ...]]]]:
    """``score_sequences`` (the same floats) and, for each scored token, the ids of the
    ``top`` tokens the model found likeliest at its position, likeliest first."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    return _score_sequences(model, seqs, top, max_rows, max_tokens, device)


def _score_sequences(
    model: torch.nn.Module, seqs: Sequence[tuple[Sequence[int], int]], top: int,
    max_rows: int, max_tokens: int, device: str,
) -> tuple[list[list[float]], list[list[tuple[int, ...]]]]:
    import torch

    decoder = cast("torch.nn.Module", model.get_decoder())  # type: ignore[operator]
    head = cast("torch.nn.Module", model.get_output_embeddings())  # type: ignore[operator]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    pool = _HeadPool(head, top)
    passes = []
    for members in batches([len(seqs[i][0]) for i in order], max_rows, max_tokens):
        picked_order = [order[k] for k in members if len(seqs[order[k]][0]) > seqs[order[k]][1]]
        if picked_order:  # else nothing to score in this pass
            passes.append(picked_order)
    many = getattr(decoder, "forward_many", None)
    with torch.inference_mode():
        for pack in _packs(passes, [len(p) * padded_length(len(seqs[p[0]][0])) for p in passes]):
            inputs = [_padded([seqs[i][0] for i in picked], device) for picked in pack]
            if many is not None:
                states = [o.last_hidden_state for o in many(inputs)]
            else:
                states = [decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                          for ids, mask in inputs]
            for picked_order, hidden in zip(pack, states):
                rows: list[int] = []
                cols: list[int] = []
                targets: list[int] = []
                for r, i in enumerate(picked_order):
                    seq, first = seqs[i]
                    rows.extend([r] * (len(seq) - first))
                    cols.extend(range(first - 1, len(seq) - 1))
                    targets.extend(seq[first:])
                chosen = hidden[torch.tensor(rows), torch.tensor(cols)]
                pool.add(chosen, torch.tensor(targets, device=chosen.device),
                         [(i, len(seqs[i][0]) - seqs[i][1]) for i in picked_order])
        return pool.finish(len(seqs))


class _Continuations(NamedTuple):
    """One pass of continuations: ``picked`` (item, row of its context in ``last``), the
    inputs, the rows of their contexts' cache and its lengths."""

    picked: list[tuple[int, int]]
    ids: torch.Tensor
    mask: torch.Tensor
    past: Cache
    lengths: list[int]
    last: torch.Tensor


def _continuation_passes(cache: Cache, lengths: Sequence[int], last: torch.Tensor,
                         conts: Sequence[tuple[int, int]],
                         items: Sequence[tuple[Sequence[int], Sequence[int]]],
                         max_rows: int, max_tokens: int, device: str) -> list[_Continuations]:
    """The passes that read continuations ``conts`` (item, row of its context in ``cache``).

    ``cache`` holds a batch of contexts (row ``r``: its first ``lengths[r]`` positions),
    ``last`` their last hidden states ``(rows, hidden)``. Continuations of different contexts
    share forward passes, each row reading its own context's keys and values.
    """
    import torch

    out = []
    order = sorted(conts, key=lambda c: -len(items[c[0]][1]))
    for run in batches([len(items[i][1]) for i, _ in order], max_rows, max_tokens):
        picked = [order[k] for k in run]
        rows = [r for _, r in picked]
        ids, mask = _padded([items[i][1] for i, _ in picked], device)
        # the cache keeps its padded width (the contexts' own padded_length), so that the
        # shapes of the pass do not depend on which contexts share it
        index = torch.tensor(rows, device=cache[0][0].device)
        past = tuple((k[index], v[index]) for k, v in cache)
        out.append(_Continuations(picked, ids, mask, past, [lengths[r] for r in rows], last))
    return out


def score_continuations(
    model: torch.nn.Module,
    items: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_rows: int,
    max_tokens: int,
    device: str = "cpu",
) -> list[list[float]]:
    """Surprisal of every token of ``continuation`` after ``context``, for each pair, in order.

    ``context`` must hold at least one token (the model's text prefix, at least). With a
    ``mtqa.llama.LlamaLM`` each distinct context is read once (contexts in batches) and the
    continuations of a batch of contexts are read from its cache, in batches that mix contexts;
    any other model reads each pair whole. Either way an item's numbers do not depend on the
    rest of the call beyond float rounding.
    """
    import torch

    from mtqa.llama import LlamaLM

    if not isinstance(model, LlamaLM):
        joined = [((*ctx, *cont), len(ctx)) for ctx, cont in items]
        return score_sequences(model, joined, max_rows=max_rows, max_tokens=max_tokens,
                               device=device)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(items):
        if cont:
            groups.setdefault(tuple(ctx), []).append(i)
    contexts = list(groups)
    by_length = sorted(range(len(contexts)), key=lambda g: -len(contexts[g]))
    pool = _HeadPool(head, 0)
    with torch.inference_mode():
        # contexts are read in batches, padded at the end: each row's cache, cut to its own
        # length, is what reading it alone gives; batches of other lengths run through the
        # layers together (up to max_tokens positions: the caches held at once), and so do
        # the continuation passes that follow them (up to PACK_TOKENS)
        runs = [[by_length[k] for k in run]
                for run in batches([len(contexts[g]) for g in by_length], max_rows, max_tokens)]
        sizes = [len(r) * padded_length(len(contexts[r[0]])) for r in runs]
        for pack in _packs(runs, sizes, max_tokens):
            reads = decoder.forward_many([_padded([contexts[g] for g in picked], device)
                                          for picked in pack], return_cache=True)
            todo: list[_Continuations] = []
            for picked, read in zip(pack, reads):
                assert read.cache is not None  # noqa: S101 - asked for
                lengths = [len(contexts[g]) for g in picked]
                last = read.last_hidden_state[torch.arange(len(picked)),
                                              torch.tensor(lengths) - 1]
                conts = [(i, r) for r, g in enumerate(picked) for i in groups[contexts[g]]]
                todo.extend(_continuation_passes(read.cache, lengths, last, conts, items,
                                                 max_rows, max_tokens, device))
            for run in _packs(todo, [c.ids.numel() for c in todo]):
                outs = decoder.forward_many([(c.ids, c.mask, c.past, c.lengths) for c in run])
                for c, o in zip(run, outs):
                    hidden = o.last_hidden_state
                    # the first token of each is predicted by its context's last position
                    states = torch.cat([torch.cat((c.last[r : r + 1],
                                                   hidden[b, : len(items[i][1]) - 1]))
                                        for b, (i, r) in enumerate(c.picked)])
                    targets = torch.tensor([t for i, _ in c.picked for t in items[i][1]],
                                           device=states.device)
                    pool.add(states, targets, [(i, len(items[i][1])) for i, _ in c.picked])
        return pool.finish(len(items))[0]
