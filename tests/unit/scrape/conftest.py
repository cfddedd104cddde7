"""Fixtures for the extraction tests: the real pages (read from tests/data/metrics), a checker and a
one-call extraction."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from picker.scrape import BUILTIN_ENGINES, EngineSpec, Extractor
from picker.state.metrics import EndpointMetrics

METRICS_DIR = Path(__file__).resolve().parents[2] / "data" / "metrics"

_FLOATS = ("waiting", "running", "kv_usage", "max_lora", "block_size", "num_blocks")
_TUPLES = ("lora_active", "lora_waiting")


def extract(engine: str | EngineSpec, page: bytes | str) -> EndpointMetrics:
    """``page`` read as the scraper reads it with ``engine`` (a built-in engine's name, or a spec)."""
    spec = BUILTIN_ENGINES[engine] if isinstance(engine, str) else engine
    return Extractor(spec).extract(page)


@pytest.fixture(scope="session")
def pages() -> dict[str, bytes]:
    """Every real page, by file name."""
    found = {p.name: p.read_bytes() for p in sorted(METRICS_DIR.glob("*.txt"))}
    assert len(found) >= 8, f"test pages missing from {METRICS_DIR}"
    return found


def _check(m: EndpointMetrics, **expected: Any) -> None:
    """Assert the given fields; every field not given must be unknown (NaN / None)."""
    unknown = set(expected) - set(_FLOATS) - set(_TUPLES)
    assert not unknown, f"not EndpointMetrics fields: {unknown}"
    for name in _FLOATS:
        got = getattr(m, name)
        want = expected.get(name, math.nan)
        if math.isnan(want):
            assert math.isnan(got), f"{name}: expected unknown, got {got!r}"
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), f"{name}: {got!r} != {want!r}"
    for name in _TUPLES:
        assert getattr(m, name) == expected.get(name), f"{name}: {getattr(m, name)!r}"


@pytest.fixture
def expect() -> Callable[..., None]:
    """``expect(metrics, waiting=1.0, ...)``: the named fields equal, all others unknown."""
    return _check
