"""Configuration documents are parsed in a worker thread, never on the event loop that serves routing
and health checks (a 100 MB file once stalled both for ~29 s; 1 MiB of YAML still takes a while)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from picker.config import default_config
from picker.reload import ConfigFileWatcher
from picker.state.config_store import ConfigStore, Loaded

DOCUMENT = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
responseProcessing: WhenNeeded
"""


async def test_the_file_watcher_parses_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(DOCUMENT, encoding="utf-8")
    store = ConfigStore(default_config(), source="built-in")
    parsed_on: list[int] = []
    load = store.load

    def recording_load(text: str, *, source: str) -> Loaded:
        parsed_on.append(threading.get_ident())
        return load(text, source=source)

    monkeypatch.setattr(store, "load", recording_load)
    task = asyncio.create_task(ConfigFileWatcher(path, store, interval_s=0.01).run())
    try:
        for _ in range(2000):  # a condition, bounded: the first poll applies the document
            if store.last_result is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert store.last_result is not None
    assert store.last_result.result == "applied", store.last_result.message
    assert store.active.config.settings.response_processing == "WhenNeeded"
    assert parsed_on
    assert threading.get_ident() not in parsed_on
