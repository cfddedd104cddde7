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

from picker.config import read_config_file
from picker.errors import ConfigError
from picker.state.config_store import ConfigStore, ReloadResult

log = logging.getLogger(__name__)


class ConfigFileWatcher:
    def __init__(self, path: str | Path, store: ConfigStore, *, interval_s: float = 1.0) -> None:
        self._path = Path(path)
        self._store = store
        self._interval = interval_s
        self._last_digest: str | None = None
        self._last_error: str | None = None
        self._source = f"file:{self._path}"

    def _read(self) -> str | ConfigError:
        """The file's text, or why it cannot be used (unreadable, too large, not UTF-8, empty)."""
        try:
            return read_config_file(self._path)
        except ConfigError as exc:
            return exc

    def prime(self, text: str) -> None:
        """Remember the text loaded at start so the first poll does not count as a change."""
        self._last_digest = hashlib.sha256(text.encode()).hexdigest()

    def check_once(self, text: str | ConfigError | None = None) -> bool:
        """Reload if the file changed. Returns True when a reload was attempted. Runs on the loop (the
        parse included: :meth:`run` parses in a thread)."""
        read = self._read() if text is None else text
        if isinstance(read, ConfigError):
            self._rejected_read(read)
            return False
        if not self._changed(read):
            return False
        self._log(self._store.apply_text(read, source=self._source))
        return True

    def _changed(self, text: str) -> bool:
        self._last_error = None
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._last_digest:
            return False
        self._last_digest = digest
        return True

    def _rejected_read(self, exc: ConfigError) -> None:
        """A file that cannot be read is a rejection too: counted and shown once per distinct problem (a
        missing file during a ConfigMap symlink swap is logged but not counted)."""
        if exc.message == self._last_error:
            return
        self._last_error = exc.message
        self._last_digest = None  # the next readable version is a change, even if it is the old text
        if "No such file" in exc.message:
            log.warning("%s; keeping the active config", exc.message)
            return
        self._log(self._store.reject(exc.message, source=self._source))

    def _log(self, result: ReloadResult) -> None:
        if result.ok:
            log.info("config %s: %s (%s)", self._path, result.result, result.digest)
        else:
            log.error("config %s rejected, keeping the active config: %s", self._path, result.message)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            # Reading and parsing run in threads so a slow volume or a large document cannot stall the
            # loop; the swap runs on the loop (the datastore and config store have a single writer).
            read = await asyncio.to_thread(self._read)
            if isinstance(read, ConfigError):
                self._rejected_read(read)
            elif self._changed(read):
                self._log(await self._store.apply_text_off_loop(read, source=self._source))
