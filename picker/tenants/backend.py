"""Where budgets live: one interface, three backends.

* :class:`MemoryBackend` (here): this process's accounts. A request costs a dict lookup and the integer
  arithmetic of :class:`picker.tenants.ledger.Account`; answers synchronously.
* ``picker.tenants.remote.SupervisorBackend``: a ``--workers`` worker's view of the supervisor's
  :class:`MemoryBackend`, over the worker's pipe (one budget for every worker).
* ``picker.tenants.redis_backend.RedisBackend``: accounts in Redis, updated by Lua scripts, shared by every
  EPP replica.

The interface (:class:`Backend`): :meth:`~Backend.reserve` answers a :class:`Verdict` or, for a remote
backend, an awaitable of one (the request path awaits only then); :meth:`~Backend.settle` never blocks the
caller (a remote backend sends it in the background). Settled usage and refusals are reported to a
:class:`UsageSink` by whoever applies them, so metrics are counted once, where the budget is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from picker.tenants.ledger import Account, Denial, Limits, Vector, now_wall, window_end, window_ids

__all__ = [
    "AccountView",
    "Backend",
    "MemoryBackend",
    "NullSink",
    "Settlement",
    "UsageSink",
    "Verdict",
]


class Verdict(NamedTuple):
    """The answer to a reservation: granted (``denial`` None) or refused, with the room left afterwards
    (``remaining``, per meter; None = unlimited) and the windows it was decided in (for reset times).

    A NamedTuple, as the other per-request records: built once per request, a fraction of a frozen
    dataclass's construction cost."""

    denial: Denial | None
    remaining: tuple[int | None, ...]
    windows: tuple[int, ...]
    #: the budget could not be consulted (Redis down, fail-open): admitted without enforcement
    degraded: bool = False
    #: the backend's name of the reservation, handed back at settlement ("" for the memory backend)
    hold: str = ""

    @property
    def granted(self) -> bool:
        return self.denial is None

    def reset_at(self, meter: int) -> float:
        return window_end(meter, self.windows[meter])


class Settlement(NamedTuple):
    """One finished request, as metered: what it reserved, what it used, and the counts behind it."""

    tenant: str
    model: str
    reserved: Vector
    actual: Vector
    input_tokens: int
    output_tokens: int
    cost_nano: int
    #: the counts are estimates (the response reported no usage)
    estimated: bool = False
    #: :attr:`Verdict.hold` of the reservation; "" when nothing was held (admitted while degraded)
    hold: str = ""


class UsageSink(Protocol):
    """Where settled usage, refusals and the backend's health are counted (``picker.tenants.metrics``)."""

    def settled(self, s: Settlement) -> None: ...

    def rejected(self, tenant: str, reason: str) -> None: ...

    def backend_up(self, *, up: bool) -> None: ...

    def backend_failure(self, fail_mode: str) -> None: ...


class NullSink:
    __slots__ = ()

    def settled(self, s: Settlement) -> None:
        pass

    def rejected(self, tenant: str, reason: str) -> None:
        pass

    def backend_up(self, *, up: bool) -> None:
        pass

    def backend_failure(self, fail_mode: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class AccountView:
    """One tenant's meters as ``/debug/tenants`` and the gauges show them."""

    tenant: str
    used: tuple[int, ...]
    reserved: tuple[int, ...]
    limits: Limits | None
    windows: tuple[int, ...]


class Backend(Protocol):
    def reserve(
        self, tenant: str, limits: Limits | None, amounts: Vector
    ) -> Verdict | Awaitable[Verdict]: ...

    def settle(self, s: Settlement) -> None: ...

    def accounts(self) -> Iterator[AccountView]: ...


_UNLIMITED: Limits = (None, None, None, None, None, None)
_NO_REMAINING: tuple[int | None, ...] = _UNLIMITED


class MemoryBackend:
    """Budgets in this process. Single-threaded: every call comes from the event loop.

    Accounts are created on first use and dropped when idle (nothing reserved, nothing used in the
    current windows) by :meth:`sweep`; their number is bounded by the tenant ids the identity layer lets
    through (:class:`picker.tenants.identity.TenantIds`), plus ``other``.
    """

    __slots__ = ("_accounts", "_clock", "_limits", "_sink")

    def __init__(self, sink: UsageSink | None = None, *, clock: Callable[[], float] = now_wall) -> None:
        self._accounts: dict[str, Account] = {}
        #: the limits each tenant was last checked against (for views)
        self._limits: dict[str, Limits | None] = {}
        self._clock = clock
        self._sink: UsageSink = sink if sink is not None else NullSink()

    def set_sink(self, sink: UsageSink) -> None:
        self._sink = sink

    def reserve(self, tenant: str, limits: Limits | None, amounts: Vector) -> Verdict:
        ids = window_ids(self._clock())
        account = self._accounts.get(tenant)
        if account is None:
            account = self._accounts[tenant] = Account()
        self._limits[tenant] = limits
        if limits is None:
            account.admit(amounts, _UNLIMITED, ids)
            return Verdict(None, _NO_REMAINING, ids)
        denial = account.admit(amounts, limits, ids)
        return Verdict(denial, account.remaining(limits, ids), ids)

    def settle(self, s: Settlement) -> None:
        account = self._accounts.get(s.tenant)
        if account is None:  # swept while the request ran (it cannot be: it held a reservation)
            account = self._accounts[s.tenant] = Account()
        account.settle(s.reserved, s.actual, window_ids(self._clock()))
        self._sink.settled(s)

    def rejected(self, tenant: str, reason: str) -> None:
        self._sink.rejected(tenant, reason)

    def accounts(self) -> Iterator[AccountView]:
        ids = window_ids(self._clock())
        # a copy: /metrics and /debug read from the admin server's threads while the loop adds accounts
        for tenant, account in list(self._accounts.items()):
            account.roll(ids)
            yield AccountView(
                tenant, tuple(account.used), tuple(account.reserved), self._limits.get(tenant), ids
            )

    def sweep(self) -> int:
        """Drop idle accounts; returns how many."""
        ids = window_ids(self._clock())
        idle = [t for t, a in self._accounts.items() if a.idle(ids)]
        for tenant in idle:
            del self._accounts[tenant]
            self._limits.pop(tenant, None)
        return len(idle)

    def __len__(self) -> int:
        return len(self._accounts)
