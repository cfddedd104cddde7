"""Fixtures for the fake model server tests: real servers on 127.0.0.1 and a real HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import FakeServer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A fast vLLM fake (100x time scale) with one LoRA adapter."""
    fake = FakeServer(
        "vllm",
        models=("acme/base-8b",),
        lora_adapters=("sql-lora",),
        load=LoadParams(max_lora=1),
        time_scale=0.01,
        seed=1,
    )
    async with fake:
        yield fake
