"""Bounded label values (count and length) for every label a peer chooses."""

from __future__ import annotations

import pytest

from picker.labels import OTHER, BoundedLabel
from picker.scrape.engines import engine_specs
from picker.scrape.extract import MAX_ADAPTERS, Extractor


def test_count_and_length_are_bounded_and_pinned_values_always_pass() -> None:
    label = BoundedLabel(max_values=2, max_length=8, pinned=["priced-model"[:8]])
    assert [label(v) for v in ("a", "b", "c", "a", "x" * 9, "priced-m")] == [
        "a",
        "b",
        OTHER,
        "a",
        OTHER,
        "priced-m",
    ]
    assert len(label) == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_length"):
        BoundedLabel(max_length=0)


def test_adapter_names_from_a_page_are_bounded() -> None:
    names = ",".join(f"adapter-{i}" for i in range(10_000)) + "," + "y" * (1 << 20)
    page = (
        f'vllm:lora_requests_info{{max_lora="4",running_lora_adapters="{names}",'
        f'waiting_lora_adapters="{"z" * 5000}"}} 1.7e9\n'
        "vllm:num_requests_waiting 0\n"
    ).encode()
    metrics = Extractor(engine_specs()["vllm"]).extract(page)
    assert len(metrics.lora_active) == MAX_ADAPTERS
    assert metrics.lora_active[0] == "adapter-0"
    assert all(len(name) <= 256 for name in metrics.lora_active)
    assert metrics.lora_waiting == ()
