"""Header-only mode (``--model-header`` / ``request.modelHeader``): what a configuration may hold in it.

In this mode the EPP answers at the request-headers message, from the model header and the scraped
state, and asks the proxy to skip every later phase: it never sees the request body nor any part of the
response. The decision taken here (issue 18): **a feature that needs what the mode skips is rejected at
load, with the reason**, rather than accepted and left doing nothing. Rejected:

* scorers that read the prompt or the response: ``prefix-cache-scorer`` (the prompt's cached prefix),
  ``prefill-queue-scorer`` (prompt tokens until the first response byte: with the response skipped its
  column stays at zero and every endpoint scores 1.0), ``latency-scorer`` (latency observed on
  responses);
* ``request-attribute-reporter`` (usage from the response) and ``destination-endpoint-served-verifier``
  (the response's served endpoint);
* an ``outlier-detector`` entry with ``enabled: true`` (passive health reads each response's status);
  without an entry, passive health is simply off in this mode (``enabled: false``), since it would never
  receive an outcome;
* ``modelRewrites`` (the model is rewritten in the body, which this mode does not forward) and
  ``responseProcessing: Always`` written out (every response is skipped);
* a ``tenants`` section (token budgets are reserved from the body and settled from the response's usage);
* ``externalEndpoints`` (their token limits are reserved from the body's ``max_tokens`` and settled from
  the response's usage, and their concurrency limit needs the response's end).

Accepted: every count- and gauge-based scorer, filter, picker, profile handler and saturation detector;
``token-load-scorer`` (it reads the gateway's prompt-token estimate header; without it every request
counts 0 tokens, see README); flow control (it queues on headers alone). The parser is not used.

Without a reference document the built-in default profile is used minus ``prefill-queue-scorer``, its
weight moved to ``queue-scorer`` (the load share of the profile kept; not re-tuned in the simulator), and
minus ``prefix-cache-scorer`` (no prompt to hash).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from picker.config.plugins import OUTLIER_DETECTOR, REQUEST_ATTRIBUTE_REPORTER, SERVED_VERIFIER
from scoring import PluginSpec, ProfileSpec
from scoring.registry import default_specs

if TYPE_CHECKING:
    from picker.config.document import PickerSettingsDocument
    from picker.config.reference import EndpointPickerDocument

__all__ = ["BODY_OR_RESPONSE_PLUGINS", "header_only_default_specs", "header_only_problems"]

_NEEDS = "header-only mode (modelHeader) never sees"
#: plugin type → why header-only mode cannot serve it
BODY_OR_RESPONSE_PLUGINS: Final[Mapping[str, str]] = {
    "prefix-cache-scorer": f"it scores the prompt's cached prefix, and {_NEEDS} the prompt",
    "prefill-queue-scorer": (
        f"it counts prompt tokens until the first response byte, and {_NEEDS} the response "
        "(every endpoint would score 1.0); token-load-scorer reads the prompt-token header instead"
    ),
    "latency-scorer": f"it scores latency observed on responses, and {_NEEDS} responses",
    REQUEST_ATTRIBUTE_REPORTER: f"it reports usage read from responses, and {_NEEDS} responses",
    SERVED_VERIFIER: f"it echoes the served endpoint of the response, and {_NEEDS} responses",
}
_MOVED_WEIGHT_FROM, _MOVED_WEIGHT_TO = "prefill-queue-scorer", "queue-scorer"
#: the built-in profile's prefix scorer, dropped in this mode (it hashes the prompt)
_DROPPED = "prefix-cache-scorer"


def header_only_problems(
    doc: EndpointPickerDocument, settings: PickerSettingsDocument, *, outlier_enabled: bool | None
) -> list[str]:
    """Every reason this configuration cannot run in header-only mode (empty: it can).

    ``outlier_enabled`` is the ``outlier-detector`` entry's ``enabled`` (None: no entry)."""
    problems = [
        f"plugin {p.effective_name} ({p.type}): {BODY_OR_RESPONSE_PLUGINS[p.type]}"
        for p in doc.plugins
        if p.type in BODY_OR_RESPONSE_PLUGINS
    ]
    if outlier_enabled:
        problems.append(
            f"plugin {OUTLIER_DETECTOR} with enabled: true: passive health reads each response's status, "
            f"and {_NEEDS} responses (set enabled: false, or rely on the gateway's own outlier detection)"
        )
    if settings.model_rewrites:
        problems.append(
            f"modelRewrites: a rewrite changes the model in the request body, and {_NEEDS} the body"
        )
    if "response_processing" in settings.model_fields_set and settings.response_processing == "Always":
        problems.append(f"responseProcessing: Always asks for every response, and {_NEEDS} responses")
    if settings.tenants is not None:
        problems.append(
            "tenants: budgets are reserved from the request body and settled from the response's usage, "
            f"and {_NEEDS} either"
        )
    if settings.external_endpoints:
        problems.append(
            "externalEndpoints: their token limits are reserved from the request body and settled from the "
            f"response's usage, and their concurrency limit needs the response's end; {_NEEDS} either"
        )
    return problems


def header_only_default_specs() -> tuple[list[PluginSpec], list[ProfileSpec]]:
    """The built-in default profile without ``prefill-queue-scorer`` and ``prefix-cache-scorer`` (see the
    module docstring): the prompt is never seen in this mode."""
    plugins, profiles = default_specs()
    moved = 0.0
    refs: list[tuple[str, float | None]] = []
    for ref, weight in profiles[0].plugins:
        if ref == _MOVED_WEIGHT_FROM:
            moved = weight or 0.0
        elif ref != _DROPPED:
            refs.append((ref, weight))
    refs = [(ref, (w or 0.0) + moved if ref == _MOVED_WEIGHT_TO else w) for ref, w in refs]
    kept = [p for p in plugins if p.type not in {_MOVED_WEIGHT_FROM, _DROPPED}]
    return kept, [ProfileSpec(profiles[0].name, refs)]
