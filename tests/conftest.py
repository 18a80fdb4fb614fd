"""Shared test data: the seed pair, its hand annotation, small input fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
FIXTURES = ROOT / "fixtures"
ABC = SEEDS / "000_df5d74dac48ad764.txt"
HILL = SEEDS / "002_98c53f21e16ae677.txt"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def abc_text() -> str:
    return read(ABC)


@pytest.fixture(scope="session")
def hill_text() -> str:
    return read(HILL)


@pytest.fixture(scope="session")
def annotation() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(read(FIXTURES / "seeds_annotation.json"))
    return data


@pytest.fixture(scope="session")
def emoji_text() -> str:
    return read(FIXTURES / "emoji_cjk.txt")
