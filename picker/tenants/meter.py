"""Admission and settlement of one request against its tenant's budget: :class:`Tenancy` and :class:`Ticket`.

The director asks :meth:`Tenancy.admit` once a request is parsed: the tenant is resolved
(:mod:`picker.tenants.identity`), its limits looked up (:mod:`picker.tenants.policy`), and a reservation
of ``input estimate + output reserve`` tokens, one request, one concurrency slot and their cost is asked
of the backend (:mod:`picker.tenants.backend`). Refused → :class:`picker.errors.TenantRefused` (429, an
OpenAI-shaped body, ``retry-after`` and ``x-ratelimit-*`` headers). Granted → a :class:`Ticket`, which the
request carries to its end:

* :meth:`Ticket.response_headers`: the remaining budget as ``x-ratelimit-*`` headers on the response;
* :meth:`Ticket.chunk`: counts streamed events (the output estimate of a stream that reports no usage);
* :meth:`Ticket.complete`: settles with the response's usage (the usage parsers of
  :mod:`picker.extproc.usage`), or the estimate, or nothing for a failed upstream response;
* :meth:`Ticket.release`: at stream end; settles what a cancelled request consumed (its prompt if the
  model server answered at all, the events streamed so far) and gives back the rest. Idempotent.

Output reserve = the request's ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, else
``defaultOutputTokens``.

Why one module of this size: :class:`Tenancy` (admission) and :class:`Ticket` (settlement) are the two ends
of one reservation and share its arithmetic and its ``x-ratelimit-*`` header rules; apart, the reservation's
invariants (what was reserved is settled or given back exactly once) would span two files.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, Final, Protocol

from picker.errors import TenantRefused
from picker.tenants.backend import Backend, Settlement, Verdict
from picker.tenants.estimate import TokenEstimator, count_events, text_chars
from picker.tenants.identity import TenantIds
from picker.tenants.ledger import (
    COST_DAY,
    COST_MONTH,
    REQUESTS_MINUTE,
    TOKENS_HOUR,
    TOKENS_MINUTE,
    Denial,
    Limits,
    actual_vector,
    now_wall,
    reservation_vector,
    window_end,
)
from picker.tenants.policy import TenantsPolicy

__all__ = ["PendingTicket", "Tenancy", "Ticket", "UsageCounts", "format_reset"]

log = logging.getLogger(__name__)

#: the ``reason`` label of a refusal, by meter
REASONS: Final = (
    "tokens_per_minute",
    "tokens_per_hour",
    "requests_per_minute",
    "concurrent",
    "cost_per_day",
    "cost_per_month",
)
_PHRASES: Final = (
    "tokens per min (TPM)",
    "tokens per hour (TPH)",
    "requests per min (RPM)",
    "concurrent requests",
    "cost per day",
    "cost per month",
)


class UsageCounts(Protocol):
    """A response's usage (:class:`picker.extproc.usage.Usage` or ``DeferredUsage``)."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``6s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    return _whole_seconds(round(seconds))


@functools.lru_cache(maxsize=4096)
def _whole_seconds(s: int) -> str:
    # memoized: every admitted request of a limited tenant writes one to three of these
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def _money(nano: int) -> str:
    """Nano-units as currency units with up to 6 decimals, trailing zeros dropped (``0.25``, ``100.0``)."""
    micro = (nano + 500) // 1000
    units, frac = divmod(micro, 1_000_000)
    return f"{units}.{f'{frac:06d}'.rstrip('0') or '0'}"


def _tightest(remaining: tuple[int | None, ...], limits: Limits, a: int, b: int) -> int | None:
    """Of meters ``a`` and ``b``, the limited one with the least room left relative to its limit."""
    best: int | None = None
    best_share = 2.0
    for i in (a, b):
        limit = limits[i]
        left = remaining[i]
        if limit is None or left is None:
            continue
        share = left / limit if limit else 0.0
        if share < best_share:
            best, best_share = i, share
    return best


_KINDS: Final = tuple(
    (
        f"x-ratelimit-limit-{kind}",
        f"x-ratelimit-remaining-{kind}",
        f"x-ratelimit-reset-{kind}",
        a,
        b,
        kind == "cost",
    )
    for kind, a, b in (
        ("requests", REQUESTS_MINUTE, REQUESTS_MINUTE),
        ("tokens", TOKENS_MINUTE, TOKENS_HOUR),
        ("cost", COST_DAY, COST_MONTH),
    )
)


def rate_headers(verdict: Verdict, limits: Limits, now: float) -> list[tuple[str, str]]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens,cost}`` for the limited meters (OpenAI's
    names for requests and tokens; cost in currency units). Tokens and cost report the tighter of their
    two windows."""
    out: list[tuple[str, str]] = []
    remaining = verdict.remaining
    windows = verdict.windows
    for limit_key, remaining_key, reset_key, a, b, cost in _KINDS:
        i = _tightest(remaining, limits, a, b) if limits[a] is None or limits[b] is not None else a
        if i is None:
            continue
        limit = limits[i]
        left = remaining[i]
        if limit is None or left is None:  # a fail-open verdict (the budget store did not answer)
            continue
        text = _money if cost else str
        out.append((limit_key, text(limit)))
        out.append((remaining_key, text(left)))
        out.append((reset_key, format_reset(window_end(i, windows[i]) - now)))
    return out


class Tenancy:
    """Tenant metering and limits for one process. Inactive (no ``tenants`` section) until a policy is
    applied; :attr:`active` is what the director checks first, so the feature costs one attribute read
    when it is off."""

    def __init__(
        self,
        backend: Backend,
        *,
        estimator: TokenEstimator | None = None,
        clock: Callable[[], float] = now_wall,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.estimator = estimator if estimator is not None else TokenEstimator()
        self._clock = clock
        self.policy: TenantsPolicy | None = None
        #: kept across reloads; configured by :meth:`apply`
        self.ids = TenantIds(
            header="x-tenant-id", anonymous="anonymous", max_tenants=1000, max_length=64, clock=monotonic
        )
        #: where refusals are counted (the backend's sink, or a worker's forwarder)
        self.on_rejected: Callable[[str, str], None] = lambda _tenant, _reason: None

    @property
    def active(self) -> bool:
        return self.policy is not None

    def apply(self, policy: TenantsPolicy | None) -> None:
        """Swap the policy (None: off). Tenant ids tracked so far and learned ratios are kept."""
        if policy is not None:
            self.ids.configure(
                header=policy.header,
                anonymous=policy.anonymous,
                max_tenants=policy.max_tenants,
                max_length=policy.max_id_length,
                listed=policy.listed,
            )
        self.policy = policy

    # --------------------------------------------------------------------------------------- admission
    def admit(
        self,
        headers: Mapping[str, str],
        *,
        model: str,
        prompt_chars: int,
        max_tokens: int | None,
        text: Callable[[], str] | None = None,
    ) -> Ticket | PendingTicket:
        """Reserve a request's share of its tenant's budget. Raises TenantRefused (429) when it does not
        fit; returns a :class:`PendingTicket` only when the backend must be asked over I/O."""
        policy = self.policy
        assert policy is not None, "admit() while tenancy is off"
        tenant = self.ids.resolve(headers)
        tier = headers.get(policy.tier_header) if policy.tier_header is not None else None
        limits = policy.limits(tenant, tier)
        input_tokens = self.estimator.input_tokens(model, prompt_chars, text)
        output_tokens = policy.default_output_tokens if max_tokens is None else max_tokens
        cost = policy.price(model).cost(input_tokens, output_tokens)
        amounts = reservation_vector(input_tokens + output_tokens, cost)
        ticket = Ticket(self, tenant, model, limits, amounts, prompt_chars, input_tokens)
        verdict = self.backend.reserve(tenant, limits, amounts)
        if isinstance(verdict, Verdict):
            return ticket.decided(verdict)
        return PendingTicket(ticket, verdict)

    def refuse(self, ticket: Ticket, denial: Denial, verdict: Verdict) -> TenantRefused:
        """The 429 for a denied reservation."""
        now = self._clock()
        i = denial.meter
        retry = denial.retry_after(now)
        tenant = ticket.tenant
        cost = i in (COST_DAY, COST_MONTH)
        money = _money if cost else str
        currency = f" {self.policy.currency}" if cost and self.policy is not None else ""
        if denial.too_large:
            reason = "request_too_large"
            message = (
                f"Request too large for tenant {tenant} on {_PHRASES[i]}: "
                f"Limit {money(denial.limit)}{currency}, Requested {money(denial.requested)}{currency}. "
                "Reduce max_tokens or the prompt."
            )
        else:
            reason = REASONS[i]
            what = "Budget exceeded" if cost else "Rate limit reached"
            message = (
                f"{what} for tenant {tenant} on {_PHRASES[i]}: "
                f"Limit {money(denial.limit)}{currency}, Used {money(denial.in_use)}{currency}, "
                f"Requested {money(denial.requested)}{currency}. Please try again in {format_reset(retry)}."
            )
        headers: list[tuple[str, str]] = [("retry-after", str(max(1, math.ceil(retry))))]
        if ticket.limits is not None:
            headers += rate_headers(verdict, ticket.limits, now)
        self.on_rejected(tenant, reason)
        return TenantRefused(
            message,
            reason=reason,
            error_type="insufficient_quota"
            if cost
            else ("tokens" if i in (TOKENS_MINUTE, TOKENS_HOUR) else "requests"),
            error_code="insufficient_quota" if cost and not denial.too_large else "rate_limit_exceeded",
            headers=tuple(headers),
        )

    def now(self) -> float:
        return self._clock()


class Ticket:
    """One admitted request's reservation, from admission to settlement. Not thread-safe (one stream)."""

    __slots__ = (
        "_headers",
        "_tenancy",
        "amounts",
        "done",
        "events",
        "first_byte",
        "input_tokens",
        "limits",
        "model",
        "prompt_chars",
        "sent",
        "tenant",
        "verdict",
    )

    def __init__(  # noqa: PLR0917 - built in one place, by Tenancy.admit
        self,
        tenancy: Tenancy,
        tenant: str,
        model: str,
        limits: Limits | None,
        amounts: tuple[int, int, int, int, int, int],
        prompt_chars: int,
        input_tokens: int,
    ) -> None:
        self._tenancy = tenancy
        self.tenant = tenant
        self.model = model
        self.limits = limits
        self.amounts = amounts
        self.prompt_chars = prompt_chars
        self.input_tokens = input_tokens
        self.verdict: Verdict | None = None
        #: streamed events seen (the output estimate without usage)
        self.events = 0
        #: the model server answered (a response body byte): the prompt was processed
        self.first_byte = False
        #: the request was forwarded to a model server (counts as a request even if cancelled)
        self.sent = False
        self.done = False
        self._headers: list[tuple[str, bytes]] | None = None

    # ------------------------------------------------------------------------------------ admission
    def decided(self, verdict: Verdict) -> Ticket:
        """Apply the backend's answer: this ticket, or TenantRefused."""
        self.verdict = verdict
        if verdict.denial is not None:
            self.done = True
            raise self._tenancy.refuse(self, verdict.denial, verdict)
        return self

    def response_headers(self) -> list[tuple[str, bytes]]:
        """The remaining budget as ``x-ratelimit-*`` response headers (none for an unlimited tenant)."""
        headers = self._headers
        if headers is None:
            policy = self._tenancy.policy
            verdict = self.verdict
            if self.limits is None or verdict is None or policy is None or not policy.response_headers:
                headers = []
            else:
                now = self._tenancy.now()
                headers = [(k, v.encode()) for k, v in rate_headers(verdict, self.limits, now)]
            self._headers = headers
        return headers

    # ------------------------------------------------------------------------------------ response
    def served_by(self, address: str) -> None:
        """Whoever served, the tenant's request was served (its usage settles it): nothing to do."""

    def chunk(self, chunk: bytes) -> None:
        """A streamed response chunk: count its token-bearing events."""
        self.first_byte = True
        self.events += count_events(chunk)

    def complete(self, usage: UsageCounts | None, *, status_ok: bool, body: bytes | None = None) -> None:
        """The response ended: settle with its usage (exact), or an estimate, or nothing if it failed.
        ``body``: a buffered JSON response, read for its text only when it reports no usage."""
        if self.done:
            return
        self.sent = True
        if not status_ok:
            self._settle(0, 0, 0, estimated=False)
            return
        prompt = usage.prompt_tokens if usage is not None else 0
        completion = usage.completion_tokens if usage is not None else 0
        if prompt or completion:
            if prompt:
                self._tenancy.estimator.observe(self.model, self.prompt_chars, prompt)
            self._settle(prompt, completion, usage.cached_tokens if usage is not None else 0, estimated=False)
            return
        if body is not None:
            output = self._tenancy.estimator.output_from_chars(self.model, text_chars(body))
        else:
            output = self.events
        self._settle(self.input_tokens, output, 0, estimated=True)

    def release(self) -> None:
        """Stream end. A request that did not complete settles what it consumed: its prompt if the model
        server answered, the events streamed so far; nothing if it was never sent. Idempotent."""
        if self.done:
            return
        self._settle(self.input_tokens if self.first_byte else 0, self.events, 0, estimated=True)

    def _settle(self, input_tokens: int, output_tokens: int, cached: int, *, estimated: bool) -> None:
        self.done = True
        tenancy = self._tenancy
        policy = tenancy.policy
        cost = policy.price(self.model).cost(input_tokens, output_tokens, cached) if policy is not None else 0
        verdict = self.verdict
        held = verdict is not None and not verdict.degraded
        s = Settlement(
            tenant=self.tenant,
            model=self.model,
            reserved=self.amounts if held else (0, 0, 0, 0, 0, 0),
            actual=actual_vector(input_tokens + output_tokens, cost, counted=self.sent),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_nano=cost,
            estimated=estimated,
            hold=verdict.hold if verdict is not None else "",
        )
        try:
            tenancy.backend.settle(s)
        except Exception:  # a settlement must never break the stream that reports it
            log.exception("tenant settlement failed, tenant=%s", self.tenant)

    def describe(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "model": self.model, "reserved": list(self.amounts)}


class PendingTicket:
    """A reservation the backend answers over I/O (Redis, the ``--workers`` supervisor): await it for the
    :class:`Ticket` (or the refusal). :meth:`cancel` is for a request that goes away before anyone awaited
    it: the question is withdrawn (an unstarted script call is closed, a question already sent to the
    supervisor is cancelled, so its answer's hold is given back), so nothing stays reserved."""

    __slots__ = ("_ticket", "_verdict")

    def __init__(self, ticket: Ticket, verdict: Awaitable[Verdict]) -> None:
        self._ticket = ticket
        self._verdict = verdict

    def __await__(self) -> Generator[Any, None, Ticket]:
        return self._decide().__await__()

    async def _decide(self) -> Ticket:
        return self._ticket.decided(await self._verdict)

    def cancel(self) -> None:
        verdict = self._verdict
        if isinstance(verdict, Coroutine):
            verdict.close()
        elif isinstance(verdict, asyncio.Future):
            verdict.cancel()
