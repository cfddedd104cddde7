"""The search space of ``picker tune``: configuration documents in and out, and the knobs the search moves.

A :class:`Setting` is what the search changes in a document — the profile's scorer weights (0 = scorer left
out) and a few numeric plugin parameters (:data:`TUNABLE_PARAMETERS`); :func:`read_setting` /
:func:`apply_setting` move between the two, keeping everything else in the user's documents untouched.
:func:`knobs` lists the dimensions (only scorers whose inputs the simulator produces,
:data:`SIMULATED_SCORERS`), :func:`random_candidates` and :func:`neighbours` generate candidates from a seeded
generator. The procedure that uses them: :mod:`benchmarks.sim.tune`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import yaml

REFERENCE_API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
PREFIX_SCORER = "prefix-cache-scorer"
#: numeric scorer parameters the search moves: type -> parameter -> (low, high, the plugin's default)
#: (all integers; a low of 0 means "off" is one of the values tried)
TUNABLE_PARAMETERS: Mapping[str, Mapping[str, tuple[float, float, float]]] = {
    "prefill-queue-scorer": {"minRangeTokens": (1024.0, 65536.0, 16384.0)},
    "prefix-cache-scorer": {
        # how many leading tokens the index compares (x blockSizeTokens 16): longer shared prefixes are
        # told apart, at a hashing cost per request
        "maxPrefixBlocksToMatch": (64.0, 2048.0, 256.0),
        # the load guard: prefill tokens assumed per scraped queued request, backlog tolerated for free
        "queuedRequestTokens": (128.0, 8192.0, 1024.0),
        "backlogToleranceTokens": (0.0, 65536.0, 0.0),
    },
}
#: scorers whose inputs the simulator produces (the others keep their weights: tuning them here would fit
#: noise): GPU utilization has no exporter in the simulator, LoRA affinity needs adapters, which the
#: Azure and Mooncake formats do not carry
SIMULATED_SCORERS = frozenset(
    {
        "queue-scorer",
        "running-requests-size-scorer",
        "kv-cache-utilization-scorer",
        "prefill-queue-scorer",
        "token-load-scorer",
        PREFIX_SCORER,
    }
)
#: a weight is moved by at most this factor either way in the random stage
SPREAD = 4.0


# ------------------------------------------------------------------------------------------------ documents
@dataclass(frozen=True, slots=True)
class Setting:
    """What the search changes: profile weights by plugin name (0 = left out) and plugin parameters."""

    weights: tuple[tuple[str, float], ...]
    params: tuple[tuple[str, str, float], ...] = ()

    def weight(self, name: str) -> float:
        return dict(self.weights).get(name, 0.0)

    def normalized(self) -> Setting:
        """The same configuration without parameters of scorers that are off: :func:`apply_setting` drops
        such a plugin, so they change nothing, and two settings that differ only there are one document
        (the search would replay it twice, and :meth:`describe` would name a parameter the document
        lacks)."""
        params = tuple(x for x in self.params if self.weight(x[0]) > 0)
        return self if params == self.params else replace(self, params=params)

    def describe(self) -> str:
        parts = [f"{n} {_num(w)}" for n, w in self.weights if w]
        parts += [f"{n}.{p} {_num(v)}" for n, p, v in self.params]
        return ", ".join(parts) or "(no scorer)"


def default_document() -> list[dict[str, Any]]:
    """Our built-in configuration as a document (``scoring.default_specs``)."""
    from scoring import default_specs

    plugins, profiles = default_specs()
    return [
        {
            "apiVersion": REFERENCE_API_VERSION,
            "kind": "EndpointPickerConfig",
            "plugins": [
                {
                    "name": p.name,
                    "type": p.type,
                    **({"parameters": dict(p.parameters)} if p.parameters else {}),
                }
                for p in plugins
            ],
            "schedulingProfiles": [
                {
                    "name": prof.name,
                    "plugins": [
                        {"pluginRef": r, **({"weight": w} if w is not None else {})} for r, w in prof.plugins
                    ],
                }
                for prof in profiles
            ],
        }
    ]


def _picker_doc(docs: Sequence[Mapping[str, Any]]) -> int:
    for i, d in enumerate(docs):
        if isinstance(d, Mapping) and d.get("kind") == "EndpointPickerConfig":
            return i
    raise ValueError("the configuration has no EndpointPickerConfig document")


def _types(doc: Mapping[str, Any]) -> dict[str, str]:
    """Plugin name -> type."""
    return {str(p.get("name") or p["type"]): str(p["type"]) for p in doc.get("plugins") or ()}


def _profile(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    profiles = doc.get("schedulingProfiles") or ()
    if len(profiles) != 1:
        raise ValueError("picker tune needs a document with exactly one scheduling profile")
    return profiles[0]


def read_setting(docs: Sequence[Mapping[str, Any]]) -> Setting:
    """The weights and tunable parameters of a validated document."""
    from scoring import Kind, default_registry

    doc = docs[_picker_doc(docs)]
    types = _types(doc)
    scorers = set(default_registry().types(Kind.SCORER))
    weights = [
        (str(ref["pluginRef"]), float(ref.get("weight", 1.0)))
        for ref in _profile(doc)["plugins"]
        if types.get(str(ref["pluginRef"])) in scorers
    ]
    params = [
        (name, key, float(p["parameters"][key]))
        for p in doc.get("plugins") or ()
        for name in (str(p.get("name") or p["type"]),)
        for key in TUNABLE_PARAMETERS.get(str(p["type"]), {})
        if dict(weights).get(name) and key in (p.get("parameters") or {})
    ]
    return Setting(tuple(weights), tuple(params))


def apply_setting(docs: Sequence[Mapping[str, Any]], s: Setting) -> list[dict[str, Any]]:
    """A copy of ``docs`` with the setting's weights (0 = scorer removed from the profile and from
    ``plugins`` when nothing else refers to it; a new name = a plugin of that type added) and
    parameters."""
    out = [copy.deepcopy(dict(d)) for d in docs]
    doc = out[_picker_doc(out)]
    plugins: list[dict[str, Any]] = doc.setdefault("plugins", [])
    refs: list[dict[str, Any]] = _profile(doc)["plugins"]  # type: ignore[assignment]
    names = {str(p.get("name") or p["type"]) for p in plugins}
    for name, w in s.weights:
        mine = [r for r in refs if r["pluginRef"] == name]
        if w <= 0:
            refs[:] = [r for r in refs if r["pluginRef"] != name]
            continue
        if mine:
            mine[0]["weight"] = _num(w)
        else:
            # a new scorer goes before the picker, which the reference expects last
            refs.insert(max(0, len(refs) - 1), {"pluginRef": name, "weight": _num(w)})
        if name not in names:
            plugins.append({"type": name})
            names.add(name)
    used = {r["pluginRef"] for r in refs}
    removed = {n for n, w in s.weights if w <= 0} - used
    detector = (doc.get("saturationDetector") or {}).get("pluginRef")
    doc["plugins"] = [p for p in plugins if str(p.get("name") or p["type"]) not in removed - {detector}]
    for name, key, value in s.params:
        for p in doc["plugins"]:
            if str(p.get("name") or p["type"]) == name:
                p.setdefault("parameters", {})[key] = _num(value)
    return out


def _num(x: float) -> float | int:
    """Three significant digits; integral values as integers (weights and token counts read better)."""
    r = float(f"{x:.3g}")
    return int(r) if r.is_integer() else r


def dump(docs: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False, default_flow_style=None, width=110)


def validate(text: str) -> None:
    """Raise with the loader's message if the service would reject ``text``."""
    from picker.config import load_config_text

    load_config_text(text)


# ------------------------------------------------------------------------------------------------ search
@dataclass(frozen=True, slots=True)
class Knob:
    """One dimension of the search: a weight (``param`` None) or a plugin parameter."""

    plugin: str
    param: str | None
    low: float
    high: float


def knobs(base: Setting, docs: Sequence[Mapping[str, Any]], *, prefix: bool) -> list[Knob]:
    """The search's dimensions: weights of the profile's scorers the simulator exercises
    (:data:`SIMULATED_SCORERS`), ``prefix-cache-scorer`` if the trace shares prefixes, and their
    :data:`TUNABLE_PARAMETERS`."""
    doc = docs[_picker_doc(docs)]
    types = _types(doc)
    out = [
        Knob(n, None, 0.0, max(8.0, w * SPREAD))
        for n, w in base.weights
        if types.get(n, n) in SIMULATED_SCORERS and (prefix or types.get(n, n) != PREFIX_SCORER)
    ]
    if prefix and PREFIX_SCORER not in dict(base.weights):
        out.append(Knob(PREFIX_SCORER, None, 0.0, 8.0))
    for k in list(out):
        for key, (lo, hi, _) in TUNABLE_PARAMETERS.get(types.get(k.plugin, k.plugin), {}).items():
            out.append(Knob(k.plugin, key, lo, hi))
    return out


def _current(s: Setting, k: Knob, defaults: Mapping[tuple[str, str], float]) -> float:
    if k.param is None:
        return s.weight(k.plugin)
    return {(n, p): v for n, p, v in s.params}.get((k.plugin, k.param), defaults.get((k.plugin, k.param), 0))


def _set(s: Setting, k: Knob, value: float) -> Setting:
    # what is evaluated is exactly what gets written: weights to 3 digits, parameters to integers
    value = float(_num(value)) if k.param is None else float(round(value))
    if k.param is None:
        w = dict(s.weights)
        w[k.plugin] = value
        return replace(s, weights=tuple(w.items()))
    p = {(n, q): v for n, q, v in s.params}
    p[(k.plugin, k.param)] = value
    return replace(s, params=tuple((n, q, v) for (n, q), v in p.items()))


def random_candidates(
    base: Setting,
    ks: Sequence[Knob],
    n: int,
    rng: np.random.Generator,
    defaults: Mapping[tuple[str, str], float],
) -> list[Setting]:
    """``n`` settings around ``base`` (see the module docstring)."""
    out = []
    for _ in range(n):
        s = base
        for k in ks:
            cur = _current(base, k, defaults)
            if k.param is None:
                if rng.random() < 0.2:
                    v = 0.0
                else:
                    start = cur if cur > 0 else rng.uniform(0.5, 4.0)
                    v = float(
                        np.clip(
                            start * math.exp(rng.uniform(-math.log(SPREAD), math.log(SPREAD))), 0.0, k.high
                        )
                    )
            elif k.low <= 0 and rng.random() < 0.25:
                v = 0.0
            else:
                low = k.low if k.low > 0 else k.high / 64
                v = float(math.exp(rng.uniform(math.log(low), math.log(k.high))))
            s = _set(s, k, v)
        if any(w > 0 for _, w in s.weights):
            out.append(s.normalized())
    return out


def neighbours(s: Setting, ks: Sequence[Knob], defaults: Mapping[tuple[str, str], float]) -> list[Setting]:
    """One knob at a time: halved, doubled, switched off (weights) or on at 1 (an absent scorer); the
    parameters of a scorer that is off are not moved (:meth:`Setting.normalized`)."""
    out = []
    for k in ks:
        if k.param is not None and s.weight(k.plugin) <= 0:
            continue
        cur = _current(s, k, defaults)
        if k.param is None:
            values = [cur * 0.5, min(cur * 2.0, k.high), 0.0] if cur > 0 else [1.0, 3.0]
        elif cur > 0:
            values = [max(k.low, cur * 0.5), min(k.high, cur * 2.0)]
        else:
            values = [k.high / 16, k.high / 4]
        for v in values:
            if v != cur:
                t = _set(s, k, v).normalized()
                if any(w > 0 for _, w in t.weights):
                    out.append(t)
    return out


def param_default(docs: Sequence[Mapping[str, Any]], k: Knob) -> float:
    """A parameter's value when the document leaves it out: the plugin's documented default."""
    t = _types(docs[_picker_doc(docs)]).get(k.plugin, k.plugin)
    return TUNABLE_PARAMETERS[t][str(k.param)][2]
