"""External endpoints' passive health, settlement from the endpoint that served, and spill-first under flow
control and shedding (``picker.routing.external``, ``picker.routing.director``).

* outcomes of spilled requests eject an external endpoint as they eject a pool endpoint (the same
  ``outlier-detector`` settings); an ejected endpoint takes nothing, then exactly one probe;
* the gateway's retry landing on the pool's fallback settles the external reservation as one request with
  no tokens and no cost, and counts as a failure of the external endpoint;
* with flow control on and the pool saturated, a request an external endpoint takes is not queued; one
  none takes is; a sheddable request allowed to spill spills instead of being shed.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from picker.errors import ResourceExhausted
from picker.extproc.usage import Usage
from picker.routing.director import Director
from picker.routing.external import ExternalCapacity, ExternalTicket
from picker.routing.types import Dispatch, PendingRoute
from picker.state.health import OutlierPolicy
from picker.state.outcomes import Outcome
from picker.tenants.flow import FlowController, FlowLimits
from tests.unit.routing.doubles import Observer, State
from tests.unit.routing.test_external import MANAGED, POOL, Clock, picker_doc, pool, request, route, store


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def director(
    st: State, text: str, *, flow: FlowController | None = None
) -> tuple[Director, Observer, ExternalCapacity, Monotonic]:
    observer = Observer()
    mono = Monotonic()
    external = ExternalCapacity(clock=Clock(), monotonic=mono)
    d = Director(
        st,
        store(text),
        rng=np.random.default_rng(0),
        clock=lambda: 0.0,
        observer=observer,
        flow=flow,
        external=external,
    )
    return d, observer, external, mono


def only_managed(limits: str = "{concurrent: 10}") -> str:
    """Managed with ``limits``; backup never admits (so every spill goes to managed)."""
    return picker_doc(limits=limits, backup="{requestsPerMinute: 0}")


def finish(decision: Dispatch, status: int, served: str | None = None) -> None:
    """What the stream does with a spilled request: served endpoint at the response headers, usage at the
    end, the outcome to the lease, then release."""
    ticket = decision.ticket
    assert isinstance(ticket, ExternalTicket)
    ticket.sent = True
    if served is not None:
        ticket.served_by(served)
    if status:
        ticket.complete(Usage(prompt_tokens=10, completion_tokens=5), status_ok=status == 200)
    decision.lease.report(Outcome(endpoints=decision.endpoints, served=served, status=status))
    decision.lease.release()
    ticket.release()


def health(external: ExternalCapacity, name: str = "managed") -> dict[str, object]:
    (row,) = [s for s in external.stats() if s["name"] == name]
    doc = row["health"]
    assert isinstance(doc, dict)
    return doc


def test_five_failures_eject_an_external_endpoint_and_the_pool_keeps_the_requests() -> None:
    d, obs, external, _ = director(pool(waiting=10.0), only_managed())
    finish(route(d), 200)  # a response was seen: resets count from now on
    for _ in range(5):
        finish(route(d), 503)
    assert health(external)["state"] == "ejected"
    assert health(external)["reason"] == "consecutive_5xx"
    assert external.health.ejections_total["consecutive_5xx"] == 1
    decision = route(d)
    assert decision.external == "", "an ejected external endpoint takes nothing"
    assert decision.endpoints == POOL
    assert obs.failovers["saturated"] == 6, "the request that stayed in the pool is no failover"


def test_an_objective_that_asks_for_an_ejected_endpoint_counts_ejected() -> None:
    alone = "\n".join(line for line in only_managed().splitlines() if "name: backup" not in line)
    d, obs, external, _ = director(pool(waiting=0.0), alone)
    finish(route(d, request("offload")), 200)
    for _ in range(5):
        finish(route(d, request("offload")), 0)  # no response headers: a reset
    assert health(external)["last_failure"] == "reset"
    decision = route(d, request("offload"))
    assert decision.endpoints == POOL
    assert decision.failover == "ejected"
    assert obs.failovers == Counter({"ejected": 1})


def test_resets_count_only_once_a_response_was_seen() -> None:
    d, _, external, _ = director(pool(waiting=10.0), only_managed())
    for _ in range(6):
        finish(route(d), 0)
    assert health(external)["state"] == "healthy", "a gateway that sends no response phases proves nothing"


def test_after_the_ejection_time_exactly_one_probe_then_reinstated() -> None:
    d, _, external, mono = director(pool(waiting=10.0), only_managed())
    finish(route(d), 200)
    for _ in range(5):
        finish(route(d), 503)
    mono.t += 30.0  # the base ejection time
    assert health(external)["state"] == "probing"
    probe = route(d)
    assert probe.external == "managed"
    assert route(d).external == "", "one probe at a time"
    finish(probe, 200)
    assert health(external)["state"] == "healthy"
    assert route(d).external == "managed"


def test_a_failed_probe_ejects_again_for_longer() -> None:
    d, _, external, mono = director(pool(waiting=10.0), only_managed())
    finish(route(d), 200)
    for _ in range(5):
        finish(route(d), 503)
    mono.t += 30.0
    finish(route(d), 503)
    doc = health(external)
    assert (doc["state"], doc["reason"], doc["multiplier"]) == ("ejected", "probe_failed", 2)
    assert doc["ejected_for_s"] == pytest.approx(60.0)


def test_the_outlier_detector_settings_apply_and_can_switch_it_off() -> None:
    d, _, external, _ = director(pool(waiting=10.0), only_managed())
    external.set_health_policy(OutlierPolicy(consecutive_failures=2))
    finish(route(d), 200)
    finish(route(d), 503)
    finish(route(d), 503)
    assert health(external)["state"] == "ejected"
    external.set_health_policy(OutlierPolicy(enabled=False))
    assert health(external)["state"] == "healthy"
    for _ in range(6):
        finish(route(d), 503)
    assert health(external)["state"] == "healthy"


def test_the_fallback_serving_settles_one_request_without_tokens_and_counts_a_failure() -> None:
    d, _, external, _ = director(pool(waiting=10.0), only_managed("{tokensPerMinute: 10000}"))
    decision = route(d)
    assert decision.endpoints[0] == MANAGED
    ticket = decision.ticket
    assert isinstance(ticket, ExternalTicket)
    ticket.sent = True
    ticket.served_by(POOL[0])  # the response headers: the gateway's retry landed on the pool
    (row,) = [s for s in external.stats() if s["name"] == "managed"]
    assert row["reserved"]["tokensPerMinute"] == 0, "settled at the response headers, not at the end"
    assert row["used"]["requestsPerMinute"] == 1
    assert row["used"]["tokensPerMinute"] == 0
    assert row["used"]["costPerDay"] == 0
    assert health(external)["consecutive_failures"] == 1, "a failure at once, not at the stream's end"
    ticket.complete(Usage(prompt_tokens=100, completion_tokens=50), status_ok=True)  # the pool's usage
    decision.lease.report(Outcome(endpoints=decision.endpoints, served=POOL[0], status=200))
    ticket.release()
    (row,) = [s for s in external.stats() if s["name"] == "managed"]
    assert row["used"]["tokensPerMinute"] == 0, "the pool's usage is not the external endpoint's"
    assert health(external)["last_failure"] == "retried"
    assert health(external)["consecutive_failures"] == 1, "counted once"


def test_the_external_endpoint_serving_settles_with_its_usage() -> None:
    d, _, external, _ = director(pool(waiting=10.0), only_managed("{tokensPerMinute: 10000}"))
    finish(route(d), 200, served=MANAGED)
    (row,) = [s for s in external.stats() if s["name"] == "managed"]
    assert row["used"]["tokensPerMinute"] == 15
    assert health(external)["consecutive_failures"] == 0


# ------------------------------------------------------------------------------------- flow control
class Full:
    """The pool's saturation as flow control reads it: full until the test says otherwise."""

    def __init__(self) -> None:
        self.value = 1.0

    def __call__(self) -> float:
        return self.value


def flow_controller(saturation: Full) -> FlowController:
    flow = FlowController(saturation, registry=CollectorRegistry())
    flow.configure(enabled=True, limits=FlowLimits(ttl_s=None))
    return flow


async def test_flow_control_spills_first_and_queues_only_what_no_external_endpoint_takes() -> None:
    full = Full()
    flow = flow_controller(full)
    # the pool's own detector reads idle: only flow control says "queue" (its saturation, or others waiting)
    d, obs, external, _ = director(pool(waiting=0.0), only_managed("{concurrent: 2}"), flow=flow)
    a, b = (d.route(r, d.resolve(r)) for r in (request(), request()))
    assert isinstance(a, Dispatch)
    assert isinstance(b, Dispatch)
    assert (a.external, b.external) == ("managed", "managed"), "spilled, not queued"
    assert a.failover == "saturated"
    queued = d.route(request(), d.resolve(request()))
    assert isinstance(queued, PendingRoute), "no external endpoint has room: it waits in the queue"
    assert flow.waiting == 1
    arrived = d.route(request(), d.resolve(request()))
    assert isinstance(arrived, PendingRoute), "others wait: it queues behind them"
    finish(a, 200)  # a concurrency slot is free again, and the pool has room
    full.value = 0.0
    flow.poke()
    first = await asyncio.wait_for(queued.wait(), 5.0)
    assert first.endpoints == POOL, "dispatched from the queue to the pool (it is not saturated)"
    second = await asyncio.wait_for(arrived.wait(), 5.0)
    assert second.endpoints == POOL
    assert flow.waiting == 0
    assert obs.failovers == Counter({"saturated": 2})
    assert external.dispatched == {"managed": 2}


async def test_flow_control_queues_a_request_below_the_spill_priority() -> None:
    flow = flow_controller(Full())
    text = only_managed().replace("spillover: {", "spillover: {minPriority: 1, ")
    d, _, external, _ = director(pool(waiting=0.0), text, flow=flow)
    routed = d.route(request(), d.resolve(request()))
    assert isinstance(routed, PendingRoute)
    routed.cancel()
    assert external.dispatched == {}


def test_a_sheddable_request_allowed_to_spill_spills_instead_of_being_shed() -> None:
    text = picker_doc(limits="{requestsPerMinute: 1}", backup="{requestsPerMinute: 0}")
    text = text.replace("spillover: {", "spillover: {minPriority: -1, ")
    d, obs, _, _ = director(pool(waiting=10.0), text)
    explained = d.explain(request("sheddable"))
    assert explained.spill is not None
    assert explained.spill["why"].startswith("the request is sheddable and the pool is saturated")
    assert explained.spill["endpoint"] == "managed"
    decision = route(d, request("sheddable"))
    assert decision.external == "managed"
    assert decision.failover == "saturated"
    with pytest.raises(ResourceExhausted, match="sheddable request dropped"):
        route(d, request("sheddable"))  # no budget left: shed as without external endpoints
    assert obs.failovers == Counter({"saturated": 1})


# ------------------------------------------------------------------------------------ profile rules
def ruled(rules: str) -> str:
    """Managed only, with an ``objective-profile-handler`` whose rules set ``external``."""
    rest = only_managed().split("---\n", 1)[1]
    return (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- {type: queue-scorer}\n- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        f"- {{type: objective-profile-handler, parameters: {{rules: [{rules}]}}}}\n"
        "schedulingProfiles:\n- name: default\n"
        "  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]\n"
        f"---\n{rest}"
    )


RULES = (
    "{objective: private, profile: default, external: Never}, "
    "{objective: overflow, profile: default, external: Prefer}, "
    "{objective: sheddable, profile: default, external: WhenSaturated}"
)


def test_a_profile_rule_never_keeps_a_request_in_a_saturated_pool() -> None:
    d, obs, _, _ = director(pool(waiting=10.0), ruled(RULES))
    decision = route(d, request("private"))
    assert decision.endpoints == POOL
    assert obs.failovers == Counter()
    explained = d.explain(request("private"))
    assert explained.spill is not None
    assert explained.spill["why"] == "the profile handler's rule 0 says external: Never"
    assert route(d).external == "managed", "a request no rule covers spills as configured"


def test_a_profile_rule_prefer_sends_a_request_external_first_from_an_idle_pool() -> None:
    d, obs, _, _ = director(pool(waiting=0.0), ruled(RULES))
    decision = route(d, request("overflow"))
    assert decision.endpoints == (MANAGED, *POOL)
    assert decision.failover is None, "asked for, not a failover"
    explained = d.explain(request("overflow"))
    assert explained.spill is not None
    assert explained.spill["why"].startswith("the profile handler's rule says external: Prefer")
    assert route(d).external == "", "an idle pool keeps the others"
    assert obs.failovers == Counter()


def test_a_profile_rule_lets_a_sheddable_request_spill_below_min_priority() -> None:
    d, _, _, _ = director(pool(waiting=10.0), ruled(RULES))
    assert route(d, request("sheddable")).external == "managed", "the rule overrides minPriority 0"
    d, _, _, _ = director(pool(waiting=10.0), only_managed())
    with pytest.raises(ResourceExhausted, match="sheddable request dropped"):
        route(d, request("sheddable"))


def test_the_pools_fallback_learns_its_part_of_a_spilled_request() -> None:
    st = pool(waiting=10.0)
    d, _, _, _ = director(st, only_managed())
    decision = route(d)
    finish(decision, 503, served=POOL[0])  # the external endpoint failed, the pool's fallback answered 503
    (outcome,) = st.reported
    assert outcome.endpoints == decision.endpoints
    assert (outcome.served, outcome.status) == (POOL[0], 503), "the pool's passive health hears of it"
