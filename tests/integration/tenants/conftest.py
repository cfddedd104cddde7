"""A real redis-server per test (installed by .ci/run; the tests are skipped where it cannot be)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from picker.testing.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
