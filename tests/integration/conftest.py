"""Fixtures shared by more than one integration folder."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from picker.testing.kube_api import KubeApiEmulator


@pytest.fixture
async def emulator() -> AsyncIterator[KubeApiEmulator]:
    """A Kubernetes API emulator on 127.0.0.1 (bookmarks every 0.3 s), stopped after the test."""
    emu = KubeApiEmulator(bookmark_interval=0.3)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
