"""MetricsAuth: the answers (401/403/500/200), the per-token cache with its TTLs and bound, coalescing.

The reviewer here is a table-driven fake at the seam (the Protocol); the same class against the API-server
emulator through the real HTTP server is in tests/integration/service/test_metrics_auth.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from picker.admin.auth import MAX_TOKEN_BYTES, MetricsAuth, bearer_token
from picker.errors import PickerError


@dataclass(frozen=True)
class _User:
    username: str


@dataclass(frozen=True)
class _Decision:
    allowed: bool
    reason: str = ""


class _ReviewFailedError(PickerError):
    code = "KubeApiError"


@dataclass
class FakeReviewer:
    tokens: dict[str, str] = field(default_factory=dict)
    allowed: set[str] = field(default_factory=set)
    fail_authn: bool = False
    fail_authz: bool = False
    gate: asyncio.Event | None = None
    authn_calls: list[str] = field(default_factory=list)
    authz_calls: list[tuple[str, str, str]] = field(default_factory=list)

    async def authenticate(self, token: str) -> _User | None:
        self.authn_calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_authn:
            raise _ReviewFailedError("API server unreachable")
        name = self.tokens.get(token)
        return _User(name) if name is not None else None

    async def authorize(self, user: _User, *, path: str, verb: str) -> _Decision:  # type: ignore[override]
        self.authz_calls.append((user.username, path, verb))
        if self.fail_authz:
            raise _ReviewFailedError("forbidden: cannot create subjectaccessreviews")
        return _Decision(user.username in self.allowed, "RBAC: no rule")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _auth(reviewer: FakeReviewer, clock: Clock | None = None, **kw: object) -> MetricsAuth:
    return MetricsAuth(reviewer, clock=clock or Clock(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Basic dXNlcjpwdw==", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer a b", None),
        ("Bearer " + "x" * (MAX_TOKEN_BYTES + 1), None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


async def test_answers_like_controller_runtime() -> None:
    reviewer = FakeReviewer(tokens={"t-prom": "prometheus", "t-other": "someone"}, allowed={"prometheus"})
    auth = _auth(reviewer)
    assert (await auth.check(None)).status == 401
    assert reviewer.authn_calls == []  # no token, no API call
    ok = await auth.check("Bearer t-prom")
    assert (ok.status, ok.user) == (200, "prometheus")
    assert reviewer.authz_calls == [("prometheus", "/metrics", "get")]
    denied = await auth.check("Bearer t-other")
    assert (denied.status, denied.message) == (403, "Authorization denied for user someone")
    unknown = await auth.check("Bearer t-nobody")
    assert (unknown.status, unknown.message) == (401, "Unauthorized")


async def test_review_failures_are_errors_and_never_cached() -> None:
    reviewer = FakeReviewer(tokens={"t": "prometheus"}, allowed={"prometheus"}, fail_authn=True)
    auth = _auth(reviewer)
    assert (await auth.check("Bearer t")).message == "Authentication failed"
    assert (await auth.check("Bearer t")).status == 401
    assert len(reviewer.authn_calls) == 2
    assert len(auth) == 0
    reviewer.fail_authn, reviewer.fail_authz = False, True
    failed = await auth.check("Bearer t")
    assert (failed.status, failed.message) == (500, "Authorization for user prometheus failed")
    reviewer.fail_authz = False
    assert (await auth.check("Bearer t")).status == 200  # recovered at once: the failure was not cached


async def test_decisions_are_cached_per_token_for_their_ttl() -> None:
    clock = Clock()
    reviewer = FakeReviewer(tokens={"a": "prometheus", "b": "bob"}, allowed={"prometheus"})
    auth = _auth(reviewer, clock, allow_ttl_s=60, deny_ttl_s=30, unauthenticated_ttl_s=10)
    for _ in range(5):
        assert (await auth.check("Bearer a")).ok
        assert (await auth.check("Bearer b")).status == 403
        assert (await auth.check("Bearer c")).status == 401
    assert sorted(reviewer.authn_calls) == ["a", "b", "c"]
    clock.now += 10.5  # the unauthenticated answer expired: a token created since is honoured
    reviewer.tokens["c"] = "carol"
    reviewer.allowed.add("carol")
    assert (await auth.check("Bearer c")).ok
    clock.now += 20  # 30.5 s: the denial expired, the grant given meanwhile applies
    reviewer.allowed.add("bob")
    assert (await auth.check("Bearer b")).ok
    assert (await auth.check("Bearer a")).ok
    assert reviewer.authn_calls.count("a") == 1
    clock.now += 30  # 60.5 s: the allowance expired; a revoked grant now denies
    reviewer.allowed.discard("prometheus")
    assert (await auth.check("Bearer a")).status == 403


async def test_cache_is_bounded_least_recently_used_first() -> None:
    reviewer = FakeReviewer(tokens={f"t{i}": f"u{i}" for i in range(10)}, allowed={"u0"})
    auth = _auth(reviewer, max_entries=3)
    for i in range(10):
        await auth.check(f"Bearer t{i}")
        if i >= 1:
            await auth.check("Bearer t0")  # kept warm: the others are evicted before it
    assert len(auth) == 3
    assert reviewer.authn_calls.count("t0") == 1
    await auth.check("Bearer t1")  # evicted long ago: reviewed again
    assert reviewer.authn_calls.count("t1") == 2


async def test_concurrent_requests_with_one_token_share_one_review() -> None:
    gate = asyncio.Event()
    reviewer = FakeReviewer(tokens={"t": "prometheus"}, allowed={"prometheus"}, gate=gate)
    auth = _auth(reviewer)
    waiters = [asyncio.create_task(auth.check("Bearer t")) for _ in range(20)]
    await asyncio.sleep(0)
    impatient = waiters.pop()
    impatient.cancel()  # a scraper hanging up does not cancel the review the others wait for
    gate.set()
    outcomes = await asyncio.gather(*waiters)
    assert all(o.ok for o in outcomes)
    assert reviewer.authn_calls == ["t"]


async def test_reviews_in_flight_are_bounded() -> None:
    gate = asyncio.Event()
    reviewer = FakeReviewer(gate=gate)
    auth = _auth(reviewer, max_concurrent_reviews=2)
    tasks = [asyncio.create_task(auth.check(f"Bearer junk-{i}")) for i in range(6)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(reviewer.authn_calls) == 2
    gate.set()
    assert {o.status for o in await asyncio.gather(*tasks)} == {401}
    assert len(reviewer.authn_calls) == 6


async def test_no_token_text_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="picker.admin.auth")
    secret = "eyJhbGciOiJSUzI1NiJ9.secret-token-text"
    reviewer = FakeReviewer(tokens={secret: "bob\nFAKE LOG LINE"}, fail_authz=True)
    auth = _auth(reviewer)
    await auth.check(f"Bearer {secret}")
    await auth.check("Bearer another-secret-token")
    reviewer.fail_authn = True
    await auth.check("Bearer third-secret-token")
    assert caplog.records
    text = caplog.text
    assert "secret-token" not in text
    assert "\nFAKE LOG LINE" not in text  # the user name is logged escaped
