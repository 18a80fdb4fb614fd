"""A plain-torch forward pass for Llama-architecture causal LMs (SmolLM2 and its kin) and
Gemma-3 text models (Gemma-3-270M).

mtqa only needs the last hidden states and the output projection of a causal LM, for scoring.
Going through ``transformers`` for that costs a second or two of imports at every process start
(its model classes pull in torch's compiler and distributed packages) and runs the attention and
MLP as seven separate projections per layer. This module reads the same ``config.json`` and
safetensors weights and computes the same function with fewer, larger matrix products: the
query, key and value projections are one product, the gate and up projections another.

Only what the supported models need is implemented: RMSNorm, rotary embeddings without scaling,
grouped-query attention without biases, a SiLU-gated MLP, tied or untied output embeddings; and
for ``gemma3_text`` what Gemma-3 adds (transformers' ``Gemma3ForCausalLM``): norms that scale by
``1 + w`` (the 1 is added to the weights once, at load), RMS norms of each head's queries and
keys, norms of the attention's and the MLP's outputs before the residual adds ("sandwich"
norms), a tanh-GELU-gated MLP, embeddings scaled by ``sqrt(hidden_size)``, the attention scale
``query_pre_attn_scalar ** -0.5``, and layers of two types: sliding-window layers (a query sees
the keys less than ``sliding_window`` positions back, with their own rotary base) and
full-attention layers. ``unsupported(config)`` says why any other configuration is left to
transformers.

Precision: the matrix weights (projections, embeddings) are float32 or bfloat16
(``load_llama(..., dtype=)``, ``cast_weights``); everything else is float32 either way. Only the
inputs of the matrix products are rounded to the weights' type (the products accumulate in
float32); the residual stream, RMSNorm, rotary embeddings, attention (its softmax included) and
the SiLU gate run in float32, and so do the outputs (``last_hidden_state``, the cache). On CPUs
with native bfloat16 (AVX512-BF16, AMX) the products run about three times faster. No step
depends on other rows of a batch: every matrix product runs on exactly ``ROWS`` rows
(``row_product``), and ``mtqa.surprisal`` pads every pass to a length the row itself decides
(see there), so a row's floats do not depend on which rows share its pass.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from mtqa.models import cpu_has

__all__ = [
    "ROWS", "Cache", "DecoderOutput", "LlamaLM", "LlamaSpec", "cast_weights", "load_llama",
    "load_llama_cached", "precision_of", "row_product", "unsupported",
]

logger = logging.getLogger(__name__)

_ROPE_TYPES = (None, "default")
_LAYER_TYPES = ("full_attention", "sliding_attention")
#: the weight types mtqa runs, by name (as ``Settings.precision`` names them)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def unsupported(config: Mapping[str, Any]) -> str | None:
    """Why this module cannot run a model with this ``config.json``, or None when it can."""
    kind = config.get("model_type")
    if kind == "gemma3_text":
        return _gemma_unsupported(config)
    if kind != "llama":
        return f"model_type {kind!r} is neither 'llama' nor 'gemma3_text'"
    if config.get("hidden_act", "silu") != "silu":
        return f"hidden_act {config.get('hidden_act')!r}"
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "projection biases"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type")) not in _ROPE_TYPES:
        return f"rope scaling {rope.get('rope_type', rope.get('type'))!r}"
    if config.get("pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    return None


def _gemma_unsupported(config: Mapping[str, Any]) -> str | None:
    if config.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        return f"hidden_activation {config.get('hidden_activation')!r}"
    if config.get("attention_bias"):
        return "projection biases"
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is not None:
            return f"{key} {config.get(key)!r}"
    if config.get("use_bidirectional_attention"):
        return "bidirectional attention"
    types = config.get("layer_types") or []
    if len(types) != int(config.get("num_hidden_layers", -1)) or set(types) - set(_LAYER_TYPES):
        return f"layer_types {types!r}"
    for name, rope in _gemma_ropes(config).items():
        if rope.get("rope_type", rope.get("type")) not in _ROPE_TYPES:
            return f"rope scaling {rope.get('rope_type', rope.get('type'))!r} ({name})"
    return None


def _gemma_ropes(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Each layer type's rotary parameters: transformers 5's ``rope_parameters`` by layer type,
    or the older ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling``."""
    given = config.get("rope_parameters") or {}
    if all(t in given for t in _LAYER_TYPES):
        return {t: given[t] for t in _LAYER_TYPES}
    scaling = dict(config.get("rope_scaling") or {})
    return {"full_attention": {**scaling, "rope_theta": config.get("rope_theta", 1e6)},
            "sliding_attention": {"rope_theta": config.get("rope_local_base_freq", 1e4)}}


@dataclass(frozen=True, slots=True)
class LlamaSpec:
    """The dimensions of a Llama model, read from its ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    name_or_path: str = ""
    #: ``llama`` or ``gemma3_text`` (what the fields below switch on)
    model_type: str = "llama"
    #: per layer, ``full_attention`` or ``sliding_attention`` (empty: all full)
    layer_types: tuple[str, ...] = ()
    #: how far back a sliding-window layer sees (a key ``d`` positions back: ``d < window``)
    sliding_window: int | None = None
    #: the rotary base of the sliding-window layers
    local_rope_theta: float = 10000.0
    #: the attention scale (None: ``head_dim ** -0.5``)
    attention_scale: float | None = None
    #: what the token embeddings are multiplied by
    embed_scale: float = 1.0

    @property
    def gemma(self) -> bool:
        """Gemma-3's layer: query/key norms, sandwich norms, a tanh-GELU MLP."""
        return self.model_type == "gemma3_text"

    def sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends through a sliding window."""
        return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name_or_path: str = "") -> LlamaSpec:
        """Raises ValueError when ``unsupported(config)`` has a reason."""
        why = unsupported(config)
        if why is not None:
            raise ValueError(f"not a plain Llama or Gemma-3 model: {why}")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        head_dim = int(config.get("head_dim") or hidden // heads)
        gemma = config.get("model_type") == "gemma3_text"
        common: dict[str, Any] = {
            "vocab_size": int(config["vocab_size"]),
            "hidden_size": hidden,
            "intermediate_size": int(config["intermediate_size"]),
            "num_layers": int(config["num_hidden_layers"]),
            "num_heads": heads,
            "num_kv_heads": int(config.get("num_key_value_heads") or heads),
            "head_dim": head_dim,
            "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),
            # NOTE: Gemma ties its embeddings unless told otherwise, Llama does not
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", gemma)),
            "name_or_path": name_or_path,
        }
        if gemma:
            ropes = _gemma_ropes(config)
            return cls(
                **common,
                rope_theta=float(ropes["full_attention"].get("rope_theta", 1e6)),
                model_type="gemma3_text",
                layer_types=tuple(config["layer_types"]),
                sliding_window=int(config["sliding_window"]),
                local_rope_theta=float(ropes["sliding_attention"].get("rope_theta", 1e4)),
                attention_scale=float(config.get("query_pre_attn_scalar", head_dim)) ** -0.5,
                embed_scale=float(hidden) ** 0.5,
            )
        rope = config.get("rope_parameters") or {}
        return cls(**common,
                   rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))


#: per layer, the keys (after the rotary embedding) and values of contexts, ``(rows, kv_heads,
#: length, head_dim)`` each: what ``LlamaDecoder.forward(..., past=...)`` continues from (one
#: row for all, or one per row with ``past_lengths``)
Cache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class DecoderOutput(NamedTuple):
    """What the decoder returns (``last_hidden_state`` as transformers names it)."""

    last_hidden_state: torch.Tensor
    cache: Cache | None = None


class _Layer(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.spec = spec
        q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        self.split = (q, kv, kv)
        meta = torch.device("meta")
        self.input_norm = nn.Parameter(torch.empty(spec.hidden_size, device=meta))
        self.qkv = nn.Linear(spec.hidden_size, q + 2 * kv, bias=False, device=meta)
        self.o = nn.Linear(q, spec.hidden_size, bias=False, device=meta)
        self.post_norm = nn.Parameter(torch.empty(spec.hidden_size, device=meta))
        self.gate_up = nn.Linear(
            spec.hidden_size, 2 * spec.intermediate_size, bias=False, device=meta
        )
        self.down = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False, device=meta)
        if spec.gemma:
            # ``post_norm`` is then Gemma's pre-feedforward norm (the MLP's input norm, as
            # Llama's post-attention norm is); these four are Gemma's own
            self.q_norm = nn.Parameter(torch.empty(spec.head_dim, device=meta))
            self.k_norm = nn.Parameter(torch.empty(spec.head_dim, device=meta))
            self.attn_out_norm = nn.Parameter(torch.empty(spec.hidden_size, device=meta))
            self.mlp_out_norm = nn.Parameter(torch.empty(spec.hidden_size, device=meta))

    def forward(
        self, x: torch.Tensor, groups: Sequence[_Attention]
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The layer's output for ``x``, the rows of one or more passes stacked ``(rows,
        hidden)`` (group ``i``: the next ``groups[i].rows`` rows, ``(b, t)`` flattened), and each
        group's keys and values (to continue from later). The matrix products, norms and the MLP
        run on all rows at once; attention runs on each group, over its own keys."""
        s = self.spec
        eps = s.rms_norm_eps
        # NOTE: the products' outputs stay in the weights' type where their next step reads
        # them in float32 anyway: a bfloat16 value widens to float32 exactly, so type promotion
        # (``x + y``, ``q * cos``) gives the same floats as converting first, one pass less
        h = _norm(x, self.input_norm, eps, _input_type(self.qkv))
        qkv = _product(self.qkv, h, out=None)
        heads: list[torch.Tensor] = []
        kvs: list[tuple[torch.Tensor, torch.Tensor]] = []
        start = 0
        for g in groups:
            b, t = g.b, g.t
            part = qkv[start : start + b * t].view(b, t, -1)
            start += b * t
            q, k, v = torch.split(part, list(self.split), dim=-1)
            q = q.view(b, t, s.num_heads, s.head_dim)
            k = k.view(b, t, s.num_kv_heads, s.head_dim)
            if s.gemma:
                q = F.rms_norm(q.float(), (s.head_dim,), self.q_norm, eps)
                k = F.rms_norm(k.float(), (s.head_dim,), self.k_norm, eps)
            q = _rotate(q.transpose(1, 2), g.cos, g.sin)
            k = _rotate(k.transpose(1, 2), g.cos, g.sin)
            v = v.view(b, t, s.num_kv_heads, s.head_dim).transpose(1, 2).float()
            kvs.append((k, v))
            if g.past is not None:
                k = torch.cat((g.past[0].expand(b, -1, -1, -1), k), dim=2)
                v = torch.cat((g.past[1].expand(b, -1, -1, -1), v), dim=2)
            # query head j reads key/value head j // (num_heads / num_kv_heads), as
            # transformers' repeat_kv does; enable_gqa does it without copying them
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask,
                                                 is_causal=g.mask is None,
                                                 scale=s.attention_scale,
                                                 enable_gqa=s.num_heads != s.num_kv_heads)
            heads.append(att.transpose(1, 2).reshape(b * t, -1))
        o = _product(self.o, heads[0] if len(heads) == 1 else torch.cat(heads), out=None)
        if s.gemma:
            o = F.rms_norm(o.float(), (s.hidden_size,), self.attn_out_norm, eps)
        x = x + o
        h = _norm(x, self.post_norm, eps, _input_type(self.gate_up))
        # the gate in the weights' type: its product is the down projection's input, rounded
        # to that type anyway (one conversion of the widest activations less)
        gate, up = _product(self.gate_up, h, out=None).chunk(2, dim=-1)
        act = F.gelu(gate, approximate="tanh") if s.gemma else F.silu(gate)
        m = _product(self.down, act * up, out=None)
        if s.gemma:
            m = F.rms_norm(m.float(), (s.hidden_size,), self.mlp_out_norm, eps)
        out: torch.Tensor = x + m
        return out, kvs


class _Attention(NamedTuple):
    """What one group of rows (one pass: ``b`` rows of ``t`` positions) attends with in one
    layer: its rotary ``cos``/``sin``, its mask (None: causal) and the cache it continues."""

    b: int
    t: int
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    past: tuple[torch.Tensor, torch.Tensor] | None


class _Pass(NamedTuple):
    """One pass's embedded inputs ``(b, t, hidden)`` and, by layer type (sliding or not), its
    rotary embeddings and masks; ``past`` the cache it continues (None: none)."""

    x: torch.Tensor
    rope: dict[bool, tuple[torch.Tensor, torch.Tensor]]
    masks: dict[bool, torch.Tensor | None]
    past: Cache | None


def _product(linear: nn.Linear, x: torch.Tensor,
             out: torch.dtype | None = torch.float32) -> torch.Tensor:
    """``linear(x)`` with ``x`` rounded to the weight's type, the result in ``out`` (None: the
    weight's type). Both conversions are no-ops for float32 weights; a module without a weight
    tensor (int8 dynamic quantisation) runs its own forward.
    """
    w = linear.weight
    if not isinstance(w, torch.Tensor):
        y: torch.Tensor = linear(x)
    else:
        y = row_product(x.to(w.dtype), w)
    return y if out is None else y.to(out)


def _rows_for_this_cpu() -> int:
    """``ROWS`` on this machine: 512 where the host CPU has AMX (its tile kernels want big
    products, ``mtqa.models.cpu_has``), 256 elsewhere (AVX512-BF16, AVX2, and where neither torch
    nor ``/proc/cpuinfo`` can say; a CUDA run follows its host CPU).

    The padding is what a lone short document pays for: on an AVX512-BF16 CPU without AMX (AMD
    EPYC, 2 cores, Gemma-3-270M bf16) a one-sentence document's LM reading takes 0.36 s with 512
    rows and 0.20 s with 256 (0.12 s with 128, but a 200-sentence batch is then 11% slower), the
    seed article and the batch unchanged within noise (one run, three interleaved rounds,
    issue 17's note). The bf16 floats do not depend on the choice there (that CPU's kernels
    give a row the same result for 64-512 rows: measured on the seed and 64 BNC sentences);
    with AMX they do, which is why every product has one fixed row count at all.
    """
    return 512 if cpu_has("amx_bf16") else 256


#: rows of every matrix product the model runs (the decoder's projections and, in
#: ``mtqa.surprisal``, the vocabulary head): a product of more rows is run as products of
#: exactly this many, the last one padded with zero rows. oneDNN and MKL pick their kernels and
#: blocking by the shape of a product, rows included, and a row's result changes with them
#: (with AMX bfloat16, by up to 1/64 of a value for 33-300 rows of a 1,024 x 640 product; in
#: float32 by ~1e-7 where K is 1,024 or more); at one shape it does not depend on its position
#: or on the other rows. With AMX on two cores 512 rows run at 1,550-1,850 GFLOP/s on the
#: model's shapes, 256 at 1,100-1,500, 32 at ~480: padding a pass's last product to 512 rows
#: (256 wasted on average) costs less than smaller products from ~300 rows a pass on. Without
#: AMX (AVX512-BF16 on AMD EPYC: 256 rows 820 GFLOP/s, 512 rows 860, 128 rows 810) the
#: padding costs more than the rate gains, so 256 (``_rows_for_this_cpu``). Fixed for the
#: process: a row's floats depend on the machine, never on the batch. (Rates by row count:
#: one run each, issue 17's notes; ``benchmarks/lm_speed.py`` prints them at 2,048 rows.)
ROWS = _rows_for_this_cpu()


def row_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, w)`` run as products of exactly ``ROWS`` rows of ``x`` (flattened to its
    last dimension), so that a row's result depends on that row and ``w`` alone: the same
    floats whichever other rows share the call and however many there are (issue 17). No
    gradients (the products write into the output's rows)."""
    with torch.no_grad():
        return _row_product(x, w)


def _row_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    k, n = x.shape[-1], w.shape[0]
    flat = x.reshape(-1, k)
    m = flat.shape[0]
    if m == ROWS:
        return torch.mm(flat, w.t()).view(*x.shape[:-1], n)
    # NOTE: mm writing into the output's rows is 2-20% faster than copying each F.linear's
    # result there, with the same floats
    y = torch.empty((m, n), dtype=w.dtype, device=x.device)
    whole = m - m % ROWS
    for c in range(0, whole, ROWS):
        torch.mm(flat[c : c + ROWS], w.t(), out=y[c : c + ROWS])
    if whole < m:
        last = flat.new_zeros((ROWS, k))
        last[: m - whole] = flat[whole:]
        y[whole:] = torch.mm(last, w.t())[: m - whole]
    return y.view(*x.shape[:-1], n)


def _input_type(linear: nn.Linear) -> torch.dtype:
    """The type ``linear`` reads its input in: its weight's (float32 for int8 dynamic modules)."""
    w = linear.weight
    return w.dtype if isinstance(w, torch.Tensor) else torch.float32


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """RMSNorm of float32 ``x``, in ``dtype``: ``F.rms_norm(x, ..., weight, eps).to(dtype)``.

    For another type than float32 the same float32 steps as torch's own (``pow``, ``mean``,
    ``+ eps``, ``rsqrt``, two products) are taken, the last product written in ``dtype``
    directly: the same values, one pass over the activations less.
    """
    if dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    scale = torch.rsqrt(torch.pow(x, 2).mean(-1, keepdim=True) + eps)
    return torch.mul(x.mul(scale), weight, out=torch.empty(x.shape, dtype=dtype, device=x.device))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, halves convention (transformers' ``rotate_half``), in float32
    whatever the type of ``x``. ``sin`` carries the sign of ``rotate_half``'s first half
    (``_rotary``): ``x2 * -s`` is ``-x2 * s`` exactly, without a negated copy of ``x2``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * sin


class LlamaDecoder(nn.Module):
    """Embeddings, decoder layers and the final norm: token ids to last hidden states."""

    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.spec = spec
        meta = torch.device("meta")
        # NOTE: given its (meta) weight, Embedding skips its random init: normal_ on a meta
        # tensor imports torch's Python decompositions on first use, 1.2-1.7 s of a cold start
        self.embed_tokens = nn.Embedding(
            spec.vocab_size, spec.hidden_size,
            _weight=torch.empty(spec.vocab_size, spec.hidden_size, device=meta))
        self.layers = nn.ModuleList(_Layer(spec) for _ in range(spec.num_layers))
        self.norm = nn.Parameter(torch.empty(spec.hidden_size, device=meta))
        half = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).float() / spec.head_dim
        self.register_buffer("inv_freq", 1.0 / (spec.rope_theta**half), persistent=False)
        self.register_buffer("local_inv_freq", 1.0 / (spec.local_rope_theta**half),
                             persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        past: Cache | None = None,
        past_lengths: Sequence[int] | None = None,
        return_cache: bool = False,
    ) -> DecoderOutput:
        """Hidden states after the final norm, ``(batch, length, hidden)``.

        ``attention_mask`` (1 = token, 0 = padding) may be omitted, or mark padding at the end of
        rows (how mtqa pads): then plain causal attention is exact for every real position, and
        positions count from 0 in every row. Any other mask is applied explicitly, with positions
        counted over the real tokens of each row.

        ``past``: every row continues one context whose cache an earlier call returned (with
        ``return_cache=True``); rows must then be right-padded. Without ``past_lengths`` the
        cache holds one context (one row, all its positions) that every row continues. With
        ``past_lengths`` it holds one row per input row, row ``r`` continuing the first
        ``past_lengths[r]`` positions of its cache row (the rest, padding, is ignored): rows
        that continue different contexts share a forward pass.
        ``return_cache`` returns the keys and values of this call's tokens (not with ``past``).
        """
        one = ((input_ids, attention_mask) if past is None and past_lengths is None
               else (input_ids, attention_mask, past, past_lengths))
        return self.forward_many([one], return_cache=return_cache)[0]

    def forward_many(
        self,
        passes: Sequence[tuple[torch.Tensor, torch.Tensor | None]
                         | tuple[torch.Tensor, torch.Tensor | None, Cache | None,
                                 Sequence[int] | None]],
        *,
        return_cache: bool = False,
    ) -> list[DecoderOutput]:
        """``forward`` of each pass, the passes run through the layers together: each matrix
        product runs once on all their rows (the same floats: a row's product does not depend
        on the other rows, ``row_product``), so passes of a few hundred rows do not each pad a
        product to ``ROWS``. Attention stays within each pass. A pass is ``(ids, mask)`` or
        ``(ids, mask, past, past_lengths)`` (as ``forward`` takes them; ``return_cache`` only
        without ``past``)."""
        prepared = []
        for one in passes:
            ids, mask = one[0], one[1]
            past, lengths = (one[2], one[3]) if len(one) == 4 else (None, None)
            if past is not None and return_cache:
                raise ValueError("return_cache reads a context; it does not extend a cache")
            if lengths is not None and past is None:
                raise ValueError("past_lengths describes a cache: pass past too")
            prepared.append(self._pass(ids, mask, past, lengths))
        hidden, kept = self._layers(prepared, return_cache)
        return [DecoderOutput(h, kept[i] if return_cache else None) for i, h in enumerate(hidden)]

    def _layers(self, passes: Sequence[_Pass], return_cache: bool
                ) -> tuple[list[torch.Tensor], list[Cache]]:
        spec = self.spec
        shapes = [p.x.shape[:2] for p in passes]
        flat = [p.x.reshape(-1, spec.hidden_size) for p in passes]
        x = flat[0] if len(flat) == 1 else torch.cat(flat)
        kept: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in passes]
        for k, layer in enumerate(self.layers):
            sliding = spec.sliding(k)
            groups = [_Attention(b, t, *p.rope[sliding], p.masks[sliding],
                                 None if p.past is None else p.past[k])
                      for (b, t), p in zip(shapes, passes)]
            x, kvs = layer(x, groups)
            if return_cache:
                for mine, kv in zip(kept, kvs):
                    mine.append(kv)
        hidden = F.rms_norm(x, (spec.hidden_size,), self.norm, spec.rms_norm_eps)
        out: list[torch.Tensor] = []
        start = 0
        for b, t in shapes:
            out.append(hidden[start : start + b * t].view(b, t, spec.hidden_size))
            start += b * t
        return out, [tuple(c) for c in kept]

    def _pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              past: Cache | None, past_lengths: Sequence[int] | None) -> _Pass:
        """The embedded inputs, positions' rotary embeddings and masks of one pass."""
        b, t = input_ids.shape
        x = self.embed_tokens(input_ids).float()
        if self.spec.embed_scale != 1.0:
            # NOTE: as transformers' Gemma3TextScaledWordEmbedding in float32: the scale as a
            # float32 number
            x = x * torch.tensor(self.spec.embed_scale, dtype=torch.float32)
        mask: torch.Tensor | None = None
        keys: torch.Tensor | None = None  # the keys' positions, where they are not ``pos``
        if past is not None:
            if attention_mask is not None and not _right_padded(attention_mask):
                raise ValueError("rows that continue a context must be padded at the end")
            n = past[0][0].shape[2]
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            if past_lengths is None:
                pos = torch.arange(n, n + t, device=x.device, dtype=torch.float32)[None, :]
                seen = torch.ones(t, n, dtype=torch.bool, device=x.device)
                mask = torch.cat((seen, causal), dim=1)[None, None]
                keys = torch.arange(n + t, device=x.device, dtype=torch.float32)[None, :]
            else:
                if len(past_lengths) != b or past[0][0].shape[0] != b:
                    raise ValueError("past_lengths needs one cache row and one length per row")
                lengths = torch.tensor(list(past_lengths), device=x.device)
                pos = lengths[:, None].float() + torch.arange(t, device=x.device)[None, :]
                seen = torch.arange(n, device=x.device)[None, :] < lengths[:, None]
                mask = torch.cat((seen[:, None, :].expand(b, t, n),
                                  causal[None].expand(b, t, t)), dim=2)[:, None]
                cached = torch.arange(n, device=x.device, dtype=torch.float32)[None, :]
                keys = torch.cat((cached.expand(b, n), pos), dim=1)
        elif attention_mask is None or _right_padded(attention_mask):
            pos = torch.arange(t, device=x.device, dtype=torch.float32)[None, :]
        else:
            keep = attention_mask.bool()
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0).float()
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            mask = causal[None, None] & keep[:, None, None, :]
            # a padding position attends to itself, so no row is empty (no NaN to spread)
            mask = mask | torch.eye(t, dtype=torch.bool, device=x.device)[None, None]
        spec = self.spec
        rope = {False: _rotary(pos, cast(torch.Tensor, self.inv_freq).to(x.device))}
        masks = {False: mask}
        if any(spec.sliding(k) for k in range(spec.num_layers)):
            rope[True] = _rotary(pos, cast(torch.Tensor, self.local_inv_freq).to(x.device))
            masks[True] = _window(mask, pos, pos if keys is None else keys,
                                  cast(int, spec.sliding_window))
        return _Pass(x, rope, masks, past)


def _rotary(pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of the rotary embedding at positions ``pos`` ``(rows, length)``, each
    ``(rows, 1, length, head_dim)``; ``sin`` carries ``rotate_half``'s sign (see ``_rotate``)."""
    freqs = pos[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    half = sin.shape[-1] // 2
    return emb.cos()[:, None], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, None]


def _window(mask: torch.Tensor | None, pos: torch.Tensor, keys: torch.Tensor,
            window: int) -> torch.Tensor | None:
    """``mask`` (None: causal) narrowed to keys less than ``window`` positions back from each
    query (transformers' ``sliding_window_overlay``: ``kv_idx > q_idx - window``).

    ``pos``: the queries' positions ``(1 | rows, length)``; ``keys``: the keys' ``(1 | rows,
    keys)``. None (plain causal attention) when no query reaches that far back: then the
    window changes nothing, and the fused causal kernel stays.
    """
    if float(pos.max()) - float(keys.min()) < window:
        return mask
    near = (pos[:, :, None] - keys[:, None, :]) < window  # (rows, length, keys)
    if mask is None:
        t = pos.shape[-1]
        mask = torch.ones(t, t, dtype=torch.bool, device=pos.device).tril()[None, None]
    # NOTE: every query still sees itself (distance 0), padding queries included (their
    # clamped position is their key's): no row is empty
    return mask & near[:, None]


def _right_padded(mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (or all ones)."""
    m = mask.long()
    return bool((m[:, 1:] <= m[:, :-1]).all()) and bool((m[:, 0] == 1).all())


class LlamaLM(nn.Module):
    """A causal LM with transformers' two accessors: ``get_decoder`` and ``get_output_embeddings``."""

    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.spec = spec
        self.config = spec  # ``name_or_path`` for callers that name injected models
        self.model = LlamaDecoder(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False, device="meta")

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``: the type of the matrix weights (see the module docstring)."""
        return precision_of(self.lm_head.weight.dtype)

    def get_decoder(self) -> LlamaDecoder:
        return self.model

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(batch, length, vocab)``."""
        hidden = self.model(input_ids, attention_mask).last_hidden_state
        return _product(self.lm_head, hidden)


def precision_of(dtype: torch.dtype) -> str:
    """The name (``DTYPES``) of a weight type."""
    for name, known in DTYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"weights of type {dtype} are not run natively")


def cast_weights(lm: LlamaLM, precision: str) -> LlamaLM:
    """``lm`` with its matrix weights (projections, embeddings) in ``precision``, in place.

    Norms and the rotary frequencies stay float32; tied embeddings stay tied.
    """
    dtype = DTYPES[precision]
    tied = lm.lm_head.weight is lm.model.embed_tokens.weight
    linears = [m for m in lm.modules() if isinstance(m, nn.Linear | nn.Embedding)]
    for module in linears:
        if not (tied and module is lm.lm_head):
            module.weight = nn.Parameter(module.weight.to(dtype), requires_grad=False)
    if tied:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    return lm


def _layout_tag() -> str:
    """12 hex digits of this module's source: what a cached converted model is keyed on, so a
    change to how weights are fused, folded or converted never reads an old file."""
    import hashlib

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def load_llama_cached(directory: Path, weights: Sequence[Path], precision: str) -> LlamaLM:
    """``load_llama``, reading (or, the first time, writing) the converted model beside the
    weights: ``native-PRECISION-LAYOUT.safetensors`` in ``directory``, the parameters exactly as
    ``load_llama`` builds them (fused, folded, converted), keyed by this module's source.

    For mtqa's own model cache only (a user's model directory is not written to). Reading it
    maps the file instead of converting 1 GB of float32 (Gemma-3-270M in bf16: 1.4-2.8 s to
    convert, 0.03 s to map); its pages are read on first use, from the page cache. Writing is
    best effort and atomic (a temporary file renamed into place); other layouts' files are
    removed when a new one is written. fp32 reads the weights themselves: nothing is cached.
    """
    if precision == "fp32":
        return load_llama(directory, weights, precision)
    cached = directory / f"native-{precision}-{_layout_tag()}.safetensors"
    if cached.is_file():
        try:
            return _load_converted(directory, cached)
        except Exception as exc:  # noqa: BLE001 - a derived file: any failure means convert again
            logger.warning("ignoring the converted model %s (%s); converting again", cached, exc)
    lm = load_llama(directory, weights, precision)
    _save_converted(lm, directory, cached)
    return lm


def _load_converted(directory: Path, cached: Path) -> LlamaLM:
    from safetensors.torch import load_file

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    lm = LlamaLM(LlamaSpec.from_config(config, name_or_path=str(directory)))
    state = load_file(str(cached))
    tied = lm.spec.tie_word_embeddings and "model.embed_tokens.weight" not in state
    if tied and "lm_head.weight" in state:
        state["model.embed_tokens.weight"] = state["lm_head.weight"]
    lm.load_state_dict(state, strict=True, assign=True)
    if tied:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{', '.join(left)} not in the file")
    lm.requires_grad_(False)
    lm.eval()
    return lm


def _save_converted(lm: LlamaLM, directory: Path, cached: Path) -> None:
    import os
    import tempfile

    from safetensors.torch import save_file

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{cached.name}.", dir=directory)
        os.close(fd)
        try:
            state = {k: v.contiguous() for k, v in lm.state_dict().items()}
            if lm.lm_head.weight is lm.model.embed_tokens.weight:
                del state["model.embed_tokens.weight"]  # tied: stored once, as the head
            save_file(state, tmp)
            os.chmod(tmp, 0o644)  # NOTE: mkstemp makes it 0600; readable like the cache's other files
            os.replace(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        layouts = cached.name.rsplit("-", 1)[0] + "-*.safetensors"  # this precision's
        for old in directory.glob(layouts):
            if old != cached:
                old.unlink(missing_ok=True)
    except (OSError, RuntimeError, ValueError) as exc:
        logger.info("not caching the converted model in %s: %s", directory, exc)


#: values per block when a large matrix is converted to a narrower type as it loads
CAST_BLOCK = 1 << 24


def load_llama(directory: Path, weights: Sequence[Path], precision: str = "fp32") -> LlamaLM:
    """Build a ``LlamaLM`` from ``config.json`` and safetensors ``weights`` in ``directory``.

    ``precision`` (``DTYPES``): the type of the matrix weights (norms are float32 either way).

    Raises:
        ValueError: the configuration is not a plain Llama or Gemma-3 model, or a tensor is
            missing or has the wrong shape.
    """
    from safetensors import safe_open

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    spec = LlamaSpec.from_config(config, name_or_path=str(directory))
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, not {precision!r}")
    matrix = DTYPES[precision]
    lm = LlamaLM(spec)
    where: dict[str, Path] = {}
    for path in weights:
        if path.suffix != ".safetensors":
            raise ValueError(f"{path.name}: only safetensors weights are read natively")
        with safe_open(str(path), framework="pt") as fh:
            where.update({key: path for key in fh.keys()})  # noqa: SIM118 - not a dict
    # NOTE: each tensor opens its file anew: a file kept open stays mapped, and every page of
    # it read so far counts in the process's resident memory (Gemma's 1.07 GB float32 file
    # peaked the bf16 load at 1.9 GB); closed, the pages stay in the page cache only

    def file_of(key: str) -> str:
        if key not in where:
            raise ValueError(f"tensor {key} is missing from {', '.join(p.name for p in weights)}")
        return str(where[key])

    def get(key: str) -> torch.Tensor:
        with safe_open(file_of(key), framework="pt") as fh:
            tensor: torch.Tensor = fh.get_tensor(key).float()
        return tensor

    def put(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
        old = getattr(module, name)
        if tuple(old.shape) != tuple(tensor.shape):
            err = f"{name}: expected shape {tuple(old.shape)}, the weights have {tuple(tensor.shape)}"
            raise ValueError(err)
        if isinstance(module, nn.Linear | nn.Embedding):
            tensor = tensor.to(matrix)
        setattr(module, name, nn.Parameter(tensor.contiguous(), requires_grad=False))

    embed_key = "model.embed_tokens.weight" if "model.embed_tokens.weight" in where else ""
    head_key = "lm_head.weight" if "lm_head.weight" in where else ""
    def get_matrix(key: str) -> torch.Tensor:
        """A large matrix straight in the weights' type, converted in blocks of rows, so that
        its float32 copy is never whole in memory (Gemma's 262k x 640 embedding is 671 MB in
        float32: read whole, the bf16 load peaked at 1.9 GB)."""
        if matrix == torch.float32:
            return get(key)
        with safe_open(file_of(key), framework="pt") as fh:
            rows = fh.get_slice(key)
            shape = tuple(rows.get_shape())
            out = torch.empty(shape, dtype=matrix)
            step = max(1, CAST_BLOCK // max(1, int(math.prod(shape[1:]))))
            for start in range(0, shape[0], step):
                out[start : start + step] = rows[start : start + step].float()
        return out

    embed = get_matrix(embed_key or head_key)
    put(lm.model.embed_tokens, "weight", embed)
    if spec.tie_word_embeddings or not head_key:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    else:
        put(lm.lm_head, "weight", get_matrix(head_key))
    for i, layer in enumerate(cast(list[_Layer], list(lm.model.layers))):
        p = f"model.layers.{i}."
        att, mlp = p + "self_attn.", p + "mlp."
        if spec.gemma:
            put(layer, "input_norm", get(p + "input_layernorm.weight") + 1.0)
            put(layer, "post_norm", get(p + "pre_feedforward_layernorm.weight") + 1.0)
            put(layer, "attn_out_norm", get(p + "post_attention_layernorm.weight") + 1.0)
            put(layer, "mlp_out_norm", get(p + "post_feedforward_layernorm.weight") + 1.0)
            put(layer, "q_norm", get(att + "q_norm.weight") + 1.0)
            put(layer, "k_norm", get(att + "k_norm.weight") + 1.0)
        else:
            put(layer, "input_norm", get(p + "input_layernorm.weight"))
            put(layer, "post_norm", get(p + "post_attention_layernorm.weight"))
        qkv = torch.cat([get(att + f"{n}_proj.weight") for n in "qkv"])
        put(layer.qkv, "weight", qkv)
        put(layer.o, "weight", get(att + "o_proj.weight"))
        put(layer.gate_up, "weight", torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")]))
        put(layer.down, "weight", get(mlp + "down_proj.weight"))
    # NOTE: Gemma's norms scale by ``1 + w`` (transformers adds the 1 in float32 at every call;
    # adding it once here gives the same float32 factors)
    put(lm.model, "norm", get("model.norm.weight") + (1.0 if spec.gemma else 0.0))
    lm.eval()
    return lm
