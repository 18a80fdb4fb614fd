"""mtqa's own Llama and Gemma-3 forward (mtqa/llama.py) against transformers' LlamaForCausalLM and
Gemma3ForCausalLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mtqa.checkers.fluency import FluencyChecker
from mtqa.errors import ConfigError
from mtqa.llama import LlamaLM, load_llama, unsupported
from mtqa.models import load_lm
from mtqa.surprisal import batches, score_continuations, score_sequences, surprisal

from conftest import ABC, read

TINY: dict[str, Any] = {
    "model_type": "llama", "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80,
    "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 8,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


#: a Gemma-3 text model small enough to test, with a sliding window (8) shorter than the test
#: sequences, an attention scale that is not head_dim's, and each layer type's own rotary base
TINY_GEMMA: dict[str, Any] = {
    "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "query_pre_attn_scalar": 24, "sliding_window": 8, "rms_norm_eps": 1e-6,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
    "max_position_embeddings": 256, "attn_implementation": "eager",
}
FAMILIES = ["llama", "gemma3"]


def _tiny_hf(tmp_path: Path, family: str = "llama", **changes: Any) -> tuple[Any, Path]:
    """A random transformers Llama (or Gemma-3) saved as safetensors: the reference
    implementation."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model: Any
    if family == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**{**TINY_GEMMA, **changes})).eval()
        low, high = -0.5, 0.5  # Gemma's norms scale by 1 + w
    else:
        model = LlamaForCausalLM(LlamaConfig(**{**TINY, **changes})).eval()
        low, high = 0.5, 1.5
    with torch.no_grad():  # norms start at 1 (Gemma: 0): make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(low, high)
    model.save_pretrained(tmp_path)
    return model, tmp_path


@pytest.mark.parametrize(("family", "tied"),
                         [("llama", True), ("llama", False), ("gemma3", True)],
                         ids=["tied", "untied", "gemma3"])
def test_logits_match_transformers(tmp_path: Path, family: str, tied: bool) -> None:
    hf, path = _tiny_hf(tmp_path, family, tie_word_embeddings=tied)
    native = load_llama(path, [path / "model.safetensors"])
    ids = torch.randint(0, TINY["vocab_size"], (3, 40))
    with torch.inference_mode():
        want = hf(input_ids=ids).logits
        got = native(ids)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert (native.lm_head.weight is native.model.embed_tokens.weight) == tied


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_load_converts_large_matrices_in_blocks_to_the_same_weights(
        tmp_path: Path, family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedding and head are converted to bf16 a few rows at a time (so their float32 copy
    is never whole in memory): the weights are the ones a whole conversion gives."""
    import mtqa.llama as llama

    hf, path = _tiny_hf(tmp_path, family, tie_word_embeddings=False)
    whole = load_llama(path, [path / "model.safetensors"], "bf16")
    monkeypatch.setattr(llama, "CAST_BLOCK", 48 * 5)  # 5 rows of 48 per block, a partial last
    blocked = load_llama(path, [path / "model.safetensors"], "bf16")
    for (name, a), (_, b) in zip(whole.named_parameters(), blocked.named_parameters()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    want = hf.get_output_embeddings().weight.detach().to(torch.bfloat16)
    assert torch.equal(blocked.lm_head.weight, want)
    assert blocked.model.embed_tokens.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(("family", "tied"),
                         [("llama", True), ("llama", False), ("gemma3", True)],
                         ids=["tied", "untied", "gemma3"])
def test_converted_model_is_cached_and_read_back_exactly(tmp_path: Path, family: str,
                                                         tied: bool) -> None:
    """The bf16 model written beside the cache's weights reads back as the same parameters
    (ties kept), a file of another layout or a broken one is not read, fp32 writes nothing."""
    import mtqa.llama as llama

    _, path = _tiny_hf(tmp_path, family, tie_word_embeddings=tied)
    weights = [path / "model.safetensors"]
    assert isinstance(llama.load_llama_cached(path, weights, "fp32"), LlamaLM)
    assert not list(path.glob("native-*"))
    first = llama.load_llama_cached(path, weights, "bf16")  # converts and writes
    (cached,) = path.glob("native-bf16-*.safetensors")
    assert cached.name == f"native-bf16-{llama._layout_tag()}.safetensors"
    assert cached.stat().st_mode & 0o777 == 0o644  # readable by whoever shares the cache
    again = llama.load_llama_cached(path, weights, "bf16")  # reads the file
    want = dict(load_llama(path, weights, "bf16").named_parameters())
    for lm in (first, again):
        got = dict(lm.named_parameters())
        assert got.keys() == want.keys()
        for name, tensor in want.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
        assert (lm.lm_head.weight is lm.model.embed_tokens.weight) == tied
    ids = torch.randint(0, TINY["vocab_size"], (2, 20))
    with torch.inference_mode():
        assert torch.equal(first(ids), again(ids))
    # a broken file is ignored (and replaced); another layout's file is removed on writing
    cached.write_bytes(b"not safetensors")
    stale = path / "native-bf16-000000000000.safetensors"
    stale.write_bytes(b"old layout")
    third = llama.load_llama_cached(path, weights, "bf16")
    assert torch.equal(third.model.norm, want["model.norm"])
    assert sorted(p.name for p in path.glob("native-*")) == [cached.name]


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_and_masks(tmp_path: Path, family: str) -> None:
    hf, path = _tiny_hf(tmp_path, family)
    native = load_llama(path, [path / "model.safetensors"])
    decoder = native.get_decoder()
    torch.manual_seed(1)
    long, short = torch.randint(0, 97, (30,)), torch.randint(0, 97, (18,))
    with torch.inference_mode():
        alone = decoder(short[None]).last_hidden_state[0]
        # right padding, as mtqa pads: causal attention alone, real rows unchanged
        ids = torch.zeros(2, 30, dtype=torch.long)
        ids[0], ids[1, :18] = long, short
        mask = (torch.arange(30)[None] < torch.tensor([[30], [18]])).long()
        padded = decoder(ids, mask).last_hidden_state[1, :18]
        assert torch.allclose(padded, alone, atol=1e-5)
        # any other mask is applied explicitly, positions counted over real tokens
        left = torch.zeros(1, 25, dtype=torch.long)
        left[0, 7:] = short
        lmask = torch.zeros(1, 25, dtype=torch.long)
        lmask[0, 7:] = 1
        out = decoder(left, lmask).last_hidden_state[0]
        assert not out.isnan().any()
        assert torch.allclose(out[7:], alone, atol=1e-4)
        want = hf.model(input_ids=left, attention_mask=lmask).last_hidden_state[0, 7:]
        assert torch.allclose(out[7:], want, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"model_type": "qwen2"}, "model_type"),
        ({**TINY_GEMMA, "model_type": "gemma3_text", "final_logit_softcapping": 30.0},
         "final_logit_softcapping"),
        ({**TINY_GEMMA, "model_type": "gemma3_text", "hidden_activation": "silu"},
         "hidden_activation"),
        ({**TINY_GEMMA, "model_type": "gemma3_text", "layer_types": ["chunked_attention"] * 3},
         "layer_types"),
        ({"attention_bias": True}, "biases"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling"),
        ({"pretraining_tp": 2}, "pretraining_tp"),
    ],
)
def test_unsupported_configs_say_why(change: dict[str, Any], reason: str) -> None:
    assert unsupported(TINY) is None
    why = unsupported({**TINY, **change})
    assert why is not None and reason in why


def test_broken_weights_are_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _, path = _tiny_hf(tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight is missing"):
        load_llama(path, [path / "model.safetensors"])
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    (path / "config.json").write_text(json.dumps({**config, "hidden_size": 64}), encoding="utf-8")
    with pytest.raises(ValueError, match="shape"):
        load_llama(path, [path / "model.safetensors"])


def test_native_backend_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    _, path = _tiny_hf(tmp_path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    (path / "config.json").write_text(json.dumps({**config, "mlp_bias": True}), encoding="utf-8")
    with pytest.raises(ConfigError, match="native backend cannot run"):
        load_lm(str(path), backend="native")
    with pytest.raises(ConfigError, match="backend must be one of"):
        load_lm(str(path), backend="onnx")


@pytest.mark.parametrize(
    ("lengths", "rows", "tokens", "want"),
    [
        # padded to 1024, 832, 576, 576, 576, 512: a pass holds one padded length
        ([1024, 800, 550, 520, 520, 500], 32, 2048, [[0], [1], [2, 3, 4], [5]]),
        ([1500, 40, 40], 32, 2048, [[0], [1, 2]]),
        ([40] * 5, 2, 2048, [[0, 1], [2, 3], [4]]),
        ([3000], 8, 2048, [[0]]),
        ([], 8, 2048, []),
    ],
)
def test_batches_bound_rows_and_padded_tokens(
    lengths: list[int], rows: int, tokens: int, want: list[list[int]]
) -> None:
    assert batches(lengths, rows, tokens) == want


# --- with the real model ------------------------------------------------------------------------


@pytest.mark.model
def test_smollm2_runs_natively_with_transformers_numbers() -> None:
    """SmolLM2-135M (``--lm-model SmolLM2-135M-Instruct``) runs on mtqa.llama by default and
    scores as transformers does (the default model, Gemma-3-270M, has its own such test in
    tests/test_precision.py)."""
    from mtqa.segment import segment
    from mtqa.types import Document

    smol = "SmolLM2-135M-Instruct"
    native = FluencyChecker(precision="fp32", lm_model=smol)  # auto may pick bf16
    assert isinstance(native._require()[0], LlamaLM)
    assert "|impl:native|" in native.signature and "model:SmolLM2-135M-Instruct|" in native.signature
    reference = FluencyChecker(backend="transformers", lm_model=smol)
    assert not isinstance(reference._require()[0], LlamaLM)
    assert "|impl:transformers|" in reference.signature
    doc = segment(Document("abc", read(ABC)[:4000]))
    a, b = native.score_words([doc])[0], reference.score_words([doc])[0]
    assert len(a.token_surprisal) > 500
    assert max(abs(x - y) for x, y in zip(a.token_surprisal, b.token_surprisal)) < 1e-3
    ra, rb = native.analyse(doc, a), reference.analyse(doc, b)
    assert [(f.start, f.end, f.severity) for f in ra.findings] == [
        (f.start, f.end, f.severity) for f in rb.findings
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_continuations_from_a_cache_equal_whole_sequences(tmp_path: Path, family: str) -> None:
    """Reading a shared context once (cache) scores as reading each pair whole, in any batch
    (Gemma: contexts and continuations longer than its sliding window)."""
    hf, path = _tiny_hf(tmp_path, family)
    native = load_llama(path, [path / "model.safetensors"])
    torch.manual_seed(2)

    def ids(n: int) -> list[int]:
        return torch.randint(0, 97, (n,)).tolist()

    ctx_a, ctx_b = ids(12), ids(7)
    items = [(ctx_a, ids(9)), (ctx_b, ids(15)), (ctx_a, ids(4)), (ctx_a, ids(11)), (ctx_b, [])]
    whole = score_sequences(native, [((*c, *t), len(c)) for c, t in items], max_rows=8,
                            max_tokens=512)
    for rows in (1, 2, 8):
        cached = score_continuations(native, items, max_rows=rows, max_tokens=512)
        assert [len(x) for x in cached] == [len(t) for _, t in items]
        for got, want in zip(cached, whole):
            assert got == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="does not extend a cache"):
        decoder = native.get_decoder()
        read = decoder(torch.tensor([ctx_a]), return_cache=True)
        decoder(torch.tensor([ids(3)]), past=read.cache, return_cache=True)
    alone = score_continuations(native, items[2:3], max_rows=8, max_tokens=512)
    assert alone[0] == pytest.approx(whole[2], abs=1e-4)
    # transformers models read each pair whole: the same numbers
    via_hf = score_continuations(hf, items, max_rows=8, max_tokens=512)
    for got, want in zip(via_hf, whole):
        assert got == pytest.approx(want, abs=1e-4)


def test_blocked_head_equals_the_full_log_softmax() -> None:
    """The vocabulary-blocked normaliser gives -log_softmax at the target, as the whole head does."""
    torch.manual_seed(3)
    vocab, hidden = 5000, 48  # several HEAD_BLOCKs, the last one partial
    plain = torch.nn.Linear(hidden, vocab, bias=False)
    states = torch.randn(700, hidden) * 3  # more rows than one head chunk (ROWS)
    targets = torch.randint(0, vocab, (700,))
    want = -torch.log_softmax(plain(states).double(), dim=1).gather(1, targets[:, None])[:, 0]
    got = surprisal(plain, states, targets)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-4)
    # a head with a bias is called whole: the same numbers
    biased = torch.nn.Linear(hidden, vocab, bias=True)
    with torch.no_grad():
        biased.weight.copy_(plain.weight)
        biased.bias.zero_()
    assert surprisal(biased, states, targets).tolist() == pytest.approx(want.tolist(), abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_continue_their_own_contexts_in_one_pass(tmp_path: Path, family: str) -> None:
    """past_lengths: each row reads only its own context's first positions of the cache."""
    _, path = _tiny_hf(tmp_path, family)
    decoder = load_llama(path, [path / "model.safetensors"]).get_decoder()
    torch.manual_seed(4)
    ctx_a, ctx_b = torch.randint(0, 97, (1, 9)), torch.randint(0, 97, (1, 5))
    cont = torch.randint(0, 97, (2, 6))
    with torch.inference_mode():
        padded = torch.cat((ctx_a, torch.cat((ctx_b, torch.zeros(1, 4, dtype=torch.long)), 1)))
        mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
        read = decoder(padded, mask, return_cache=True)
        both = decoder(cont, past=read.cache, past_lengths=[9, 5]).last_hidden_state
        for row, ctx in enumerate((ctx_a, ctx_b)):
            whole = decoder(torch.cat((ctx, cont[row : row + 1]), 1)).last_hidden_state
            assert torch.allclose(both[row], whole[0, ctx.shape[1] :], atol=1e-4)
        with pytest.raises(ValueError, match="one length per row"):
            decoder(cont, past=read.cache, past_lengths=[9])
        with pytest.raises(ValueError, match="pass past too"):
            decoder(cont, past_lengths=[9, 5])



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(("k", "n"), [(640, 1536), (1024, 640), (2048, 640), (640, 4096),
                                      (576, 960), (1536, 576)])
def test_a_rows_product_does_not_depend_on_the_other_rows(k: int, n: int,
                                                          dtype: torch.dtype) -> None:
    """The decoder's products (Gemma-3-270M's and SmolLM2's shapes): a row gives the same floats
    alone, among 33, 300 or 1,300 rows, anywhere among them. oneDNN's AMX kernels change with
    the number of rows (issue 17: 64-300 rows of 2,048 x 640 in bf16 gave other floats than
    2,048 rows); every product runs on exactly ROWS rows."""
    from mtqa.llama import ROWS, row_product

    torch.manual_seed(k + n)
    w = (torch.randn(n, k) * 0.05).to(dtype)
    pool = torch.randn(1300, k).to(dtype)
    probe = pool[:5]
    alone = row_product(probe, w)
    assert alone.shape == (5, n) and alone.dtype == dtype
    assert torch.equal(alone, torch.mm(torch.cat([probe, probe.new_zeros(ROWS - 5, k)]),
                                       w.t())[:5])
    for m in (33, 64, 300, ROWS, ROWS + 1, 1300):
        at = torch.randperm(m)[:5]
        x = pool[torch.randperm(1300)[:m]].clone()
        x[at] = probe
        assert torch.equal(row_product(x, w)[at], alone), m
    # any leading shape: (batch, length, k) as the decoder passes it
    assert torch.equal(row_product(pool[:300].reshape(3, 100, k), w).reshape(300, n)[:5], alone)
    # and the vocabulary head: a row's surprisal does not depend on how many rows are scored
    head = torch.nn.Linear(k, 3000, bias=False).to(dtype)
    targets = torch.randint(0, 3000, (1300,))
    states = torch.randn(1300, k)
    every = surprisal(head, states, targets)
    for m in (1, 40, 700):
        assert torch.equal(surprisal(head, states[:m], targets[:m]), every[:m]), m


def test_every_product_has_rows_rows_the_head_included(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder's products and the vocabulary head's all run on ``mtqa.llama.ROWS`` rows
    (read at call time), whatever the number of rows asked for: the invariant batch
    invariance rests on, checked on the shapes themselves (on a CPU whose kernels do not
    change with the rows, the floats alone could not show a product of another size)."""
    from mtqa import llama

    monkeypatch.setattr(llama, "ROWS", 64)
    seen: list[int] = []
    mm = torch.mm

    def spy(a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.append(a.shape[0])
        return mm(a, b, **kw)

    monkeypatch.setattr(torch, "mm", spy)
    torch.manual_seed(5)
    w = torch.randn(48, 32)
    for m in (1, 63, 64, 65, 200):
        y = llama.row_product(torch.randn(m, 32), w)
        assert y.shape == (m, 48)
    head = torch.nn.Linear(32, 5000, bias=False)
    surprisal(head, torch.randn(150, 32), torch.randint(0, 5000, (150,)))
    assert seen and set(seen) == {64}, sorted(set(seen))


def test_the_row_count_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """512 rows per product where the CPU has AMX (its tile kernels want them), 256 elsewhere
    (without AMX the padding costs a lone short document more than the bigger products gain);
    where torch cannot say, what /proc/cpuinfo lists, and 256 where neither can; the module's
    ROWS is what this machine gets."""
    from pathlib import Path

    from mtqa import llama, models

    caps = dict(torch.cpu.get_capabilities())
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**caps, "amx_bf16": True})
    assert llama._rows_for_this_cpu() == 512
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {**caps, "amx_bf16": False, "avx512_bf16": True})
    assert llama._rows_for_this_cpu() == 256

    def broken() -> dict[str, bool]:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    try:
        listed = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        listed = []
    assert llama._rows_for_this_cpu() == (512 if "amx_bf16" in listed else 256)

    class Unreadable:
        def __init__(self, *_: object) -> None:
            pass

        def read_text(self, **_: object) -> str:
            raise OSError("no /proc here")

    monkeypatch.setattr(models, "Path", Unreadable)
    assert llama._rows_for_this_cpu() == 256
    assert llama.ROWS == (512 if caps.get("amx_bf16") else 256)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_passes_run_together_give_each_pass_its_own_floats(tmp_path: Path, family: str,
                                                           precision: str) -> None:
    """forward_many runs passes of other widths (and masks, a sliding window shorter than
    some) through the layers together: each pass's hidden states are the floats of running
    it alone, and score_sequences, which packs its passes so, returns the floats of scoring
    each sequence alone."""
    _, path = _tiny_hf(tmp_path, family)
    native = load_llama(path, [path / "model.safetensors"], precision=precision)
    decoder = native.get_decoder()
    torch.manual_seed(2)
    passes = []
    for rows, width, real in ((3, 40, 33), (1, 8, 8), (5, 16, 12), (2, 64, 64)):
        ids = torch.randint(0, 97, (rows, width))
        mask = (torch.arange(width)[None] < torch.tensor([[real]] * rows)).long()
        passes.append((ids, mask))
    left = torch.ones(2, 16, dtype=torch.long)
    left[:, :4] = 0  # padding at the start: an explicit mask
    passes.append((torch.randint(0, 97, (2, 16)), left))
    with torch.inference_mode():
        alone = [decoder(ids, mask).last_hidden_state for ids, mask in passes]
        together = [o.last_hidden_state for o in decoder.forward_many(passes)]
        # and passes that continue cached contexts, beside ones that read anew
        read = decoder(passes[0][0], passes[0][1], return_cache=True)
        cont = (torch.randint(0, 97, (3, 8)), torch.ones(3, 8, dtype=torch.long), read.cache,
                [33, 20, 7])
        cont_alone = decoder(cont[0], cont[1], past=cont[2], past_lengths=cont[3])
        mixed = decoder.forward_many([passes[2], cont, passes[3]])
        with pytest.raises(ValueError, match="return_cache"):
            decoder.forward_many([cont], return_cache=True)
    assert [t.shape for t in together] == [a.shape for a in alone]
    for a, t in zip(alone, together):
        assert torch.equal(a, t)
    assert torch.equal(mixed[1].last_hidden_state, cont_alone.last_hidden_state)
    assert torch.equal(mixed[0].last_hidden_state, alone[2])
    rng = torch.Generator().manual_seed(5)
    seqs = [(torch.randint(0, 97, (n,), generator=rng).tolist(), 1)
            for n in (5, 9, 17, 17, 30, 31, 44, 60, 61, 90, 3, 12)]
    each = [score_sequences(native, [s], max_rows=8, max_tokens=512)[0] for s in seqs]
    assert score_sequences(native, seqs, max_rows=3, max_tokens=128) == each
    # continuations: contexts of several lengths, some shared, read in packed passes
    items = [(s[:k], s[k:]) for s, _ in seqs for k in (1, len(s) // 2) if len(s) > k]
    one = [score_continuations(native, [it], max_rows=8, max_tokens=512)[0] for it in items]
    assert score_continuations(native, items, max_rows=3, max_tokens=128) == one
