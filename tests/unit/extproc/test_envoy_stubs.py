"""The Envoy stubs shipped in ``typings/`` (what mypy types the ext_proc boundary with) are exactly what
``typings/generate.py`` makes from the installed ``xds-protos`` and ``mypy-protobuf``: a new version of
either, or a hand edit, fails here until the stubs are regenerated."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TYPINGS = Path(__file__).resolve().parents[3] / "typings"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("envoy_stub_generator", TYPINGS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_stubs_are_the_generated_ones() -> None:
    generated = generator().stubs()
    shipped = {str(p.relative_to(TYPINGS)): p.read_text() for p in TYPINGS.rglob("*.pyi")}
    assert sorted(shipped) == sorted(generated), "rerun: python typings/generate.py"
    stale = [name for name, text in generated.items() if shipped[name] != text]
    assert not stale, f"stale stubs {stale}: rerun python typings/generate.py"
