"""Fixtures of the tenants unit tests: a policy from a real config document, a fake wall clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from picker.config import load_config_text
from picker.tenants.policy import TenantsPolicy

DATA = Path(__file__).resolve().parents[2] / "data" / "openai"

DOC = """
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  defaultOutputTokens: 256
  tierHeader: x-tenant-tier
  tiers:
  - {name: free, limits: {tokensPerMinute: 1000, requestsPerMinute: 5}}
  - {name: pro, limits: {tokensPerHour: 500000, costPerDay: 100}}
  tenants:
  - {id: acme, tier: pro, limits: {concurrent: 2}}
  - {id: tight, limits: {tokensPerMinute: 300}}
  defaultTier: free
  prices:
  - {model: m, inputPer1M: 0.15, outputPer1M: 0.6}
  - {model: big, inputPer1M: 100000, outputPer1M: 200000}
  - {model: gpt-5-nano, inputPer1M: 0.05, outputPer1M: 0.4, cachedInputPer1M: 0.005}
"""


class WallClock:
    def __init__(self, now: float = 1_760_000_010.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policy() -> TenantsPolicy:
    cfg = load_config_text(DOC).settings.tenants
    assert cfg is not None
    return TenantsPolicy.from_config(cfg)


@pytest.fixture
def clock() -> WallClock:
    return WallClock()
