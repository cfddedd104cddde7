"""Properties of the lease arithmetic (picker.tenants.lease) over arbitrary interleavings of several replicas.

Redis is played by :class:`Store`, the LEASE and RESERVE scripts' arithmetic written out in Python (the
Lua is checked against a real redis-server in ``tests/integration/tenants/test_redis_leases.py``). Each
replica admits on its lease or falls back to a per-request reservation that gives the lease's free part
back; syncs report, refill, give back; a lease not synced for a TTL expires. Requests use exactly what they
reserved. Whatever the order: ``used + reserved <= limit`` on every limited meter (plus what an expired
lease still covered, its documented cost), ``reserved`` is the sum of the holds, and each replica's running
requests and unreported usage stay within what Redis holds for it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from picker.tenants.lease import Lease, LeasePlan
from picker.tenants.ledger import N_METERS, Limits, Vector, actual_vector, reservation_vector

Hold = list[int]


class Store:
    """One tenant's meters and holds, as the scripts keep them (one window: no roll)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.used = [0] * N_METERS
        self.reserved = [0] * N_METERS
        self.holds: dict[str, Hold] = {}
        self.leases: set[str] = set()

    def _take(self, hold: Hold, amounts: Vector) -> None:
        for i in range(N_METERS):
            back = min(hold[i], amounts[i])
            hold[i] -= back
            self.reserved[i] = max(0, self.reserved[i] - back)

    def _put(self, hid: str, hold: Hold) -> None:
        if any(hold):
            self.holds[hid] = hold
        else:
            self.holds.pop(hid, None)
            self.leases.discard(hid)

    def reserve(self, amounts: Vector, hid: str, lease: str, give_back: Vector | None) -> tuple[bool, Hold]:
        held = self.holds.get(lease, [0] * N_METERS)
        if give_back is not None:
            self._take(held, give_back)
            if lease in self.holds:
                self._put(lease, held)
        for i, limit in enumerate(self.limits):
            if limit is not None and self.used[i] + self.reserved[i] + amounts[i] > limit:
                return False, held
        for i in range(N_METERS):
            self.reserved[i] += amounts[i]
        self.holds[hid] = list(amounts)
        return True, held

    def settle(self, hid: str, actual: Vector) -> None:
        hold = self.holds.pop(hid, None)
        if hold is not None:
            self._take(hold, tuple(hold))  # type: ignore[arg-type]
        for i in range(N_METERS):
            self.used[i] += actual[i]

    def lease(
        self, lid: str, plan: LeasePlan, limits: Limits | None, leave: Vector = (0,) * N_METERS
    ) -> tuple[Hold, int, bool, bool]:
        had = lid in self.holds
        cur = self.holds.get(lid, [0] * N_METERS)
        for i in range(N_METERS):
            self.used[i] += plan.spent[i]
            back = min(cur[i], plan.spent[i] + plan.give_back[i])
            cur[i] -= back
            self.reserved[i] = max(0, self.reserved[i] - back)
        n = len(self.leases) + (0 if lid in self.leases else 1)
        grant = [0] * N_METERS
        ok = True
        for i in range(N_METERS):
            limit = limits[i] if limits is not None else None
            if limit is not None and plan.want[i] > 0:
                room = limit - self.used[i] - self.reserved[i] - leave[i]
                grant[i] = max(0, min(plan.want[i], room // n))
                ok = ok and grant[i] >= plan.need[i]
        if ok:
            for i in range(N_METERS):
                cur[i] += grant[i]
                self.reserved[i] += grant[i]
        self._put(lid, cur)
        if any(cur):
            self.leases.add(lid)
        return cur, n, ok, had

    def expire(self, lid: str) -> None:
        hold = self.holds.pop(lid, None)
        if hold is not None:
            self._take(hold, tuple(hold))  # type: ignore[arg-type]
        self.leases.discard(lid)


def _limit(low: int, high: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(min_value=low, max_value=high))


# room for several requests on every meter: a tiny limit anywhere (hypothesis likes them) makes every lease
# one request long and the interleavings that matter rare
limits_strategy = st.tuples(
    _limit(200, 5_000),
    _limit(200, 8_000),
    _limit(20, 400),
    _limit(5, 100),
    _limit(400, 10_000),
    _limit(400, 20_000),
)
ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["admit", "admit", "admit", "race", "settle", "settle", "expire", "tick"]),
        st.sampled_from([0, 0, 0, 1, 2]),  # replica: mostly one, so that its lease sees long sequences
        st.integers(min_value=1, max_value=400),  # tokens
        st.integers(min_value=0, max_value=63),  # which running request
        st.booleans(),  # the replica's lease loop runs after the step
    ),
    min_size=1,
    max_size=120,
)
TTL, REPORT, IDLE = 8.0, 0.5, 3.0


@settings(max_examples=300, deadline=None)
@given(limits_strategy, st.sampled_from([0.01, 0.05, 0.2, 0.5]), ops_strategy)
def test_leases_and_usage_never_pass_a_limit(  # noqa: PLR0912 - one interleaving, one branch per kind of step
    limits: Limits, fraction: float, ops: list[tuple[str, int, int, int, bool]]
) -> None:
    store = Store(limits)
    now = 0.0
    leases = [Lease(limits, now, fraction) for _ in range(3)]
    lost = [False] * 3
    allowance = [0] * N_METERS
    running: list[tuple[int, Vector, str]] = []
    serial = 0
    for op, r, tokens, pick, sync in ops:
        lease = leases[r]
        lid = f"L{r}"
        if op == "admit":
            amounts = reservation_vector(tokens, tokens * 2)
            if lease.admit(amounts, now):
                running.append((r, amounts, "lease"))
            else:
                give_back = lease.take_free() if any(lease.granted) else None
                serial += 1
                hid = f"{r}:{serial}"
                had = lid in store.holds
                ok, hold = store.reserve(amounts, hid, lid, give_back)
                if give_back is not None:
                    lease.gave_back(tuple(hold), had=had)  # type: ignore[arg-type]
                if ok:
                    running.append((r, amounts, hid))
        elif op == "race" and not lease.syncing and not any(lease.granted):
            # a request the empty lease does not cover goes to RESERVE and flags a refill, which Redis
            # runs first: the refill leaves the room of the RESERVE in flight, so the request is admitted
            # whenever Redis had room for it (a lease never refuses its own replica's request)
            amounts = reservation_vector(tokens, tokens * 2)
            if not lease.admit(amounts, now):
                room = [
                    None if x is None else x - store.used[i] - store.reserved[i] for i, x in enumerate(limits)
                ]
                plan = lease.plan(now, report_s=REPORT, ttl_s=TTL, idle_s=IDLE)
                if plan is not None:
                    hold, n, ok, had = store.lease(lid, plan, lease.limits, leave=amounts)
                    lease.applied(plan, tuple(hold), n, ok=ok, had=had, ttl_s=TTL)  # type: ignore[arg-type]
                serial += 1
                ok, _ = store.reserve(amounts, f"{r}:{serial}", lid, None)
                fits = all(x is None or amounts[i] <= x for i, x in enumerate(room))
                assert ok == fits, (room, amounts, lease.granted)
                if ok:
                    running.append((r, amounts, f"{r}:{serial}"))
        elif op == "settle" and running:
            owner, amounts, hid = running.pop(pick % len(running))
            actual = actual_vector(amounts[0], amounts[4])
            if hid == "lease":
                leases[owner].settle(amounts, actual)
            else:
                store.settle(hid, actual)
        elif op == "expire" and now - lease.last_sync >= TTL:
            # the hold expires as in Redis: its replica has not synced for a TTL (so it stopped admitting on
            # it half a TTL ago); what it still covered (running requests, unreported usage) may now pass
            # the limit when it settles: the documented cost of a lost lease
            if lid in store.holds:
                for i in range(N_METERS):
                    allowance[i] += lease.held[i] + lease.spent[i]
                lost[r] = True
            store.expire(lid)
        elif op == "tick":
            now += [0.2, 1.0, 5.0][pick % 3]
        plan = lease.plan(now, report_s=REPORT, ttl_s=TTL, idle_s=IDLE) if sync else None
        if plan is not None:
            hold, n, ok, had = store.lease(lid, plan, lease.limits)
            lease.applied(plan, tuple(hold), n, ok=ok, had=had, ttl_s=TTL)  # type: ignore[arg-type]
            if not any(lease.held) and not any(lease.spent):
                lost[r] = False  # nothing of before the loss is left in this replica

        # Redis: within every limit, and reserved is exactly the holds
        for i, limit in enumerate(limits):
            if limit is not None:
                assert store.used[i] + store.reserved[i] <= limit + allowance[i], (
                    i,
                    store.used,
                    store.reserved,
                )
            assert store.reserved[i] == sum(h[i] for h in store.holds.values()), i
        # each replica: what it admitted and did not report is within its hold (unless Redis lost it)
        for k, replica in enumerate(leases):
            if lost[k]:
                continue
            hold = store.holds.get(f"L{k}", [0] * N_METERS)
            for i in replica.limited:
                assert replica.held[i] + replica.spent[i] <= hold[i], (
                    k,
                    i,
                    replica.held,
                    replica.spent,
                    hold,
                )
