"""Several scheduling profiles and the profile handler that picks one per request.

The reference runs a profile handler before its profiles (``gie-epp.md`` §3.5): ``single-profile-handler``
runs the one profile there is; others (prefill/decode disaggregation, the latency predictor's) run
several and combine them. Here a handler *chooses* one profile per request, which is what objective-aware
routing needs: a ``critical`` request scored for latency, a ``batch`` one for cost. Each profile is a
whole :class:`~scoring.scheduler.Scheduler` (its own filters, weights and picker); the saturation
detector is shared (one per configuration, as in the reference).

``objective-profile-handler`` (ours) decides, in order:

1. the request header ``header`` (default ``x-picker-profile``; ``""`` turns it off) naming a profile;
   an unknown name is ignored;
2. the first of ``rules`` that matches the request: ``objective`` (the InferenceObjective named by
   ``x-gateway-inference-objective``), ``minPriority`` / ``maxPriority`` (its priority, bounds included);
   a rule with no condition matches every request;
3. ``defaultProfile`` (default: the first profile).

Each choice also carries the :class:`ExternalPolicy` its rule sets (``external``), or None: whether the
request may go to external endpoints (capacity outside the pool, declared in the service's configuration:
``picker.routing.external``). ``Never`` keeps it in the pool, ``Prefer`` sends it to external capacity
first (the pool as fallback), ``WhenSaturated`` only when the pool cannot take it; None (no rule says) lets
the service's ``spillover`` settings decide (by default: ``WhenSaturated`` for priority >= 0, never for
sheddable requests, which are shed rather than sent to paid capacity).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from scoring.errors import ConfigurationError
from scoring.matrix import EndpointMatrix
from scoring.plugin import Plugin, SaturationDetector
from scoring.scheduler import Scheduler

__all__ = [
    "PROFILE_HEADER",
    "ExternalPolicy",
    "ObjectiveProfileHandler",
    "ProfileChoice",
    "ProfileHandler",
    "Profiles",
    "SingleProfileHandler",
]

#: the default request header of ``objective-profile-handler`` that names a profile directly
PROFILE_HEADER = "x-picker-profile"
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class ExternalPolicy(enum.StrEnum):
    """When a request may be sent to external endpoints (capacity outside the pool)."""

    #: never (the pool serves it, or it is refused)
    NEVER = "Never"
    #: only when the pool cannot take it well: saturated, or no healthy endpoint left
    WHEN_SATURATED = "WhenSaturated"
    #: first: an external endpoint with room serves it, the pool is the fallback
    PREFER = "Prefer"


@dataclass(frozen=True, slots=True)
class ProfileChoice:
    """The profile chosen for a request, its external policy, and why (``/debug/explain``)."""

    scheduler: Scheduler
    #: the rule's ``external``; None: no rule set it (the service's ``spillover`` settings decide)
    external: ExternalPolicy | None
    #: ``header``, ``rule <n>``, ``default`` or ``single``
    reason: str

    @property
    def profile(self) -> str:
        return self.scheduler.profile_name


class ProfileHandler(Plugin):
    """Chooses the profile of a request. Pure and synchronous; built once per configuration."""

    #: the request header the handler reads ("" = none); the service passes its value to :meth:`choose`
    header: str = ""

    def bind(self, names: Sequence[str]) -> None:
        """Check the handler against the configuration's profile names (in document order)."""

    def choose(self, objective: str, priority: int, header_value: str | None) -> tuple[str | None, str, Any]:
        """``(profile name or None for the default, reason, external policy or None for the default)``."""
        raise NotImplementedError


class SingleProfileHandler(ProfileHandler):
    """``single-profile-handler`` — runs the one profile there is (reference)."""

    type_name: ClassVar[str] = "single-profile-handler"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        if parameters:
            raise ConfigurationError(
                f"plugin {name!r} (type {self.type_name!r}): takes no parameters, got {sorted(parameters)}"
            )
        super().__init__(name, {})

    def bind(self, names: Sequence[str]) -> None:
        if len(names) != 1:
            raise ConfigurationError(
                f"{self.type_name} needs exactly one scheduling profile, got {len(names)}: "
                f"{', '.join(sorted(names))} (objective-profile-handler chooses between several)"
            )

    def choose(self, objective: str, priority: int, header_value: str | None) -> tuple[str | None, str, Any]:  # noqa: ARG002 - the handler protocol
        return None, "single", None


@dataclass(frozen=True, slots=True)
class _Rule:
    profile: str
    objective: str | None
    min_priority: int | None
    max_priority: int | None
    external: ExternalPolicy | None

    def matches(self, objective: str, priority: int) -> bool:
        return (
            (self.objective is None or self.objective == objective)
            and (self.min_priority is None or priority >= self.min_priority)
            and (self.max_priority is None or priority <= self.max_priority)
        )


_RULE_KEYS = frozenset({"profile", "objective", "minPriority", "maxPriority", "external"})
#: the longest objective name: a Kubernetes object name (253 characters)
MAX_OBJECTIVE_NAME: Final = 253
_MEMO_ENTRIES: Final = 4096
#: priorities are the CRD's int32
_INT32 = (-(2**31), 2**31 - 1)


class ObjectiveProfileHandler(ProfileHandler):
    """``objective-profile-handler`` (ours) — one profile per request from a header, the request's
    InferenceObjective or its priority (see the module docstring for the order and the parameters)."""

    type_name: ClassVar[str] = "objective-profile-handler"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        where = f"plugin {name!r} (type {self.type_name!r})"
        raw: Mapping[str, Any] = parameters if parameters is not None else {}
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{where}: parameters must be a mapping, got {raw!r}")
        unknown = sorted(str(k) for k in raw if k not in {"header", "defaultProfile", "rules"})
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown parameter(s) {', '.join(unknown)} (allowed: defaultProfile, header, rules)"
            )
        header = raw.get("header", PROFILE_HEADER)
        if not isinstance(header, str) or header != header.strip() or any(c.isspace() for c in header):
            raise ConfigurationError(
                f"{where}: parameter 'header' must be a header name or \"\", got {header!r}"
            )
        self.header = header.lower()
        default = raw.get("defaultProfile")
        if default is not None and (not isinstance(default, str) or not default):
            raise ConfigurationError(
                f"{where}: parameter 'defaultProfile' must be a profile name, got {default!r}"
            )
        self.default_profile: str | None = default
        rules = raw.get("rules", [])
        if not isinstance(rules, list | tuple):
            raise ConfigurationError(f"{where}: parameter 'rules' must be a list, got {rules!r}")
        self.rules = tuple(self._rule(where, i, r) for i, r in enumerate(rules))
        effective: dict[str, Any] = {"header": self.header, "rules": [dict(r) for r in rules]}
        if default is not None:
            effective["defaultProfile"] = default
        super().__init__(name, effective)
        #: (objective, priority) → (profile, reason, external), bounded
        self._memo: dict[tuple[str, int], tuple[str | None, str, ExternalPolicy | None]] = {}

    @staticmethod
    def _rule(where: str, i: int, rule: object) -> _Rule:
        at = f"{where}: rules[{i}]"
        if not isinstance(rule, Mapping):
            raise ConfigurationError(f"{at} must be a mapping, got {rule!r}")
        unknown = sorted(str(k) for k in rule if k not in _RULE_KEYS)
        if unknown:
            raise ConfigurationError(
                f"{at}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_RULE_KEYS))})"
            )
        profile = rule.get("profile")
        if not isinstance(profile, str) or not profile:
            raise ConfigurationError(f"{at}: 'profile' (a scheduling profile name) is required")
        objective = rule.get("objective")
        if objective is not None and (
            not isinstance(objective, str) or not objective or len(objective) > MAX_OBJECTIVE_NAME
        ):
            raise ConfigurationError(
                f"{at}: 'objective' must be an objective name (1 to {MAX_OBJECTIVE_NAME} characters), "
                f"got {str(objective)[:64]!r}"
            )
        bounds: list[int | None] = []
        for key in ("minPriority", "maxPriority"):
            value = rule.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigurationError(f"{at}: {key!r} must be an integer, got {value!r}")
            if value is not None and not _INT32[0] <= value <= _INT32[1]:
                raise ConfigurationError(f"{at}: {key!r} must be a 32-bit integer (a priority), got {value}")
            bounds.append(value)
        lo, hi = bounds
        if lo is not None and hi is not None and lo > hi:
            raise ConfigurationError(f"{at}: minPriority {lo} is above maxPriority {hi}: it matches nothing")
        external = rule.get("external")
        policy: ExternalPolicy | None = None
        if external is not None:
            try:
                policy = ExternalPolicy(external)
            except ValueError:
                choices = ", ".join(p.value for p in ExternalPolicy)
                raise ConfigurationError(
                    f"{at}: 'external' must be one of {choices}, got {external!r}"
                ) from None
        return _Rule(profile, objective, lo, hi, policy)

    def bind(self, names: Sequence[str]) -> None:
        known = set(names)
        where = f"plugin {self.name!r} (type {self.type_name!r})"
        for i, rule in enumerate(self.rules):
            if rule.profile not in known:
                raise ConfigurationError(
                    f"{where}: rules[{i}] names profile {rule.profile!r}, which is not defined "
                    f"(profiles: {', '.join(names)})"
                )
        if self.default_profile is not None and self.default_profile not in known:
            raise ConfigurationError(
                f"{where}: defaultProfile {self.default_profile!r} is not defined "
                f"(profiles: {', '.join(names)})"
            )

    def choose(self, objective: str, priority: int, header_value: str | None) -> tuple[str | None, str, Any]:
        if header_value:
            return header_value, "header", None
        key = (objective, priority)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        out: tuple[str | None, str, ExternalPolicy | None] = (self.default_profile, "default", None)
        for i, rule in enumerate(self.rules):
            if rule.matches(objective, priority):
                out = (rule.profile, f"rule {i}", rule.external)
                break
        # The objective is the request's header, chosen by a peer: the memo keeps at most 4096 of them and
        # none longer than a Kubernetes object name (no InferenceObjective can have a longer name), so a
        # flood of long distinct names costs nothing after the request.
        if len(self._memo) < _MEMO_ENTRIES and len(objective) <= MAX_OBJECTIVE_NAME:
            self._memo[key] = out
        return out


class Profiles:
    """Every scheduling profile of one configuration, the handler that picks one per request, and the
    shared saturation detector. Immutable after construction; built by ``scoring.registry.build_profiles``.
    """

    def __init__(
        self,
        schedulers: Sequence[Scheduler],
        handler: ProfileHandler,
        saturation_detector: SaturationDetector,
    ) -> None:
        if not schedulers:
            raise ConfigurationError("no scheduling profile")
        names = [s.profile_name for s in schedulers]
        handler.bind(names)
        self.handler = handler
        self.by_name: Mapping[str, Scheduler] = MappingProxyType({s.profile_name: s for s in schedulers})
        default_name = getattr(handler, "default_profile", None) or names[0]
        #: the profile of a request nothing else decides for (the first one unless the handler names one)
        self.default = self.by_name[default_name]
        self.saturation_detector = saturation_detector
        #: the header the handler reads ("" = none)
        self.header = handler.header
        self._choices: dict[tuple[str, str, ExternalPolicy | None], ProfileChoice] = {}
        #: with the single-profile handler the choice depends on the priority's sign only: built once
        self._single: tuple[ProfileChoice, ProfileChoice] | None = None
        if isinstance(handler, SingleProfileHandler):
            single = ProfileChoice(self.default, None, "single")
            self._single = (single, single)

    def __len__(self) -> int:
        return len(self.by_name)

    def choose(
        self, objective: str, priority: int, headers: Mapping[str, str] = _NO_HEADERS
    ) -> ProfileChoice:
        """The profile for a request with this objective name, priority and headers."""
        single = self._single
        if single is not None:
            return single[priority < 0]
        header_value = headers.get(self.header) if self.header else None
        name, reason, external = self.handler.choose(objective, priority, header_value)
        scheduler = self.by_name.get(name) if name is not None else self.default
        if scheduler is None:  # a header naming no profile: as if absent
            name, reason, external = self.handler.choose(objective, priority, None)
            scheduler = self.by_name[name] if name is not None else self.default
        policy = external
        key = (scheduler.profile_name, reason, policy)
        choice = self._choices.get(key)
        if choice is None:
            choice = ProfileChoice(scheduler, policy, reason)
            if len(self._choices) < 1024:
                self._choices[key] = choice
        return choice

    def saturation(
        self, m: EndpointMatrix, *, now: float, candidates: NDArray[np.bool_] | None = None
    ) -> float:
        """The shared detector's saturation over the candidates (None: all); ≥ 1 means saturated."""
        return self.default.saturation(m, now=now, candidates=candidates)

    @property
    def schedulers(self) -> tuple[Scheduler, ...]:
        return tuple(self.by_name.values())

    def describe(self) -> dict[str, Any]:
        """The effective configuration as plain data (``/config``): every profile, the handler and the
        detector, defaults filled in."""
        profiles = [p for s in self.by_name.values() for p in s.describe()["profiles"]]
        return {
            "profileHandler": self.handler.type_name,
            "profileHandlerParameters": dict(self.handler.parameters),
            "defaultProfile": self.default.profile_name,
            "profiles": profiles,
            "saturationDetector": self.default.describe()["saturationDetector"],
        }
