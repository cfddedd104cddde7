"""Plugin type registry and the builder that turns plugin/profile specs into a :class:`Scheduler`.

Type strings are the reference EPP's (``queue-scorer``, ``max-score-picker``, ...), so an
``EndpointPickerConfig`` written for the reference loads here. The builder applies the reference's
defaulting rules (``gie-epp.md`` §3.10) and reports every problem as a
:class:`~scoring.errors.ConfigurationError` naming the plugin or profile at fault.

There is no module-level registry: :func:`default_registry` builds a new one on every call, so a test or
an extension can register types without affecting anyone else.

Why one module of this size: the type table, the reference's defaulting rules and the two built-in
profiles (ours and the reference's) are read together: a default profile is a list of specs that the same
builder must accept, and its weights are documented next to the rules that apply them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from scoring.errors import ConfigurationError
from scoring.filters import (
    ConcurrencyDetector,
    HeaderBasedTestingFilter,
    LoraCapacityFilter,
    MetricsStalenessFilter,
    UtilizationDetector,
)
from scoring.pickers import MaxScorePicker, RandomPicker, WeightedRandomPicker
from scoring.plugin import Filter, Picker, Plugin, SaturationDetector, Scorer
from scoring.profiles import ObjectiveProfileHandler, ProfileHandler, Profiles, SingleProfileHandler
from scoring.scheduler import Scheduler
from scoring.scorers import (
    CostScorer,
    GpuUtilizationScorer,
    KvCacheUtilizationScorer,
    LatencyScorer,
    LoraAffinityScorer,
    PrefillQueueScorer,
    PrefixCacheScorer,
    PrometheusScorer,
    QueueScorer,
    RunningRequestsScorer,
    TokenLoadScorer,
)


class Kind(enum.Enum):
    """Roles a plugin type can play."""

    FILTER = "filter"
    SCORER = "scorer"
    PICKER = "picker"
    PROFILE_HANDLER = "profile-handler"
    SATURATION_DETECTOR = "saturation-detector"
    #: configures the service, not the scheduler (data layer, parser, request control, flow control):
    #: valid in a document, validated by ``picker.config``, never part of a profile
    SERVICE = "service"


#: Name of the profile created when a document defines none (reference).
DEFAULT_PROFILE = "default"
#: Saturation detector used when none is referenced (reference).
DEFAULT_SATURATION_DETECTOR = "utilization-detector"


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One ``plugins[]`` entry: ``name`` (reference default: the type), ``type``, ``parameters``."""

    name: str
    type: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """One ``schedulingProfiles[]`` entry: ``(pluginRef, weight)`` pairs; weight None = default (1)."""

    name: str
    plugins: Sequence[tuple[str, float | None]]


Factory = Callable[[str, Mapping[str, Any]], Plugin]


@dataclass(frozen=True, slots=True)
class PluginType:
    type_name: str
    kinds: frozenset[Kind]
    factory: Factory | None
    #: for reference types this picker does not implement: why, shown in the error
    unsupported: str = ""


class Registry:
    """Plugin type string → factory and roles."""

    def __init__(self) -> None:
        self._types: dict[str, PluginType] = {}

    def register(self, type_name: str, factory: Factory, *kinds: Kind) -> None:
        """Add a buildable type. Registering a type twice is a programming error (``ValueError``)."""
        self._add(PluginType(type_name, frozenset(kinds), factory))

    def register_service(self, type_name: str) -> None:
        """Add a type that is valid in a document but configures the service, not the scheduler."""
        self._add(PluginType(type_name, frozenset({Kind.SERVICE}), None))

    def register_unsupported(self, type_name: str, reason: str) -> None:
        """Add a reference type this picker knows but does not implement (a clearer error than "unknown")."""
        self._add(PluginType(type_name, frozenset(), None, unsupported=reason))

    def _add(self, entry: PluginType) -> None:
        if entry.type_name in self._types:
            raise ValueError(f"plugin type {entry.type_name!r} is already registered")
        self._types[entry.type_name] = entry

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._types

    def types(self, kind: Kind | None = None) -> tuple[str, ...]:
        """Registered (implemented) type names, optionally only those with a role."""
        return tuple(
            sorted(
                t.type_name
                for t in self._types.values()
                if not t.unsupported and (kind is None or kind in t.kinds)
            )
        )

    def lookup(self, spec: PluginSpec) -> PluginType:
        entry = self._types.get(spec.type)
        if entry is None:
            raise ConfigurationError(
                f"plugin {spec.name!r}: unknown plugin type {spec.type!r} "
                f"(known types: {', '.join(self.types())})"
            )
        if entry.unsupported:
            raise ConfigurationError(
                f"plugin {spec.name!r}: plugin type {spec.type!r} is not supported by this picker: "
                f"{entry.unsupported}"
            )
        return entry

    def create(self, spec: PluginSpec) -> Plugin:
        entry = self.lookup(spec)
        if entry.factory is None:
            raise ConfigurationError(
                f"plugin {spec.name!r}: type {spec.type!r} configures the service, it is not a "
                "scheduling plugin"
            )
        return entry.factory(spec.name, spec.parameters)


def default_registry() -> Registry:
    """A new registry with every built-in type (scheduling, service and known-unsupported reference types)."""
    r = Registry()
    r.register(QueueScorer.type_name, QueueScorer, Kind.SCORER)
    r.register(RunningRequestsScorer.type_name, RunningRequestsScorer, Kind.SCORER)
    r.register(KvCacheUtilizationScorer.type_name, KvCacheUtilizationScorer, Kind.SCORER)
    r.register(GpuUtilizationScorer.type_name, GpuUtilizationScorer, Kind.SCORER)
    r.register(LoraAffinityScorer.type_name, LoraAffinityScorer, Kind.SCORER)
    r.register(PrefixCacheScorer.type_name, PrefixCacheScorer, Kind.SCORER)
    r.register(PrefillQueueScorer.type_name, PrefillQueueScorer, Kind.SCORER)
    r.register(TokenLoadScorer.type_name, TokenLoadScorer, Kind.SCORER)
    r.register(LatencyScorer.type_name, LatencyScorer, Kind.SCORER)
    r.register(CostScorer.type_name, CostScorer, Kind.SCORER)
    r.register(PrometheusScorer.type_name, PrometheusScorer, Kind.SCORER)
    r.register(MaxScorePicker.type_name, MaxScorePicker, Kind.PICKER)
    r.register(RandomPicker.type_name, RandomPicker, Kind.PICKER)
    r.register(WeightedRandomPicker.type_name, WeightedRandomPicker, Kind.PICKER)
    r.register(MetricsStalenessFilter.type_name, MetricsStalenessFilter, Kind.FILTER)
    r.register(HeaderBasedTestingFilter.type_name, HeaderBasedTestingFilter, Kind.FILTER)
    r.register(LoraCapacityFilter.type_name, LoraCapacityFilter, Kind.FILTER)
    r.register(UtilizationDetector.type_name, UtilizationDetector, Kind.FILTER, Kind.SATURATION_DETECTOR)
    r.register(ConcurrencyDetector.type_name, ConcurrencyDetector, Kind.FILTER, Kind.SATURATION_DETECTOR)
    r.register(SingleProfileHandler.type_name, SingleProfileHandler, Kind.PROFILE_HANDLER)
    r.register(ObjectiveProfileHandler.type_name, ObjectiveProfileHandler, Kind.PROFILE_HANDLER)
    for service_type in (
        "metrics-data-source",
        "core-metrics-extractor",
        "openai-parser",
        "passthrough-parser",
        "vllmgrpc-parser",
        "destination-endpoint-served-verifier",
        "request-attribute-reporter",
        # ours: passive health from the response path (validated by picker.config, run by the service)
        "outlier-detector",
        # data producers the reference auto-creates; our in-flight accounting and the prefix index
        # (scoring.prefix, owned by the service) need no plugin of their own
        "approx-prefix-cache-producer",
        "inflight-load-producer",
        # flow-control policies: picker.tenants.flow implements round robin and FCFS; the others are accepted
        # and named as not implemented (picker.config PickerConfig.flow_control_caveats)
        "global-strict-fairness-policy",
        "round-robin-fairness-policy",
        "fcfs-ordering-policy",
        "edf-ordering-policy",
        "slo-deadline-ordering-policy",
    ):
        r.register_service(service_type)
    latency = (
        "needs the latency predictor, which this picker does not have (its latency-scorer scores observed "
        "latency instead)"
    )
    r.register_unsupported("predicted-latency-producer", latency)
    r.register_unsupported("slo-headroom-tier-filter", latency)
    r.register_unsupported("latency-slo-admitter", latency)
    r.register_unsupported(
        "pd-profile-handler",
        "prefill/decode disaggregation is not implemented; objective-profile-handler chooses one profile "
        "per request",
    )
    r.register_unsupported("predicted-latency-profile-handler", latency)
    r.register_unsupported(
        "prefix-cache-affinity-filter",
        "not implemented; prefix-cache-scorer scores prefix affinity, and its load guard replaces the "
        "filter's threshold",
    )
    return r


# ---------------------------------------------------------------------------------------------- builder
def _instantiate(
    plugins: Sequence[PluginSpec], registry: Registry
) -> tuple[dict[str, Plugin], dict[str, PluginType], list[str]]:
    """Build every scheduling plugin; returns name → plugin, name → type entry, names in document order."""
    built: dict[str, Plugin] = {}
    entries: dict[str, PluginType] = {}
    order: list[str] = []
    for given in plugins:
        if not isinstance(given.type, str) or not given.type:
            raise ConfigurationError(f"plugin {given.name!r}: type is required")
        name = given.name or given.type  # reference: name defaults to the type
        if name in entries:
            raise ConfigurationError(f"duplicate plugin name {name!r}")
        spec = PluginSpec(name, given.type, given.parameters)
        entry = registry.lookup(spec)
        entries[name] = entry
        order.append(name)
        if entry.factory is not None:
            built[name] = registry.create(spec)
    return built, entries, order


def _resolve_profile(
    profile: ProfileSpec,
    built: Mapping[str, Plugin],
    entries: Mapping[str, PluginType],
    order: Sequence[str],
) -> tuple[list[Filter], list[tuple[Scorer[Any], float]], Picker | None]:
    filters: list[Filter] = []
    scorers: list[tuple[Scorer[Any], float]] = []
    picker: Picker | None = None
    seen: set[str] = set()
    where = f"scheduling profile {profile.name!r}"
    for ref, weight in profile.plugins:
        if not isinstance(ref, str) or not ref:
            raise ConfigurationError(f"{where}: pluginRef must be a non-empty string, got {ref!r}")
        if ref not in entries:
            raise ConfigurationError(
                f"{where}: pluginRef {ref!r} does not name a plugin (defined: {', '.join(order) or 'none'})"
            )
        if ref in seen:
            raise ConfigurationError(f"{where}: plugin {ref!r} is referenced twice")
        seen.add(ref)
        plugin = built.get(ref)
        if isinstance(plugin, Scorer):
            own = plugin.default_weight
            w = (1.0 if own is None else own) if weight is None else weight
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise ConfigurationError(f"{where}: weight of {ref!r} must be a number >= 0, got {weight!r}")
            if own is not None and weight is not None and float(weight) != own:
                raise ConfigurationError(
                    f"{where}: weight of {ref!r} is given twice with different values ({weight!r} in the "
                    f"profile, {own:g} in the plugin's parameters); keep one"
                )
            scorers.append((plugin, float(w)))
        elif isinstance(plugin, Picker):
            if picker is not None:
                raise ConfigurationError(
                    f"{where}: more than one picker ({picker.name!r} and {ref!r}); a profile has exactly one"
                )
            picker = plugin
        elif isinstance(plugin, Filter):
            filters.append(plugin)
        else:
            raise ConfigurationError(
                f"{where}: plugin {ref!r} (type {entries[ref].type_name!r}) cannot be used in a scheduling "
                "profile (only filters, scorers and pickers can)"
            )
    return filters, scorers, picker


def _default_profile(
    built: Mapping[str, Plugin], entries: Mapping[str, PluginType], order: Sequence[str]
) -> ProfileSpec:
    """Reference rule: no profiles → one profile ``default`` with every filter, scorer and picker plugin.

    Detectors are left out even though they can filter: a detector is declared to measure saturation,
    and silently also filtering with it would change routing (the reference's built-in default profile
    does not filter with its detector either).
    """
    refs: list[tuple[str, float | None]] = []
    for name in order:
        kinds = entries[name].kinds
        if Kind.SATURATION_DETECTOR in kinds or name not in built:
            continue
        if kinds & {Kind.FILTER, Kind.SCORER, Kind.PICKER}:
            refs.append((name, None))
    return ProfileSpec(DEFAULT_PROFILE, refs)


def build_scheduler(
    plugins: Sequence[PluginSpec],
    profiles: Sequence[ProfileSpec],
    *,
    saturation_detector: str | None = None,
    registry: Registry | None = None,
) -> Scheduler:
    """Build and validate a configuration with one scheduling profile; returns its scheduler.

    :func:`build_profiles` with the same arguments, for callers that schedule with one profile (the
    simulator, benchmarks, tests). A configuration with several profiles raises
    :class:`ConfigurationError` here; build it with :func:`build_profiles`.
    """
    built = build_profiles(plugins, profiles, saturation_detector=saturation_detector, registry=registry)
    if len(built) != 1:
        raise ConfigurationError(
            f"expected one scheduling profile, got {len(built)}: {', '.join(built.by_name)} "
            "(build_profiles builds several)"
        )
    return built.default


def build_profiles(
    plugins: Sequence[PluginSpec],
    profiles: Sequence[ProfileSpec],
    *,
    saturation_detector: str | None = None,
    registry: Registry | None = None,
) -> Profiles:
    """Build and validate every scheduling profile and the profile handler from reference-style specs.

    Defaulting (reference): plugin name := type; no profiles → one ``default`` profile with all filter,
    scorer and picker plugins; scorer weight := 1 (or the scorer's own ``weight`` parameter, for those
    that have one); a profile without a picker gets the first picker defined in ``plugins`` or else a
    new ``max-score-picker``; no profile handler →
    ``single-profile-handler``; no saturation detector reference → the plugin named
    ``utilization-detector`` if defined, else a new one with default parameters. Plugins of service
    types (data layer, parsers, ...) are accepted and skipped. A plugin referenced by several profiles
    is one instance shared by them.

    Raises :class:`ConfigurationError` for unknown types, duplicate plugin or profile names, profiles
    without a name, dangling references, several pickers in a profile, several profiles without a
    handler that chooses between them (``objective-profile-handler``), a handler rule naming no
    profile, bad weights and bad parameters.
    """
    registry = registry if registry is not None else default_registry()
    built, entries, order = _instantiate(plugins, registry)

    handlers = [name for name in order if Kind.PROFILE_HANDLER in entries[name].kinds]
    if len(handlers) > 1:
        raise ConfigurationError(f"more than one profile handler: {', '.join(handlers)}")
    handler = built[handlers[0]] if handlers else SingleProfileHandler(SingleProfileHandler.type_name)
    assert isinstance(handler, ProfileHandler)

    names: set[str] = set()
    for i, profile in enumerate(profiles):
        name = profile.name
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"scheduling profile #{i + 1} has no name")
        if name in names:
            raise ConfigurationError(f"duplicate scheduling profile name {name!r}")
        names.add(name)
    if not profiles:
        profiles = [_default_profile(built, entries, order)]
    detector = _saturation_detector(saturation_detector, built, entries, registry)
    schedulers: list[Scheduler] = []
    for profile in profiles:
        filters, scorers, picker = _resolve_profile(profile, built, entries, order)
        if picker is None:
            picker = next(
                (p for name in order if isinstance(p := built.get(name), Picker)),
                MaxScorePicker(MaxScorePicker.type_name),
            )
        schedulers.append(
            Scheduler(
                profile_name=profile.name,
                filters=filters,
                scorers=scorers,
                picker=picker,
                saturation_detector=detector,
                profile_handler=handler.type_name,
            )
        )
    return Profiles(schedulers, handler, detector)


def _saturation_detector(
    ref: str | None, built: Mapping[str, Plugin], entries: Mapping[str, PluginType], registry: Registry
) -> SaturationDetector:
    if ref is None:
        plugin = built.get(DEFAULT_SATURATION_DETECTOR)
        if isinstance(plugin, SaturationDetector):
            return plugin
        return UtilizationDetector(DEFAULT_SATURATION_DETECTOR)
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigurationError("saturationDetector.pluginRef must not be empty")
    if ref not in entries:
        if ref in registry.types(Kind.SATURATION_DETECTOR):
            # a detector type named without a plugins[] entry: auto-instantiated with its defaults,
            # as the reference does for its default detector
            detector = registry.create(PluginSpec(ref, ref))
            assert isinstance(detector, SaturationDetector)
            return detector
        raise ConfigurationError(f"saturationDetector.pluginRef {ref!r} does not name a plugin")
    plugin = built.get(ref)
    if not isinstance(plugin, SaturationDetector):
        raise ConfigurationError(
            f"saturationDetector.pluginRef {ref!r} (type {entries[ref].type_name!r}) is not a "
            "saturation detector"
        )
    return plugin


# ---------------------------------------------------------------------------------------------- defaults
def reference_default_specs() -> tuple[list[PluginSpec], list[ProfileSpec]]:
    """The reference EPP's built-in configuration (§3.5): queue 2, KV 2, prefix 3, max-score picker."""
    plugins = [
        PluginSpec("queue-scorer", "queue-scorer"),
        PluginSpec("kv-cache-utilization-scorer", "kv-cache-utilization-scorer"),
        PluginSpec("prefix-cache-scorer", "prefix-cache-scorer"),
        PluginSpec("max-score-picker", "max-score-picker"),
    ]
    profile = ProfileSpec(
        DEFAULT_PROFILE,
        [
            ("queue-scorer", 2.0),
            ("kv-cache-utilization-scorer", 2.0),
            ("prefix-cache-scorer", 3.0),
            ("max-score-picker", None),
        ],
    )
    return plugins, [profile]


#: Our default profile's weights; why each is what it is: ``scoring/README.md``, "Our default profile"
#: (tuned with the fleet simulator on three traces at loads 0.5-1.0: benchmarks/results/quality-tuning.md).
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "prefill-queue-scorer": 2.0,
        "queue-scorer": 1.0,
        "kv-cache-utilization-scorer": 2.0,
        "lora-affinity-scorer": 2.0,
        "gpu-utilization-scorer": 0.5,
        "prefix-cache-scorer": 3.0,
    }
)


#: Our default profile's plugin parameters where they differ from the plugin's defaults: prefix index
#: entries of 8 blocks (``scoring/prefix/README.md``, "Coarser entries": a never-seen prompt's hashing,
#: index update and memory divided by 8, no capacity lost in the simulator; the reference's 1 stays the
#: parameter's default, so a configuration that names ``prefix-cache-scorer`` gets the reference's index).
DEFAULT_PARAMETERS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"prefix-cache-scorer": MappingProxyType({"blocksPerEntry": 8, "continuationCredit": True})}
)


def default_specs() -> tuple[list[PluginSpec], list[ProfileSpec]]:
    """Our default configuration: pending prefill tokens, the queue with the dispatched-load estimate, KV
    usage, LoRA affinity, GPU utilization and the prompt's cached prefix (the reference's weight 3, its
    load guard on, index entries of 8 blocks), with a max-score picker (every other parameter at its
    default)."""
    plugins = [PluginSpec(t, t, DEFAULT_PARAMETERS.get(t, MappingProxyType({}))) for t in DEFAULT_WEIGHTS]
    plugins.append(PluginSpec("max-score-picker", "max-score-picker"))
    refs: list[tuple[str, float | None]] = list(DEFAULT_WEIGHTS.items())
    refs.append(("max-score-picker", None))
    return plugins, [ProfileSpec(DEFAULT_PROFILE, refs)]


def reference_default_scheduler() -> Scheduler:
    """The reference EPP's default: queue 2, KV 2, prefix 3, max-score, utilization detector."""
    return build_scheduler(*reference_default_specs())


def default_scheduler() -> Scheduler:
    """Our default profile (see :func:`default_specs` and ``scoring/README.md``)."""
    return build_scheduler(*default_specs())
