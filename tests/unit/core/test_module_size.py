"""Modules a reader can hold in their head (ARCHITECTURE.md): none over 600 lines outside picker/testing, and
any over 400 says in its docstring why it is one unit (a paragraph starting "Why one module")."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SOFT, HARD = 400, 600
REASON = "Why one module"

#: Modules being reshaped right now, with why they may exceed the rules until then. An entry whose module
#: meets the rules again fails the test, so the list cannot go stale.
EXEMPT: dict[str, str] = {}


def _modules() -> list[Path]:
    roots = [REPO / "picker", REPO / "scoring", REPO / "benchmarks"]
    return sorted(
        p for root in roots for p in root.rglob("*.py") if not p.is_relative_to(REPO / "picker" / "testing")
    )


def _problem(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines > HARD:
        return f"{lines} lines (over {HARD})"
    if lines > SOFT and REASON not in (ast.get_docstring(ast.parse(text)) or ""):
        return f"{lines} lines and no '{REASON} ...' paragraph in its docstring"
    return None


def test_modules_are_small_or_say_why_not() -> None:
    problems = {}
    for path in _modules():
        rel = path.relative_to(REPO).as_posix()
        if rel not in EXEMPT and (problem := _problem(path)) is not None:
            problems[rel] = problem
    assert problems == {}


def test_every_exemption_is_still_needed() -> None:
    for rel in EXEMPT:
        path = REPO / rel
        assert path.is_file(), f"{rel} is gone: remove its exemption"
        assert _problem(path) is not None, f"{rel} meets the rules now: remove its exemption"
