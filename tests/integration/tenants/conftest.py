"""A real redis-server per test (installed by .ci/run, which fails when it is missing; skipped elsewhere)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from picker.testing.redis_server import RedisServer
from picker.testing.tools import tool


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    tool("redis-server", apt="redis-server")  # skips, or fails under PICKER_REQUIRE_TOOLS
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
