"""Peer-supplied text in log lines: control characters escaped, long values bounded."""

from __future__ import annotations

import io
import json
import logging

import pytest

from picker.logs import PEER_TEXT_MAX, configure_logging, escape_controls, peer_text


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\nb", "a\\x0ab"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85", "c1\\x85"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("tab\tok", "tab\\x09ok"),
        ("plain é 日本", "plain é 日本"),
    ],
)
def test_control_characters_are_escaped(raw: str, escaped: str) -> None:
    assert escape_controls(raw) == escaped


def test_peer_text_bounds_and_decodes() -> None:
    assert peer_text(b"id-\xff\n") == "id-\ufffd\\x0a"
    long = peer_text("x" * 10_000)
    assert long.startswith("x" * PEER_TEXT_MAX)
    assert long.endswith(f"…(+{10_000 - PEER_TEXT_MAX})")


@pytest.mark.parametrize("as_json", [False, True])
def test_every_record_is_one_line(monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(verbosity=2, as_json=as_json)
        logging.getLogger("picker.test").warning("request_id=%s", "a\nFORGED ERROR line\u2028x")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    if as_json:
        assert json.loads(lines[0])["msg"] == "request_id=a\nFORGED ERROR line\u2028x"
