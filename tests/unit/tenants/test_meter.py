"""Admission, refusal and settlement of tenants' requests (picker.tenants.meter) on a memory backend."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from picker.config.tenants import TenantsConfig
from picker.errors import TenantRefused
from picker.extproc.usage import SSEUsageScanner, usage_from_json
from picker.tenants import MemoryBackend, Settlement, Tenancy, Ticket
from picker.tenants.backend import AccountView, Verdict
from picker.tenants.estimate import MAX_MODEL_NAME, TokenEstimator
from picker.tenants.ledger import TOKENS_MINUTE, window_ids
from picker.tenants.meter import format_reset
from picker.tenants.policy import NANO, TenantsPolicy

from .conftest import DATA, WallClock


class Sink:
    def __init__(self) -> None:
        self.items: list[Settlement] = []
        self.refusals: list[tuple[str, str]] = []

    def settled(self, s: Settlement) -> None:
        self.items.append(s)

    def rejected(self, tenant: str, reason: str) -> None:
        self.refusals.append((tenant, reason))


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def tenancy(policy: TenantsPolicy, clock: WallClock, sink: Sink) -> Tenancy:
    backend = MemoryBackend(sink, clock=clock)
    t = Tenancy(backend, clock=clock)
    t.on_rejected = sink.rejected
    t.apply(policy)
    return t


def admit(
    t: Tenancy,
    tenant: str | None,
    *,
    model: str = "m",
    chars: int = 400,
    max_tokens: int | None = 100,
    **headers: str,
) -> Ticket:
    hdrs = {"x-tenant-id": tenant} if tenant is not None else {}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    ticket = t.admit(hdrs, model=model, prompt_chars=chars, max_tokens=max_tokens)
    assert isinstance(ticket, Ticket)
    return ticket


def test_reservation_is_prompt_estimate_plus_max_tokens_and_its_cost(tenancy: Tenancy) -> None:
    ticket = admit(tenancy, "acme", chars=400, max_tokens=100)
    assert ticket.input_tokens == 100  # 400 chars / 4
    assert ticket.amounts == (200, 200, 1, 1, 75_000, 75_000)  # 100 x 0.15 + 100 x 0.6 per 1M, in nano-units
    default = admit(tenancy, "acme", chars=8, max_tokens=None)
    assert default.amounts[0] == 2 + 256  # defaultOutputTokens


def test_requests_per_minute_refusal_is_openai_shaped_with_retry_headers(
    tenancy: Tenancy, sink: Sink, clock: WallClock
) -> None:
    for _ in range(5):
        ticket = admit(tenancy, "someone", chars=4, max_tokens=1)
        ticket.sent = True  # forwarded, then cancelled: it counts as a request
        ticket.release()
    with pytest.raises(TenantRefused) as caught:
        admit(tenancy, "someone", chars=4, max_tokens=1)
    exc = caught.value
    assert exc.http_status == 429
    assert exc.code == "ResourceExhausted"
    body = json.loads(exc.wire_body())
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "requests"
    assert "requests per min (RPM): Limit 5, Used 5, Requested 1" in body["error"]["message"]
    headers = dict(exc.wire_headers())
    assert headers["content-type"] == "application/json"
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    seconds_left = 60 - clock.now % 60
    assert headers["retry-after"] == str(math.ceil(seconds_left))
    assert headers["x-ratelimit-reset-requests"] == format_reset(seconds_left)
    assert sink.refusals == [("someone", "requests_per_minute")]
    # the next minute admits again
    clock.now += 60
    admit(tenancy, "someone", chars=4, max_tokens=1)


def test_released_requests_before_upstream_do_not_count_as_requests(tenancy: Tenancy) -> None:
    for _ in range(5):
        admit(tenancy, "someone", chars=4, max_tokens=1).release()  # never sent: no request counted
    view = {v.tenant: v for v in tenancy.backend.accounts()}["someone"]  # type: ignore[attr-defined]
    assert view.used[2] == 0
    assert view.reserved == (0, 0, 0, 0, 0, 0)


def test_concurrent_reservations_stop_at_the_token_limit_then_free_up(tenancy: Tenancy) -> None:
    first = admit(tenancy, "tight", chars=40, max_tokens=190)  # 10 + 190 = 200 of 300
    with pytest.raises(TenantRefused) as caught:
        admit(tenancy, "tight", chars=40, max_tokens=190)
    assert caught.value.reason == "tokens_per_minute"
    assert json.loads(caught.value.wire_body())["error"]["type"] == "tokens"
    first.sent = True
    first.complete(
        usage_from_json(b'{"usage": {"prompt_tokens": 10, "completion_tokens": 20}}'), status_ok=True
    )
    admit(tenancy, "tight", chars=40, max_tokens=190)  # 30 used + 200 reserved <= 300


def test_a_request_larger_than_the_limit_is_refused_as_too_large(tenancy: Tenancy) -> None:
    with pytest.raises(TenantRefused) as caught:
        admit(tenancy, "tight", chars=4, max_tokens=5000)
    assert caught.value.reason == "request_too_large"
    assert "Request too large" in json.loads(caught.value.wire_body())["error"]["message"]


def test_cost_budget_refusal_is_insufficient_quota(
    policy: TenantsPolicy, clock: WallClock, sink: Sink
) -> None:
    t = Tenancy(MemoryBackend(sink, clock=clock), clock=clock)
    t.apply(policy)
    # acme: pro tier, costPerDay 100 USD; model "big" costs 0.2 USD per output token
    for _ in range(2):
        ticket = admit(t, "acme", model="big", chars=4, max_tokens=0)
        ticket.sent = True
        ticket.complete(
            usage_from_json(b'{"usage":{"prompt_tokens":1,"completion_tokens":240}}'), status_ok=True
        )
    t.backend.accounts()  # type: ignore[attr-defined]
    with pytest.raises(TenantRefused) as caught:
        admit(t, "acme", model="big", chars=4, max_tokens=100)
    body = json.loads(caught.value.wire_body())["error"]
    assert body["code"] == "insufficient_quota"
    assert caught.value.reason == "cost_per_day"
    assert "Limit 100.0 USD" in body["message"]


def test_concurrency_limit(tenancy: Tenancy) -> None:
    a = admit(tenancy, "acme")
    admit(tenancy, "acme")
    with pytest.raises(TenantRefused) as caught:
        admit(tenancy, "acme")
    assert caught.value.reason == "concurrent"
    assert dict(caught.value.wire_headers())["retry-after"] == "1"
    a.release()
    admit(tenancy, "acme")


def test_successful_responses_carry_the_remaining_budget(tenancy: Tenancy) -> None:
    ticket = admit(tenancy, "someone", chars=40, max_tokens=90)
    headers = {k: v.decode() for k, v in ticket.response_headers()}
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    assert headers["x-ratelimit-remaining-requests"] == "4"
    assert "x-ratelimit-limit-cost" not in headers
    unlimited = Tenancy(MemoryBackend(), clock=WallClock())
    unlimited.apply(TenantsPolicy.from_config(TenantsConfig()))
    assert admit(unlimited, "x").response_headers() == []


def test_tier_header_and_listed_tenants(tenancy: Tenancy) -> None:
    pro = admit(tenancy, "stranger", x_tenant_tier="pro", max_tokens=2000)  # free would refuse 2000 > 1000
    assert pro.limits is not None
    assert pro.limits[TOKENS_MINUTE] is None
    with pytest.raises(TenantRefused):
        admit(tenancy, "stranger2", x_tenant_tier="no-such-tier", max_tokens=2000)


@pytest.mark.parametrize(
    ("name", "counts"),
    [("vllm-chat-completion-response.json", (3606, 40)), ("vllm-completions-response.json", (7, 24))],
)
def test_settlement_is_exact_on_real_json_bodies(
    tenancy: Tenancy, sink: Sink, name: str, counts: tuple[int, int]
) -> None:
    prompt, completion = counts
    body = (DATA / name).read_bytes()
    ticket = admit(tenancy, "acme", model="m", chars=100, max_tokens=100)
    ticket.sent = True
    ticket.complete(usage_from_json(body), status_ok=True, body=body)
    (s,) = sink.items
    assert (s.input_tokens, s.output_tokens, s.estimated) == (prompt, completion, False)
    assert s.cost_nano == (prompt * 150_000_000 + completion * 600_000_000 + 500_000) // 1_000_000
    view = {v.tenant: v for v in tenancy.backend.accounts()}["acme"]  # type: ignore[attr-defined]
    assert view.used[1] == prompt + completion
    assert view.used[4] == s.cost_nano
    assert view.reserved == (0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("openai-chat-stream-include-usage.sse", (12, 100)),
        ("openai-completions-stream-include-usage.sse", (31, 25)),
    ],
)
def test_settlement_is_exact_on_real_streams_split_anywhere(
    tenancy: Tenancy, sink: Sink, name: str, counts: tuple[int, int]
) -> None:
    prompt, completion = counts
    data = (DATA / name).read_bytes()
    for split in (1, 7, 64, len(data)):
        sink.items.clear()
        ticket = admit(tenancy, "acme", model="gpt-5-nano", chars=20, max_tokens=100)
        ticket.sent = True
        scanner = SSEUsageScanner()
        for at in range(0, len(data), split):
            chunk = data[at : at + split]
            ticket.chunk(chunk)
            scanner.feed(chunk)
        ticket.complete(scanner.finish_deferred(), status_ok=True)
        (s,) = sink.items
        assert (s.input_tokens, s.output_tokens) == (prompt, completion)
        assert s.cost_nano == (prompt * 50_000_000 + completion * 400_000_000 + 500_000) // 1_000_000


def test_responses_api_usage_settles_input_and_output_tokens(tenancy: Tenancy, sink: Sink) -> None:
    stream = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed",'
        b'"response":{"id":"r","status":"completed","usage":{"input_tokens":21,"input_tokens_details":{"cached_tokens":16},"output_tokens":9,'
        b'"total_tokens":30}}}\n\n'
    )
    ticket = admit(tenancy, "acme", model="gpt-5-nano", chars=20, max_tokens=100)
    ticket.sent = True
    scanner = SSEUsageScanner()
    scanner.feed(stream)
    ticket.chunk(stream)
    ticket.complete(scanner.finish_deferred(), status_ok=True)
    (s,) = sink.items
    assert (s.input_tokens, s.output_tokens) == (21, 9)
    # 16 cached at 0.005, 5 uncached at 0.05, 9 output at 0.4 per 1M
    assert s.cost_nano == (5 * 50_000_000 + 16 * 5_000_000 + 9 * 400_000_000 + 500_000) // 1_000_000


def test_without_usage_streams_are_estimated_from_events_and_json_from_text(
    tenancy: Tenancy, sink: Sink
) -> None:
    ticket = admit(tenancy, "acme", chars=40, max_tokens=100)
    ticket.sent = True
    for token in range(7):
        ticket.chunk(f'data: {{"choices":[{{"delta":{{"content":"t{token}"}}}}]}}\n\n'.encode())
    ticket.chunk(b"data: [DONE]\n\n")
    ticket.complete(None, status_ok=True)
    body = b'{"choices":[{"message":{"role":"assistant","content":"' + b"x" * 40 + b'"}}]}'
    other = admit(tenancy, "acme", chars=40, max_tokens=100)
    other.sent = True
    other.complete(usage_from_json(body), status_ok=True, body=body)
    first, second = sink.items
    assert (first.input_tokens, first.output_tokens, first.estimated) == (10, 7, True)
    assert (second.input_tokens, second.output_tokens, second.estimated) == (10, 10, True)


def test_failed_and_cancelled_requests_release_what_they_did_not_use(tenancy: Tenancy, sink: Sink) -> None:
    failed = admit(tenancy, "acme", chars=40, max_tokens=100)
    failed.sent = True
    failed.complete(None, status_ok=False)
    cancelled = admit(tenancy, "acme", chars=40, max_tokens=100)
    cancelled.sent = True
    cancelled.chunk(b'data: {"a":1}\n\ndata: {"a":2}\n\n')
    cancelled.release()
    cancelled.release()  # idempotent
    never = admit(tenancy, "acme", chars=40, max_tokens=100)
    never.release()
    a, b, c = sink.items
    assert (a.input_tokens, a.output_tokens, a.actual[2]) == (0, 0, 1)
    assert (b.input_tokens, b.output_tokens, b.actual[2]) == (10, 2, 1)
    assert (c.input_tokens, c.output_tokens, c.actual[2]) == (0, 0, 0)
    view = {v.tenant: v for v in tenancy.backend.accounts()}["acme"]  # type: ignore[attr-defined]
    assert view.reserved == (0, 0, 0, 0, 0, 0)
    assert view.used[1] == 12


def test_learned_ratio_follows_reported_prompt_tokens(tenancy: Tenancy) -> None:
    for _ in range(60):
        ticket = admit(tenancy, "acme", model="cjk", chars=300, max_tokens=1)
        ticket.sent = True
        ticket.complete(
            usage_from_json(b'{"usage":{"prompt_tokens":200,"completion_tokens":1}}'), status_ok=True
        )
    assert tenancy.estimator.ratio("cjk") == pytest.approx(1.5, rel=0.01)
    assert admit(tenancy, "acme", model="cjk", chars=300, max_tokens=1).input_tokens in (200, 201)
    assert tenancy.estimator.ratio("m") == 4.0


class UnknownBudget:
    """The Redis backend while Redis does not answer, with ``failMode: open``: admitted, budget unknown."""

    def __init__(self, clock: WallClock) -> None:
        self._clock = clock

    def reserve(self, tenant: str, limits: object, amounts: object) -> Verdict:
        return Verdict(None, (None,) * 6, window_ids(self._clock()), degraded=True)

    def settle(self, s: Settlement) -> None:
        pass

    def accounts(self) -> Iterator[AccountView]:
        return iter(())


def test_a_request_admitted_while_the_budget_is_unknown_gets_no_remaining_headers(
    policy: TenantsPolicy, clock: WallClock
) -> None:
    """A limited tenant's response carries x-ratelimit-* headers from its verdict; a fail-open verdict has
    no remaining budget to report (it once failed the stream in its response phase)."""
    t = Tenancy(UnknownBudget(clock), clock=clock)
    t.apply(policy)
    ticket = admit(t, "someone")  # the default tier: tokens and requests per minute
    assert ticket.limits is not None
    assert ticket.response_headers() == []


def test_ratios_are_not_learned_for_models_a_client_named_too_long() -> None:
    """The model comes from the request body: a learned ratio keyed by a 1 MiB name would keep it alive
    (the label flood test of a real process found 128 such names resident)."""
    estimator = TokenEstimator()
    long = "m" * (MAX_MODEL_NAME + 1)
    estimator.observe(long, 300, 200)
    estimator.observe("m" * MAX_MODEL_NAME, 300, 200)
    assert estimator.ratio(long) == 4.0
    assert estimator.ratio("m" * MAX_MODEL_NAME) == pytest.approx(4.0 + 0.1 * (1.5 - 4.0))


def test_format_reset() -> None:
    assert [format_reset(s) for s in (0.02, 6, 360, 3723)] == ["20ms", "6s", "6m0s", "1h2m3s"]


def test_nano_prices_are_exact() -> None:
    from picker.tenants.policy import Price, nano

    assert nano(0.1) == 100_000_000
    assert nano(100) == 100 * NANO
    price = Price(nano(0.15), nano(0.6), nano(0.075))
    assert price.cost(1_000_000, 1_000_000) == nano(0.75)
    assert price.cost(1_000_000, 0, cached_tokens=1_000_000) == nano(0.075)
