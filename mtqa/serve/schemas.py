"""What the service reads: request bodies (pydantic models, which the OpenAPI schema shows) and
their conversion into ``Document``s, with the limits applied."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mtqa.serve.problems import ProblemError
from mtqa.types import Document

__all__ = ["BatchIn", "DocumentIn", "GateIn", "to_document"]


def _encodable(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        err = f"{what} holds a lone surrogate (\\u{ord(value[exc.start]):04x} at {exc.start})"
        raise ValueError(err) from exc
    return value


def _plain_json(value: Any, where: str) -> None:
    """Refuse what cannot be written back as strict JSON: lone surrogates, NaN and infinities."""
    if isinstance(value, str):
        _encodable(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        err = f"{where} is {value}, which JSON cannot hold"
        raise ValueError(err)
    elif isinstance(value, dict):
        for k, v in value.items():
            _encodable(str(k), f"a key of {where}")
            _plain_json(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_json(v, f"{where}[{i}]")


class DocumentIn(BaseModel):
    """One document to check: the fields of a JSONL record."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=1024, description="Echoed in the report.")
    mt: str = Field(..., min_length=1, description="The machine translation to check.")
    ref: str | list[str] | None = Field(
        None, description="Reference text(s): a parallel translation or a comparable article.")
    src: str | None = Field(None, description="The source text.")
    meta: dict[str, Any] | None = Field(None, description="Kept and echoed in the report.")

    @field_validator("mt")
    @classmethod
    def _mt(cls, v: str) -> str:
        if not v.strip():
            err = "is empty: there is no text to check"
            raise ValueError(err)
        return _encodable(v, "the text")

    @field_validator("id", "src")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return None if v is None else _encodable(v, "the text")

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str | list[str] | None) -> str | list[str] | None:
        for r in [v] if isinstance(v, str) else (v or []):
            _encodable(r, "the reference")
        return v

    @field_validator("meta")
    @classmethod
    def _meta(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _plain_json(v, "meta")
        return v


class GateIn(DocumentIn):
    """A document and the name of the policy to gate it with."""

    policy: str | None = Field(None, max_length=256,
                               description="A policy of the server's --policy-dir (by file stem).")


class BatchIn(BaseModel):
    """Documents to check together; each is validated on its own (a bad one gets its own error)."""

    model_config = ConfigDict(extra="forbid")

    documents: list[dict[str, Any]] = Field(..., description="Objects of the /v1/check shape.")


def to_document(item: DocumentIn, *, default_id: str, max_chars: int,
                where: str = "") -> Document:
    """The Document of a request body.

    Raises:
        ProblemError: 413 when a text field is longer than ``max_chars``.
    """
    refs: tuple[str, ...] = (() if item.ref is None or item.ref == ""
                             else (item.ref,) if isinstance(item.ref, str) else tuple(item.ref))
    fields = [("mt", item.mt), *((f"ref[{i}]", r) for i, r in enumerate(refs)),
              ("src", item.src or "")]
    for name, text in fields:
        if len(text) > max_chars:
            err = (f"{where}{name} has {len(text):,} characters; this server checks at most "
                   f"{max_chars:,} per field (split the article, or start the server with a "
                   f"larger --max-chars)")
            raise ProblemError(413, err, slug="text-too-long", field=f"{where}{name}")
    meta: Mapping[str, Any] = MappingProxyType(dict(item.meta or {}))
    return Document(id=item.id or default_id, mt=item.mt, ref=refs, src=item.src or None,
                    meta=meta, origin=where.rstrip(".") or "request")
