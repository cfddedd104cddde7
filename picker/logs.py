"""Logging setup: plain text for people, JSON lines for log pipelines. Never logs request content.

The reference's ``-v`` levels map onto Python levels: ≤1 warnings only, 2 (default) and 3 info, ≥4 debug.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def level_for_verbosity(verbosity: int) -> int:
    if verbosity <= 1:
        return logging.WARNING
    if verbosity <= 3:
        return logging.INFO
    return logging.DEBUG


def configure_logging(*, verbosity: int = 2, as_json: bool = False) -> None:
    """Configure the root logger once for the process (called by the CLI only)."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for_verbosity(verbosity))
    # third-party chatter stays at warning unless debugging
    for noisy in ("aiohttp.access", "uvicorn.access", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 5 else logging.WARNING)
