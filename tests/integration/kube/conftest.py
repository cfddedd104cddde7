"""The official ``kubernetes`` client against the HTTP emulator of the API server, on 127.0.0.1.

Every test gets a fresh emulator and an ApiClient built by our own factory from a kubeconfig file that
points at it, so the client-side path (config loading, urllib3 pool, JSON, chunked watch streams) is the
production one. Watch timings are shortened (watch timeout, bookmarks, backoff) so a test exercises
several watch rotations in a second or two; nothing asserts on durations — waits are bounded polls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from picker.kube import Backoff, WatchSettings, load_api_client
from picker.testing import poll
from picker.testing.kube_api import KubeApiEmulator

pytestmark = pytest.mark.integration

NS = "inference"
#: watches that rotate every few seconds and retry within a third of a second
FAST_WATCH = WatchSettings(watch_timeout_s=3.0, backoff=lambda: Backoff(initial=0.05, cap=0.3))


@pytest.fixture
def api(emulator: KubeApiEmulator, tmp_path: Path) -> Iterator[k8s_client.ApiClient]:
    client = load_api_client(emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """:func:`picker.testing.poll.eventually`, for the tests that take it as a fixture."""
    return poll.eventually
