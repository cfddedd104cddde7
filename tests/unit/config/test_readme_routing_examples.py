"""The README's examples for several profiles and cost-aware routing are valid documents that do what the
text says."""

from __future__ import annotations

import re
from pathlib import Path

from picker.config import load_config_text
from picker.state.prices import PriceBook

README = Path(__file__).resolve().parents[3] / "README.md"


def _block(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    found = re.search(r"```yaml\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None, heading
    return found.group(1)


def test_the_profiles_example() -> None:
    profiles = load_config_text(_block("### Several profiles")).build_profiles()
    assert [s.profile_name for s in profiles.schedulers] == ["balanced", "latency", "batch"]
    assert profiles.choose("critical", 0).profile == "latency"
    assert profiles.choose("nightly", -1).profile == "batch"
    assert profiles.choose("", 0).profile == "balanced"
    assert profiles.choose("", 0, {"x-picker-profile": "batch"}).profile == "batch"


def test_the_endpoint_prices_example() -> None:
    cfg = load_config_text(_block("### Cost-aware routing"))
    book = PriceBook.from_config(cfg.settings.endpoint_prices)
    assert book.default == (0.30, 1.20)
    assert dict(book.engines) == {"sglang": (0.20, 0.80)}


def test_the_external_endpoints_example() -> None:
    settings = load_config_text(_block("### External endpoints")).settings
    (managed,) = settings.external_endpoints
    assert (managed.name, managed.address, managed.priority) == ("managed-api", "10.96.12.7:8080", 0)
    assert managed.limits is not None
    assert (managed.limits.requests_per_minute, managed.limits.tokens_per_minute) == (600, 200000)
    assert settings.spillover.objectives == ("bulk-offload",)


def test_the_prometheus_scorer_example() -> None:
    profiles = load_config_text(_block("### The operator's Prometheus signals")).build_profiles()
    weights = {ws.scorer.name: ws.weight for ws in profiles.default.scorers}
    assert weights == {"queue-depth": 0.4, "p95": 0.3, "errors": 0.2}
