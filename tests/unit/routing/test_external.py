"""External endpoints (``picker.routing.external``): the budgets and their order, and how the director
spills to them — only when the pool is saturated, ejected or empty, or the objective asks; the pool's pick
as the fallback list; ``ai_failover_total`` reasons; limits never passed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson
import pytest

from picker.config import load_config_text
from picker.errors import ResourceExhausted, ServiceUnavailable
from picker.extproc.usage import Usage
from picker.routing.director import Director
from picker.routing.external import ExternalCapacity, ExternalLease, ExternalTicket, JointReservation
from picker.routing.types import Dispatch, RoutingRequest
from picker.state.config_store import ConfigStore
from picker.state.objectives import Objective
from scoring import EndpointMatrix, EndpointRow
from tests.unit.routing.doubles import Observer, State

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
POOL = ("10.0.0.1:8000", "10.0.0.2:8000")
MANAGED = "10.96.0.10:8080"
BACKUP = "10.96.0.11:8080"
T0 = 1_800_000_000.0  # on a minute boundary


def picker_doc(limits: str = "{requestsPerMinute: 3}", extra: str = "", backup: str = "") -> str:
    return (
        f"{EPP}plugins:\n- {{type: queue-scorer}}\n"
        "- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        "---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        "externalEndpoints:\n"
        f"- {{name: managed, address: '{MANAGED}', priority: 0, price: {{inputPer1M: 1, outputPer1M: 4}}, "
        f"limits: {limits}}}\n"
        f"- {{name: backup, address: '{BACKUP}', priority: 1, price: {{inputPer1M: 0.5, outputPer1M: 1}}"
        f"{', limits: ' + backup if backup else ''}}}\n"
        f"spillover: {{objectives: [offload]{extra}}}\n"
    )


def store(text: str) -> ConfigStore:
    return ConfigStore(load_config_text(text), source="test", text=text)


def pool(waiting: float, health: float = 0.0, n: int = 2) -> State:
    rows = [
        EndpointRow(name=f"p{i}", address=POOL[i], waiting=waiting + i, scraped_at=0.0, health=health)
        for i in range(n)
    ]
    st = State(EndpointMatrix.from_rows(rows))
    st.objectives.set(Objective("sheddable", -1))
    st.objectives.set(Objective("offload", 0))
    return st


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def director(st: State, text: str | None = None) -> tuple[Director, Observer, Clock]:
    observer = Observer()
    wall = Clock()
    d = Director(
        st,
        store(text or picker_doc()),
        rng=np.random.default_rng(0),
        clock=lambda: 0.0,  # metrics scraped "now": fresh for the saturation detector
        observer=observer,
        external=ExternalCapacity(clock=wall),
    )
    return d, observer, wall


def request(objective: str = "", max_tokens: int | None = 100, chars: int = 400) -> RoutingRequest:
    body: dict[str, object] = {"model": "m", "prompt": "x" * chars}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"x-gateway-inference-objective": objective} if objective else {}
    return RoutingRequest("r", headers, "/v1/completions", orjson.dumps(body))


def route(d: Director, req: RoutingRequest | None = None) -> Dispatch:
    req = req or request()
    decision = d.route(req, d.resolve(req))
    assert isinstance(decision, Dispatch), "no I/O expected"
    return decision


# ------------------------------------------------------------------------------------------ director
def test_an_idle_pool_keeps_every_request() -> None:
    st = pool(waiting=0.0)
    d, obs, _ = director(st)
    decision = route(d)
    assert decision.endpoints == POOL
    assert (decision.external, decision.ticket, decision.failover) == ("", None, None)
    assert st.acquired == ["p0"]
    assert obs.failovers == Counter()


def test_a_saturated_pool_spills_with_the_pool_as_fallback() -> None:
    st = pool(waiting=10.0)  # over the utilization detector's queue threshold (5) on both
    d, obs, _ = director(st)
    decision = route(d)
    assert decision.endpoints == (MANAGED, *POOL)
    assert decision.external == "managed"
    assert isinstance(decision.ticket, ExternalTicket)
    assert isinstance(decision.lease, ExternalLease), "its outcome goes to the external endpoints' health"
    assert st.acquired == [], "nothing charged to the pool"
    assert decision.failover == "saturated"
    assert obs.failovers == Counter({"saturated": 1})


def test_the_first_endpoint_over_its_limit_passes_to_the_next_then_the_pool() -> None:
    st = pool(waiting=10.0)
    d, obs, _ = director(st, picker_doc(limits="{requestsPerMinute: 2}", backup="{requestsPerMinute: 1}"))
    got = [route(d).external for _ in range(4)]
    assert got == ["managed", "managed", "backup", ""]
    assert obs.failovers == Counter({"saturated": 3}), "the pool was the scorer's choice for the last one"


def test_a_request_within_the_limit_again_after_the_minute() -> None:
    st = pool(waiting=10.0)
    text = picker_doc(limits="{requestsPerMinute: 1}", backup="{requestsPerMinute: 0}")
    d, _, wall = director(st, text)
    first = route(d)
    assert first.external == "managed"
    assert first.ticket is not None
    first.ticket.sent = True
    first.ticket.complete(Usage(prompt_tokens=10, completion_tokens=5), status_ok=True)
    assert route(d).external == "", "the minute's one request is used"
    wall.t += 60.0
    assert route(d).external == "managed"


def test_tokens_per_minute_counts_reservations_and_settles_with_usage() -> None:
    st = pool(waiting=10.0)
    text = picker_doc(limits="{tokensPerMinute: 500}", backup="{requestsPerMinute: 0}")
    d, _, _ = director(st, text)
    # 400 chars → 100 prompt tokens + max_tokens 100 = 200 reserved each
    a, b = route(d), route(d)
    assert (a.external, b.external) == ("managed", "managed")
    assert route(d).external == "", "a third 200 would pass 500"
    assert a.ticket is not None
    a.ticket.sent = True
    a.ticket.complete(Usage(prompt_tokens=90, completion_tokens=10), status_ok=True)  # 100 used, 100 freed
    c = route(d)
    assert c.external == "managed", "settled with its usage: 100 + 200 reserved + 200 asked = 500"
    stats = {s["name"]: s for s in d.external.stats()}
    assert stats["managed"]["used"]["tokensPerMinute"] == 100
    assert stats["managed"]["reserved"]["tokensPerMinute"] == 400
    assert stats["managed"]["dispatched"] == 3


def test_every_pool_candidate_ejected_spills_as_ejected() -> None:
    st = pool(waiting=0.0, health=1.0)
    d, obs, _ = director(st)
    decision = route(d)
    assert decision.endpoints[0] == MANAGED
    assert decision.failover == "ejected"
    assert obs.failovers == Counter({"ejected": 1})


def test_an_empty_pool_spills_as_unavailable() -> None:
    st = State(EndpointMatrix.from_rows([]))
    d, obs, _ = director(st)
    decision = route(d)
    assert decision.endpoints == (MANAGED,)
    assert obs.failovers == Counter({"unavailable": 1})


def test_a_request_the_filters_leave_no_pool_candidate_spills_as_unavailable() -> None:
    text = picker_doc().replace(
        "- {type: queue-scorer}\n", "- {type: queue-scorer}\n- {type: header-based-testing-filter}\n", 1
    )
    d, obs, _ = director(pool(waiting=0.0), text)
    body = orjson.dumps({"model": "m", "prompt": "x" * 400, "max_tokens": 100})
    req = RoutingRequest("r", {"test-epp-endpoint-selection": "10.9.9.9:8000"}, "/v1/completions", body)
    decision = route(d, req)
    assert decision.endpoints == (MANAGED,)
    assert decision.failover == "unavailable"
    assert obs.failovers == Counter({"unavailable": 1})


def test_an_empty_pool_without_external_endpoints_is_still_503() -> None:
    st = State(EndpointMatrix.from_rows([]))
    text = f"{EPP}plugins:\n- {{type: queue-scorer}}\n"
    d = Director(st, store(text), rng=np.random.default_rng(0), clock=lambda: 0.0)
    with pytest.raises(ServiceUnavailable):
        route(d, request())


def test_an_objective_that_asks_goes_external_first_without_a_failover() -> None:
    st = pool(waiting=0.0)
    d, obs, _ = director(st)
    decision = route(d, request("offload"))
    assert decision.endpoints == (MANAGED, *POOL)
    assert decision.failover is None
    assert obs.failovers == Counter()


def test_an_objective_that_asks_over_the_limits_goes_to_the_pool_as_over_limits() -> None:
    st = pool(waiting=0.0)
    text = picker_doc(limits="{requestsPerMinute: 0}", backup="{concurrent: 0}")
    d, obs, _ = director(st, text)
    decision = route(d, request("offload"))
    assert decision.endpoints == POOL
    assert decision.failover == "over_limits"
    assert obs.failovers == Counter({"over_limits": 1})


def test_sheddable_requests_are_shed_not_spilled() -> None:
    st = pool(waiting=10.0)
    d, obs, _ = director(st)
    with pytest.raises(ResourceExhausted):
        route(d, request("sheddable"))
    assert obs.failovers == Counter()
    assert d.external.stats()[0]["dispatched"] == 0


def test_the_saturation_threshold_is_the_configs() -> None:
    st = pool(waiting=3.0)  # 3 and 4 queued of 5: saturation below 1, above 0.5
    d, _, _ = director(st, picker_doc(extra=", saturationThreshold: 0.5"))
    assert route(d).external == "managed"
    d, _, _ = director(st)
    assert route(d).external == ""


def test_explain_shows_the_spill_and_never_reserves() -> None:
    st = pool(waiting=10.0)
    text = picker_doc(limits="{requestsPerMinute: 1}", backup="{requestsPerMinute: 0}")
    d, _, _ = director(st, text)
    decision = d.explain(request())
    assert decision.endpoints == (MANAGED, *POOL), "as a live request would go"
    assert decision.failover == "saturated"
    assert decision.spill is not None
    assert decision.spill["would_spill"] is True
    assert decision.spill["endpoint"] == "managed"
    assert decision.spill["why"].startswith("the pool is saturated: the saturation detector reads")
    verdicts = {e["name"]: e["verdict"] for e in decision.spill["endpoints"]}
    assert verdicts == {"managed": "admits", "backup": "over requestsPerMinute: 0 in use + 1 asked > limit 0"}
    assert d.external.stats()[0]["dispatched"] == 0, "explain reserved nothing"
    assert route(d).external == "managed", "the one request of the minute is still there"
    again = d.explain(request())
    assert again.endpoints == POOL
    assert again.spill is not None
    assert again.spill["would_spill"] is False
    assert again.spill["why"].endswith("but no external endpoint takes it: the request stays in the pool")
    assert again.spill["endpoints"][0]["verdict"] == "over requestsPerMinute: 1 in use + 1 asked > limit 1"


def test_explain_says_why_not() -> None:
    d, _, _ = director(pool(waiting=0.0))
    idle = d.explain(request())
    assert idle.spill is not None
    assert idle.spill["would_spill"] is False
    assert idle.spill["why"].startswith("the pool can take it: the saturation detector reads")
    asked = d.explain(request("offload"))
    assert asked.spill is not None
    assert asked.spill["why"].startswith("the objective 'offload' is in spillover.objectives")
    assert asked.endpoints[0] == MANAGED
    sheddable = d.explain(request("sheddable"))
    assert sheddable.spill == {
        "would_spill": False,
        "endpoint": None,
        "why": "priority -1 is below spillover.minPriority 0",
        "endpoints": [],
    }
    st = pool(waiting=0.0)
    plain = Director(st, store(f"{EPP}plugins:\n- {{type: queue-scorer}}\n"), rng=np.random.default_rng(0))
    none = plain.explain(request())
    assert none.spill is not None
    assert none.spill["why"] == "no externalEndpoints configured"


# ------------------------------------------------------------------------------------------ budgets
def capacity(limits: str = "{requestsPerMinute: 3}", extra: str = "") -> tuple[ExternalCapacity, Clock]:
    """Both endpoints with ``limits``."""
    wall = Clock()
    cap = ExternalCapacity(clock=wall)
    settings = load_config_text(picker_doc(limits, extra=extra, backup=limits)).settings
    assert cap.sync(settings.external_endpoints, settings.spillover)
    return cap, wall


def test_the_order_is_priority_then_price() -> None:
    cap, _ = capacity()
    ticket = cap.reserve(100, 100)
    assert ticket is not None
    assert ticket.endpoint.name == "managed", "priority 0 before the cheaper priority 1"
    assert ticket.amounts == (200, 200, 1, 1, 500_000, 500_000)  # (100 x 1 + 100 x 4) / 1e6 units


def test_an_unsent_request_gives_everything_back_a_broken_one_counts_its_reservation() -> None:
    cap, _ = capacity("{tokensPerMinute: 1000}")
    unsent = cap.reserve(100, 100)
    assert unsent is not None
    unsent.release()
    broken = cap.reserve(100, 100)
    assert broken is not None
    broken.sent = True
    broken.release()
    broken.release()  # idempotent
    stats = cap.stats()[0]
    assert stats["used"]["tokensPerMinute"] == 200
    assert stats["used"]["requestsPerMinute"] == 1
    assert stats["reserved"]["tokensPerMinute"] == 0


def test_a_response_without_usage_settles_its_whole_reservation() -> None:
    cap, _ = capacity("{tokensPerMinute: 1000}")
    t = cap.reserve(100, None)  # no max_tokens: spillover.defaultOutputTokens (1024) reserved
    assert t is None, "1124 tokens cannot fit in 1000"
    t = cap.reserve(100, 300)
    assert t is not None
    t.sent = True
    t.complete(None, status_ok=True)
    assert cap.stats()[0]["used"]["tokensPerMinute"] == 400


def test_replicas_share_the_limits() -> None:
    cap, _ = capacity("{requestsPerMinute: 5}", extra=", replicas: 2")
    assert [cap.reserve(1, 1) is not None and cap.stats()[0]["dispatched"] for _ in range(3)] == [1, 2, 2]
    assert cap.stats()[0]["limits"] == {"requestsPerMinute": 2}


def test_a_share_is_the_exact_integer_division() -> None:
    """49 // 49 is 1: ``int(49 * (1 / 49))`` was 0, and the endpoint took nothing."""
    cap, _ = capacity("{concurrent: 49, requestsPerMinute: 98}", extra=", replicas: 49")
    assert cap.stats()[0]["limits"] == {"requestsPerMinute": 2, "concurrent": 1}
    assert cap.reserve(1, 1) is not None


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ("{concurrent: 1}", "concurrent"),
        ("{requestsPerMinute: 60, tokensPerMinute: 2}", "tokensPerMinute"),
        ("{costPerDay: 0.000000002}", "costPerDay"),
    ],
)
def test_a_limit_the_replicas_split_to_nothing_is_rejected(limits: str, field: str) -> None:
    """Each of 3 replicas would hold 0 of the limit and refuse every request though the endpoint has
    room: the document is rejected with what to change (0 itself, "nothing", is kept)."""
    with pytest.raises(Exception, match=rf"limits\.{field} .* spillover\.replicas 3 leaves each replica 0"):
        load_config_text(picker_doc(limits, extra=", replicas: 3"))
    assert load_config_text(picker_doc(limits)).settings.spillover.replicas == 1
    assert load_config_text(picker_doc("{concurrent: 0}", extra=", replicas: 3")) is not None


def test_a_reload_keeps_the_minutes_count() -> None:
    cap, _ = capacity("{requestsPerMinute: 1}")
    assert cap.reserve(1, 1) is not None
    settings = load_config_text(
        picker_doc("{requestsPerMinute: 1}", backup="{requestsPerMinute: 1}")
    ).settings
    cap.sync(settings.external_endpoints, settings.spillover)
    t = cap.reserve(1, 1)
    assert t is not None
    assert t.endpoint.name == "backup"


def test_a_tenant_ticket_and_an_external_one_settle_together() -> None:
    cap, _ = capacity("{tokensPerMinute: 1000}")
    ext = cap.reserve(100, 100)
    assert ext is not None

    class Tenant:
        sent = False
        completed = released = 0

        def response_headers(self) -> list[tuple[str, bytes]]:
            return [("x-ratelimit-limit-requests", b"5")]

        def chunk(self, chunk: bytes) -> None:
            pass

        def complete(self, usage: object, *, status_ok: bool, body: bytes | None = None) -> None:
            self.completed += 1

        def release(self) -> None:
            self.released += 1

    tenant = Tenant()
    joint = JointReservation(tenant, ext)
    joint.sent = True
    assert (tenant.sent, ext.sent) == (True, True)
    assert joint.response_headers() == [("x-ratelimit-limit-requests", b"5")]
    joint.complete(Usage(prompt_tokens=50, completion_tokens=50), status_ok=True)
    joint.release()
    assert (tenant.completed, tenant.released) == (1, 1)
    assert cap.stats()[0]["used"]["tokensPerMinute"] == 100


def test_bad_external_configs_are_rejected_with_a_reason() -> None:
    base = picker_doc()
    with pytest.raises(Exception, match="duplicate name"):
        load_config_text(base.replace("name: backup", "name: managed"))
    with pytest.raises(Exception, match="not an IP address"):
        load_config_text(base.replace(BACKUP, "api.example.com:443"))
    with pytest.raises(Exception, match=r"saturationThreshold|saturation_threshold"):
        load_config_text(picker_doc(extra=", saturationThreshold: 0"))
