"""Hot reload of ``--config-file``: poll, and on a change hand the text to the ConfigStore.

Why polling and content hashing instead of inotify: a Kubernetes ConfigMap volume updates by swapping a
``..data`` symlink in the parent directory, which an inotify watch on the file misses, while reading a
few kilobytes once a second is negligible. The ConfigStore validates and swaps atomically; a rejected
document leaves the last good one active (and is logged and counted by its listeners).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from picker.state.config_store import ConfigStore

log = logging.getLogger(__name__)


class ConfigFileWatcher:
    def __init__(self, path: str | Path, store: ConfigStore, *, interval_s: float = 1.0) -> None:
        self._path = Path(path)
        self._store = store
        self._interval = interval_s
        self._last_digest: str | None = None
        self._missing_logged = False

    def _read(self) -> str | None:
        try:
            return self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if not self._missing_logged:
                log.warning("config file %s unreadable (%s); keeping the active config", self._path, exc)
                self._missing_logged = True
            return None

    def prime(self, text: str) -> None:
        """Remember the text loaded at start so the first poll does not count as a change."""
        self._last_digest = hashlib.sha256(text.encode()).hexdigest()

    def check_once(self, text: str | None = None) -> bool:
        """Reload if the file changed. Returns True when a reload was attempted. Runs on the loop."""
        if text is None:
            text = self._read()
        if text is None:
            return False
        self._missing_logged = False
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._last_digest:
            return False
        self._last_digest = digest
        result = self._store.apply_text(text, source=f"file:{self._path}")
        if result.ok:
            log.info("config %s: %s (%s)", self._path, result.result, result.digest)
        else:
            log.error("config %s rejected, keeping the active config: %s", self._path, result.message)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            # The read runs in a thread so a slow volume cannot stall the loop; the swap runs on the loop
            # (the datastore and config store have a single writer).
            text = await asyncio.to_thread(self._read)
            self.check_once(text)
