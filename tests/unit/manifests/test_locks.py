"""The lock files: every pin hashed, the image lock consistent with the development lock and complete for the
runtime, the build backend pinned the same way everywhere."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[3]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _pins(name: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a `uv pip compile --generate-hashes` file (continuation lines joined)."""
    text = (REPO / name).read_text(encoding="utf-8")
    text = re.sub(r"\s*\\\n\s*", " ", text)
    out: dict[str, tuple[str, list[str]]] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert m, f"{name}: not a pinned, hashed requirement: {line[:80]}"
        out[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"[0-9a-f]{64}", m.group(3)))
    return out


def test_every_pin_carries_hashes() -> None:
    for name in ("requirements.lock", "requirements-image.lock", "requirements-build.lock"):
        pins = _pins(name)
        assert pins, name
        assert all(hashes for _, hashes in pins.values()), name


def test_image_lock_pins_the_development_versions() -> None:
    full, image = _pins("requirements.lock"), _pins("requirements-image.lock")
    for name, (version, hashes) in image.items():
        assert name in full, f"{name} is in the image lock only"
        assert full[name][0] == version, f"{name}: image {version}, development {full[name][0]}"
        assert set(hashes) <= set(full[name][1]) or set(full[name][1]) <= set(hashes)


def _closure(requirements: list[str], optional: set[str] | None = None) -> set[str]:
    """The distributions a set of requirements pulls in, read from the installed metadata (markers evaluated
    for this interpreter on Linux, as in the image). ``optional`` collects those pulled in only on an older
    3.11 (the locks target 3.11.0, e.g. redis's ``async-timeout; python_full_version < '3.11.3'``)."""
    env = default_environment()
    oldest = {**env, "python_full_version": "3.11.0", "extra": ""}
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            if optional is not None and req.marker.evaluate(oldest):
                optional.add(canonicalize_name(req.name))
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
    return seen


def test_image_lock_is_exactly_the_runtime_closure() -> None:
    older: set[str] = set()
    runtime = _closure(PROJECT["project"]["dependencies"], older)
    pins = set(_pins("requirements-image.lock"))
    assert runtime <= pins
    assert pins <= runtime | older


def test_build_backend_is_pinned_once() -> None:
    (requires,) = PROJECT["build-system"]["requires"]
    backend = Requirement(requires)
    (pin,) = backend.specifier
    assert pin.operator == "=="
    assert PROJECT["dependency-groups"]["build"] == [requires]
    assert _pins("requirements-build.lock")[canonicalize_name(backend.name)][0] == pin.version


def test_licence_is_the_apache_2_text() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert PROJECT["project"]["license"] == "Apache-2.0"
    assert "LICENSE" in PROJECT["project"]["license-files"]
    classifiers = PROJECT["project"]["classifiers"]
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert PROJECT["project"]["urls"]
