"""One request's spill decision (:func:`decide`): given what :meth:`picker.routing.external.
ExternalCapacity.wants` found, the reservation on an external endpoint (a live request) or what
``/debug/explain`` says about it (``Dispatch.spill``: whether the request would go to an external endpoint
first, and why or why not; reads the budgets and passive health, reserves nothing).

The explanation::

    {"would_spill": true, "endpoint": "managed",
     "why": "the pool is saturated: the saturation detector reads 1.4 >= spillover.saturationThreshold 1",
     "endpoints": [
       {"name": "managed", "address": "10.96.0.10:8080", "priority": 0, "verdict": "admits"},
       {"name": "backup", ..., "verdict": "over requestsPerMinute: 60 in use + 1 asked > limit 60"}]}

``why`` names the rule of :meth:`picker.routing.external.ExternalCapacity.wants` that applied (or that
none did: the pool can take it, or no candidate's scrape has answered yet; with no candidate scraped, the
reading over those whose scrapes failed says so), ``endpoints`` each endpoint in the order they are tried
with its verdict (``admits``, over which limit by how much, ejected by passive health and for how long,
probing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from picker.routing.avoid import FailoverReason
from picker.routing.external import ExternalCapacity, ExternalTicket, SpillCheck, SpillTicket
from scoring.profiles import ExternalPolicy, ProfileChoice

if TYPE_CHECKING:
    from picker.routing.external_remote import Grant

__all__ = ["NO_SPILL", "RemoteAsk", "SpillDecision", "decide", "explain_spill", "explain_spill_off"]


class SpillDecision(NamedTuple):
    #: the reservation of a live request sent to an external endpoint first
    ticket: SpillTicket | None
    #: the address the request goes to first (or, explained, would go to); None: the pool's primary
    first: str | None
    #: the ``ai_failover_total`` reason of the spill (or of a refusal the objective asked for)
    failover: str | None
    #: the explanation (``/debug/explain`` only)
    doc: Mapping[str, Any] | None


NO_SPILL = SpillDecision(None, None, None, None)


class RemoteAsk(NamedTuple):
    """A ``--workers`` worker's request that wants an external endpoint: the supervisor's answer is on
    its way (``picker.routing.external_remote``); :meth:`decided` turns it into the decision."""

    check: SpillCheck
    future: asyncio.Future[Grant]

    def decided(self, grant: Grant) -> SpillDecision:
        ticket = grant.ticket
        if ticket is not None:
            reason = self.check.reason
            return SpillDecision(
                ticket, ticket.endpoint.address, None if reason is None else reason.value, None
            )
        return SpillDecision(None, None, grant.refusal if self.check.asked else None, None)


def decide(
    external: ExternalCapacity,
    check: SpillCheck,
    prompt_tokens: int,
    max_tokens: int | None,
    *,
    objective: str,
    pressed: bool,
    shed: bool,
    explain: bool,
) -> SpillDecision | RemoteAsk:
    """Reserve on the first external endpoint that takes the request when ``check`` wants it (a live
    request), or explain what would happen (``explain``: nothing reserved). A ``--workers`` worker asks
    the supervisor: a :class:`RemoteAsk` comes back."""
    remote = external.remote
    if remote is not None and check.wanted and not explain:
        return RemoteAsk(check, remote.reserve(prompt_tokens, max_tokens))
    ticket: ExternalTicket | None = None
    first: str | None = None
    doc: Mapping[str, Any] | None = None
    if explain:
        name, doc = explain_spill(
            external, check, prompt_tokens, max_tokens, objective=objective, pressed=pressed, shed=shed
        )
        first = next((e.address for e in external.endpoints if e.name == name), None)
    elif check.wanted:
        ticket = external.reserve(prompt_tokens, max_tokens)
        first = None if ticket is None else ticket.endpoint.address
    failover: str | None = None
    if first is not None:
        failover = None if check.reason is None else check.reason.value
    elif check.asked:
        failover = external.refusal().value
    return SpillDecision(ticket, first, failover, doc)


def explain_spill(
    external: ExternalCapacity,
    check: SpillCheck,
    prompt_tokens: int,
    max_tokens: int | None,
    *,
    objective: str,
    pressed: bool,
    shed: bool,
) -> tuple[str | None, Mapping[str, Any]]:
    """``(name of the endpoint the request would go to or None, the explanation)``."""
    threshold = external.spill.saturation_threshold
    why = _why(
        check, objective, threshold, pressed=pressed, shed=shed, external_objectives=external.spill.objectives
    )
    if not check.wanted:
        return None, {"would_spill": False, "endpoint": None, "why": why, "endpoints": []}
    name, rows = external.preview(prompt_tokens, max_tokens)
    if name is None:
        then = "the request is shed (429)" if shed else "the request stays in the pool"
        why = f"{why}; but no external endpoint takes it: {then}"
    return name, {"would_spill": name is not None, "endpoint": name, "why": why, "endpoints": rows}


def explain_spill_off(external: ExternalCapacity, priority: int, choice: ProfileChoice) -> Mapping[str, Any]:
    """The explanation when external endpoints are not considered at all for the request."""
    if not external.active:
        why = "no externalEndpoints configured"
    elif choice.external is ExternalPolicy.NEVER:
        why = f"the profile handler's {choice.reason} says external: Never"
    else:
        why = f"priority {priority} is below spillover.minPriority {external.spill.min_priority}"
    return {"would_spill": False, "endpoint": None, "why": why, "endpoints": []}


def _why(
    check: SpillCheck,
    objective: str,
    threshold: float,
    *,
    pressed: bool,
    shed: bool,
    external_objectives: tuple[str, ...],
) -> str:
    if check.asked:
        by = (
            f"the objective {objective!r} is in spillover.objectives"
            if objective in external_objectives
            else "the profile handler's rule says external: Prefer"
        )
        return f"{by}: external capacity first, the pool as fallback"
    reason = check.reason
    if reason is FailoverReason.UNAVAILABLE:
        return "the pool has no candidate for the request"
    if reason is FailoverReason.EJECTED:
        return "every pool candidate is ejected, probing or draining"
    if check.unscraped and check.saturation is None:
        then = "flow control queues it" if pressed else "the pool takes it"
        return (
            f"no candidate scraped yet ({check.unscraped} whose first scrape has not answered): their load "
            f"is unknown, which is no reason to spill; {then}"
        )
    reading = "" if check.saturation is None else f"{check.saturation:.3g}"
    if check.failed:
        pending = f"; {check.unscraped} not answered yet, left out" if check.unscraped else ""
        reading = (
            f"{reading} over the candidates whose scrapes failed ({check.failed} never scraped, their "
            f"metrics unreachable{pending})"
        )
    elif check.unscraped:
        reading = f"{reading} over the candidates scraped ({check.unscraped} never scraped, left out)"
    if reason is FailoverReason.SATURATED:
        if shed:
            return f"the request is sheddable and the pool is saturated ({reading}): external capacity or 429"
        if pressed:
            return f"flow control would queue the request (the pool is saturated: {reading}): spilled instead"
        return (
            f"the pool is saturated: the saturation detector reads {reading} >= "
            f"spillover.saturationThreshold {threshold:g}"
        )
    return (
        f"the pool can take it: the saturation detector reads {reading} < spillover.saturationThreshold "
        f"{threshold:g}"
    )
