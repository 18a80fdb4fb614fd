"""Renderers: pure functions from a Report to text (terminal, JSON, HTML)."""

from __future__ import annotations

__all__: list[str] = []
