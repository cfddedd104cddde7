"""Offline checks of manifests/: a kustomize resolver, CRD-based validation and policy checkers.

There is no kustomize binary and no API server here, so this module re-implements the parts the manifests
use, strictly: a kustomization key we do not emulate is an error rather than silently ignored.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"

Doc = dict[str, Any]

# --------------------------------------------------------------------------------------------- kustomize

#: The kustomization fields the resolver below implements. Anything else fails the build.
SUPPORTED_KUSTOMIZATION_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "components", "configMapGenerator", "images", "patches"}
)
KUSTOMIZATION_API = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "Component": "kustomize.config.k8s.io/v1alpha1",
}


class KustomizeError(Exception):
    """What `kustomize build` would refuse (or what this emulation does not support)."""


@dataclass
class Build:
    root: Path
    resources: list[Doc] = field(default_factory=list)
    #: every file the build read (kustomizations, resources, generator inputs)
    files: set[Path] = field(default_factory=set)

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.resources if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.resources if d["kind"] == kind and d["metadata"]["name"] == name]
        if len(found) != 1:
            raise KeyError(f"{kind}/{name}: {len(found)} matches in {self.root}")
        return found[0]


def load_docs(path: Path) -> list[Doc]:
    """All non-empty YAML documents of a file; each must be a mapping."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise KustomizeError(f"{path}: a document is not a mapping")
    return docs


def group_of(doc: Doc) -> str:
    api = doc["apiVersion"]
    return api.split("/", 1)[0] if "/" in api else ""


def resource_id(doc: Doc) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return (group_of(doc), doc["kind"], meta.get("namespace", ""), meta["name"])


def _within(root: Path, target: Path, what: str) -> Path:
    """kustomize's default load restriction: files (not directories) must live under the kustomization."""
    resolved = target.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise KustomizeError(f"{what} {target} is outside the kustomization root {root}")
    return resolved


def _load_kustomization(directory: Path) -> tuple[Doc, Path]:
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text(encoding="utf-8"))
    if not isinstance(k, dict):
        raise KustomizeError(f"{kfile} is not a mapping")
    unknown = set(k) - SUPPORTED_KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: fields not emulated here: {sorted(unknown)}")
    kind = k.get("kind")
    if KUSTOMIZATION_API.get(kind) != k.get("apiVersion"):
        raise KustomizeError(f"{kfile}: apiVersion/kind {k.get('apiVersion')}/{kind} is not a kustomization")
    return k, kfile


def _generate_configmaps(directory: Path, k: Doc, out: Build) -> None:
    for gen in k.get("configMapGenerator", []):
        unknown = set(gen) - {"name", "files", "options"}
        if unknown:
            raise KustomizeError(f"configMapGenerator {gen.get('name')}: fields not emulated: {unknown}")
        options = gen.get("options", {})
        if set(options) - {"disableNameSuffixHash", "labels"}:
            raise KustomizeError(f"configMapGenerator {gen['name']}: options not emulated: {options}")
        if options.get("disableNameSuffixHash") is not True:
            # With a hash suffix every reference to the ConfigMap would have to be rewritten; not emulated.
            raise KustomizeError(f"configMapGenerator {gen['name']}: name suffix hashing is not emulated")
        data: dict[str, str] = {}
        for entry in gen.get("files", []):
            key, _, rel = entry.rpartition("=")
            path = _within(directory, directory / rel, "generator file")
            if not path.is_file():
                raise KustomizeError(f"configMapGenerator {gen['name']}: {rel} does not exist")
            key = key or path.name
            if key in data:
                raise KustomizeError(f"configMapGenerator {gen['name']}: duplicate key {key}")
            data[key] = path.read_text(encoding="utf-8")
            out.files.add(path)
        meta: Doc = {"name": gen["name"]}
        if options.get("labels"):
            meta["labels"] = dict(options["labels"])
        out.resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})


def _matches_target(doc: Doc, target: Doc) -> bool:
    api = doc["apiVersion"]
    version = api.rsplit("/", 1)[-1]
    checks = {
        "group": group_of(doc),
        "version": version,
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
        "namespace": doc["metadata"].get("namespace", ""),
    }
    unknown = set(target) - set(checks)
    if unknown:
        raise KustomizeError(f"patch target selectors not emulated: {unknown}")
    return all(checks[key] == value for key, value in target.items())


def _apply_patches(directory: Path, k: Doc, out: Build) -> None:
    for p in k.get("patches", []):
        if set(p) - {"patch", "path", "target"}:
            raise KustomizeError(f"patch fields not emulated: {set(p)}")
        if "path" in p:
            path = _within(directory, directory / p["path"], "patch file")
            out.files.add(path)
            ops = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            ops = yaml.safe_load(p["patch"])
        if not isinstance(ops, list) or "target" not in p:
            raise KustomizeError("only JSON 6902 patches (a list of operations with a target) are emulated")
        hits = [i for i, d in enumerate(out.resources) if _matches_target(d, p["target"])]
        if not hits:
            raise KustomizeError(f"patch target {p['target']} matches no resource")
        for i in hits:
            try:
                out.resources[i] = jsonpatch.apply_patch(out.resources[i], ops)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise KustomizeError(f"patch on {resource_id(out.resources[i])}: {exc}") from exc


def _pod_containers(doc: Doc) -> Iterator[Doc]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def _split_image(image: str) -> tuple[str, str]:
    """`name[:tag][@digest]` -> (name, rest including its separator)."""
    name, at, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon:] + at + digest
    return name, at + digest


def _apply_images(k: Doc, out: Build) -> None:
    for rule in k.get("images", []):
        if set(rule) - {"name", "newName", "newTag", "digest"}:
            raise KustomizeError(f"images fields not emulated: {set(rule)}")
        used = False
        for doc in out.resources:
            for c in _pod_containers(doc):
                name, rest = _split_image(c["image"])
                if name != rule["name"]:
                    continue
                used = True
                new = rule.get("newName", name)
                if "digest" in rule:
                    rest = "@" + rule["digest"]
                elif "newTag" in rule:
                    rest = ":" + str(rule["newTag"])
                c["image"] = new + rest
        if not used:
            raise KustomizeError(f"images rule {rule['name']} matches no container")


def _accumulate_resources(directory: Path, k: Doc, out: Build, stack: tuple[Path, ...]) -> None:
    for entry in k.get("resources", []):
        target = directory / entry
        if target.is_dir():
            sub = kustomize_build(target, _stack=stack)
            out.resources.extend(sub.resources)
            out.files |= sub.files
        elif target.is_file():
            path = _within(directory, target, "resource")
            docs = load_docs(path)
            if not docs:
                raise KustomizeError(f"{path} holds no document")
            out.resources.extend(docs)
            out.files.add(path)
        else:
            raise KustomizeError(f"{directory}/kustomization.yaml: resource {entry} does not exist")


def _apply_components(directory: Path, k: Doc, out: Build) -> None:
    for entry in k.get("components", []):
        comp_dir = (directory / entry).resolve()
        comp, comp_file = _load_kustomization(comp_dir)
        if comp["kind"] != "Component":
            raise KustomizeError(f"{entry} is listed under components but is a {comp['kind']}")
        if set(comp) - {"apiVersion", "kind", "patches", "images"}:
            raise KustomizeError(f"{comp_file}: component fields not emulated: {set(comp)}")
        out.files.add(comp_file)
        _apply_patches(comp_dir, comp, out)
        _apply_images(comp, out)


def kustomize_build(directory: Path, *, _stack: tuple[Path, ...] = ()) -> Build:
    """Resolve a kustomization the way `kustomize build` does, for the features the manifests use."""
    directory = directory.resolve()
    if directory in _stack:
        raise KustomizeError(f"cycle: {' -> '.join(map(str, (*_stack, directory)))}")
    k, kfile = _load_kustomization(directory)
    if k["kind"] == "Component" and not _stack:
        raise KustomizeError(f"{directory} is a Component; it is built only as part of an overlay")
    out = Build(root=directory, files={kfile})
    _accumulate_resources(directory, k, out, (*_stack, directory))
    _generate_configmaps(directory, k, out)
    _apply_components(directory, k, out)
    _apply_patches(directory, k, out)
    _apply_images(k, out)
    for doc in out.resources:
        for key in ("apiVersion", "kind", "metadata"):
            if key not in doc:
                raise KustomizeError(f"a resource in {directory} lacks {key}")
        if not doc["metadata"].get("name"):
            raise KustomizeError(f"a {doc['kind']} in {directory} has no metadata.name")
    seen: set[tuple[str, str, str, str]] = set()
    for doc in out.resources:
        rid = resource_id(doc)
        if rid in seen:
            raise KustomizeError(f"{directory}: duplicate resource {rid}")
        seen.add(rid)
    return out


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def buildable_dirs() -> list[Path]:
    """Kustomizations that can be built on their own (Components cannot)."""
    return [d for d in kustomization_dirs() if _load_kustomization(d)[0]["kind"] == "Kustomization"]


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
def kustomize() -> Callable[[Path], Build]:
    """The kustomize resolver, for tests that build throw-away kustomizations."""
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
