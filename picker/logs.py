"""Logging setup: plain text for people, JSON lines for log pipelines. Never logs request content.

The reference's ``-v`` levels map onto Python levels: ≤1 warnings only, 2 (default) and 3 info, ≥4 debug.

Values that come from peers (request ids, header values, model names, pages) reach some messages. In
plain text a newline in one would forge a log line, and a terminal escape would rewrite the screen, so
the plain formatter escapes every control character of the message (``\n`` → ``\x0a``); JSON lines are
escaped by the encoder. :func:`peer_text` also bounds a peer value's length where it is logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time

#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators, as visible escapes
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
#: longest peer value written to a log line, in characters (the rest is elided with a count)
PEER_TEXT_MAX = 200


def escape_controls(text: str) -> str:
    """``text`` with every control character as a visible escape: one log record stays one line."""
    return text.translate(_ESCAPES)


def peer_text(value: str | bytes, limit: int = PEER_TEXT_MAX) -> str:
    """A value a peer sent, ready for a log message: decoded, control characters escaped, at most
    ``limit`` characters (``…(+N)`` says how many were left out)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) > limit:
        text = f"{text[:limit]}…(+{len(text) - limit})"
    return escape_controls(text)


class _PlainFormatter(logging.Formatter):
    """The standard format, with control characters in the message escaped (tracebacks stay multi-line:
    they are ours)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging.Formatter's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


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
        # the encoder escapes C0 controls; the Unicode line separators it leaves raw split lines in some
        # log tools, so they are escaped too (still the same JSON string)
        return json.dumps(doc, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


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
        handler.setFormatter(_PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for_verbosity(verbosity))
    # third-party chatter stays at warning unless debugging
    for noisy in ("aiohttp.access", "uvicorn.access", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 5 else logging.WARNING)
