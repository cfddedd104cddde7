"""InferenceObjectives (priority by name) and InferenceModelRewrites (model → weighted targets).

Filled by the Kubernetes watchers (CRD mode) or by the ``PickerConfig`` document (standalone mode). Both
stores precompute their lookup structure on change, so a request costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Objective:
    name: str
    #: higher = more important; negative = sheddable; unset in the CRD counts as 0 (reference)
    priority: int = 0


class ObjectiveStore:
    """Objectives by object name, looked up via the ``x-gateway-inference-objective`` header."""

    def __init__(self) -> None:
        self._by_name: dict[str, Objective] = {}
        #: bumped on every change, so a copy elsewhere (``--workers``) knows when to refresh
        self.version = 0

    def set(self, objective: Objective) -> None:
        self._by_name[objective.name] = objective
        self.version += 1

    def delete(self, name: str) -> None:
        self._by_name.pop(name, None)
        self.version += 1

    def replace_all(self, objectives: Iterable[Objective]) -> None:
        self._by_name = {o.name: o for o in objectives}
        self.version += 1

    def clear(self) -> None:
        self._by_name = {}
        self.version += 1

    def get(self, name: str) -> Objective | None:
        return self._by_name.get(name)

    def priority(self, name: str | None) -> int:
        """Priority for a header value; missing header or unknown name → 0 (reference)."""
        if not name:
            return 0
        o = self._by_name.get(name)
        return o.priority if o is not None else 0

    def all(self) -> Mapping[str, Objective]:
        return MappingProxyType(self._by_name)


@dataclass(frozen=True, slots=True)
class RewriteTarget:
    model: str
    #: relative weight; all-zero/omitted weights in a rule mean uniform choice
    weight: int = 0


@dataclass(frozen=True, slots=True)
class RewriteRule:
    #: exact model names this rule matches (OR); empty = matches every model ("generic")
    matches: tuple[str, ...]
    targets: tuple[RewriteTarget, ...]


@dataclass(frozen=True, slots=True)
class ModelRewrite:
    name: str
    rules: tuple[RewriteRule, ...]
    #: creation time (seconds since epoch); older objects win ties, as in the reference
    created: float = 0.0


class UniformSource(Protocol):
    """The one method of ``random.Random`` / numpy Generators we need (injected for determinism)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RewriteChoice:
    rewrite_name: str
    target_model: str


class RewriteStore:
    """Resolves a model name to a rewrite target with the reference precedence.

    Precedence: an exact-match rule beats a generic (empty ``matches``) rule; among objects, the oldest
    (creation time, then name) wins; within one object, the first matching rule in list order.
    """

    def __init__(self) -> None:
        self._objects: dict[str, ModelRewrite] = {}
        self._exact: dict[str, tuple[str, RewriteRule]] = {}
        self._generic: tuple[str, RewriteRule] | None = None
        #: bumped on every change, so a copy elsewhere (``--workers``) knows when to refresh
        self.version = 0

    def set(self, rewrite: ModelRewrite) -> None:
        self._objects[rewrite.name] = rewrite
        self._reindex()

    def delete(self, name: str) -> None:
        if self._objects.pop(name, None) is not None:
            self._reindex()

    def replace_all(self, rewrites: Iterable[ModelRewrite]) -> None:
        self._objects = {r.name: r for r in rewrites}
        self._reindex()

    def clear(self) -> None:
        self.replace_all(())

    def all(self) -> Sequence[ModelRewrite]:
        return tuple(self._objects.values())

    def _reindex(self) -> None:
        exact: dict[str, tuple[str, RewriteRule]] = {}
        generic: tuple[str, RewriteRule] | None = None
        for obj in sorted(self._objects.values(), key=lambda r: (r.created, r.name)):
            for rule in obj.rules:
                if not rule.targets:
                    continue
                if not rule.matches:
                    if generic is None:
                        generic = (obj.name, rule)
                    continue
                for model in rule.matches:
                    exact.setdefault(model, (obj.name, rule))
        self._exact = exact
        self._generic = generic
        self.version += 1

    def resolve(self, model: str, rng: UniformSource) -> RewriteChoice | None:
        """The rewrite for ``model``, or None when no rule applies."""
        hit = self._exact.get(model) or self._generic
        if hit is None:
            return None
        name, rule = hit
        return RewriteChoice(name, _weighted_choice(rule.targets, rng))


def _weighted_choice(targets: tuple[RewriteTarget, ...], rng: UniformSource) -> str:
    if len(targets) == 1:
        return targets[0].model
    total = sum(max(t.weight, 0) for t in targets)
    if total <= 0:
        return targets[min(int(rng.random() * len(targets)), len(targets) - 1)].model
    x = rng.random() * total
    acc = 0.0
    for t in targets:
        acc += max(t.weight, 0)
        if x < acc:
            return t.model
    return targets[-1].model
