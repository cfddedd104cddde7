"""The README's tenants examples (the seed's two scenarios) are valid configuration documents."""

from __future__ import annotations

import re
from pathlib import Path

from picker.config import load_config_text
from picker.tenants.ledger import CONCURRENT, COST_DAY, TOKENS_HOUR, TOKENS_MINUTE
from picker.tenants.policy import TenantsPolicy, nano

README = Path(__file__).resolve().parents[3] / "README.md"


def _examples() -> list[TenantsPolicy]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    policies = []
    for block in blocks:
        if "\ntenants:" in block:
            cfg = load_config_text(block).settings.tenants
            assert cfg is not None
            policies.append(TenantsPolicy.from_config(cfg))
    return policies


def test_token_limit_per_user_header_and_per_tier_hour_and_day_budgets() -> None:
    per_user, tiers = _examples()
    assert per_user.header == "x-user-id"
    limits = per_user.limits("any-user")
    assert limits is not None
    assert (limits[TOKENS_MINUTE], limits[CONCURRENT]) == (20000, 4)
    team = tiers.limits("someone", "team")
    assert team is not None
    assert (team[TOKENS_HOUR], team[COST_DAY]) == (500_000, nano(100))
    batch = tiers.limits("nightly-batch")
    assert batch is not None
    assert (batch[TOKENS_HOUR], batch[CONCURRENT]) == (500_000, 8)
    free = tiers.limits("stranger")
    assert free is not None
    assert free[COST_DAY] == nano(1)
