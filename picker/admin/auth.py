"""``--metrics-endpoint-auth``: who may read ``/metrics``, decided by the Kubernetes API and cached.

The reference EPP guards its metrics port with controller-runtime's authentication/authorization filter,
and so do we, with the same answers:

* no ``Authorization: Bearer <token>`` header, or a token the API server does not authenticate
  (TokenReview) → **401** ``Unauthorized``;
* an authenticated user whom RBAC does not allow ``get`` on the non-resource URL ``/metrics``
  (SubjectAccessReview) → **403** ``Authorization denied for user <name>``;
* the TokenReview call itself failed → **401** ``Authentication failed``; the SubjectAccessReview call
  failed → **500** ``Authorization for user <name> failed`` (as controller-runtime answers);
* otherwise the page.

Why a cache: Prometheus scrapes every few seconds with the same token, and two API calls per scrape
would load the API server for nothing. Decisions are cached per token for ``allow_ttl_s`` (60 s, the
authentication cache TTL controller-runtime configures; it also caches authorizations for 5 min, so a
revoked grant takes effect here at least as fast), denials for ``deny_ttl_s`` (30 s, its deny TTL) and
unauthenticated tokens for ``unauthenticated_ttl_s`` (10 s, so a freshly created token is usable soon).
Failed reviews are not cached. The cache holds at most ``max_entries`` tokens (least recently used
dropped first), keyed by the token's SHA-256, never by the token itself; concurrent requests with the same
token share one review, and at most ``max_concurrent_reviews`` reviews run at once, so a flood of random
tokens costs bounded memory and bounded API-server load. No token text reaches a log line; user names
(from the API server) are logged escaped, and only at debug level for ordinary denials.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from picker.errors import PickerError

log = logging.getLogger("picker.admin.auth")

#: longest token accepted (service-account JWTs are ~1 KiB; OIDC tokens a few KiB)
MAX_TOKEN_BYTES = 16 * 1024


class ReviewedIdentity(Protocol):
    @property
    def username(self) -> str: ...


class ReviewDecision(Protocol):
    @property
    def allowed(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class Reviewer(Protocol):
    """The API server's two reviews (:class:`picker.kube.review.AccessReviewer` satisfies it). Both raise
    a :class:`~picker.errors.PickerError` when the review itself fails."""

    async def authenticate(self, token: str) -> ReviewedIdentity | None: ...

    async def authorize(self, user: ReviewedIdentity, *, path: str, verb: str) -> ReviewDecision: ...


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The answer to one request: ``status`` 200 lets it through; anything else is sent with ``message``."""

    status: int
    message: str = ""
    user: str = ""
    #: False when a review call failed: the answer says nothing about the token and is not cached
    cacheable: bool = True

    @property
    def ok(self) -> bool:
        return self.status == 200


UNAUTHORIZED = AuthOutcome(401, "Unauthorized")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None if absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_BYTES or " " in token:
        return None
    return token


class MetricsAuth:
    """Authenticates and authorizes requests for one non-resource URL (``/metrics``) through a
    :class:`Reviewer`, with the cache described in the module docstring."""

    def __init__(
        self,
        reviewer: Reviewer,
        *,
        path: str = "/metrics",
        verb: str = "get",
        allow_ttl_s: float = 60.0,
        deny_ttl_s: float = 30.0,
        unauthenticated_ttl_s: float = 10.0,
        max_entries: int = 1024,
        max_concurrent_reviews: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_concurrent_reviews < 1:
            raise ValueError("max_entries and max_concurrent_reviews must be at least 1")
        self._reviewer = reviewer
        self._path = path
        self._verb = verb
        self._ttl = {200: allow_ttl_s, 403: deny_ttl_s, 401: unauthenticated_ttl_s}
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[AuthOutcome, float]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Task[AuthOutcome]] = {}
        self._reviews = asyncio.Semaphore(max_concurrent_reviews)
        #: reviews made (cache misses), for tests and /debug: (token reviews, access reviews)
        self.token_reviews = 0
        self.access_reviews = 0

    def __len__(self) -> int:
        return len(self._cache)

    async def check(self, authorization: str | None) -> AuthOutcome:
        """The outcome for a request carrying this ``Authorization`` header value."""
        token = bearer_token(authorization)
        if token is None:
            return UNAUTHORIZED
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        if cached is not None:
            outcome, expires = cached
            if self._clock() < expires:
                self._cache.move_to_end(key)
                return outcome
            del self._cache[key]
        task = self._pending.get(key)
        if task is None:
            # Its own task: a scraper that hangs up must not cancel a review others are waiting for.
            task = asyncio.create_task(self._review_and_cache(key, token), name="metrics-auth-review")
            self._pending[key] = task
        return await asyncio.shield(task)

    async def _review_and_cache(self, key: bytes, token: str) -> AuthOutcome:
        try:
            outcome = await self._review(token)
        finally:
            del self._pending[key]
        ttl = self._ttl.get(outcome.status) if outcome.cacheable else None
        if ttl is not None and ttl > 0:
            self._cache[key] = (outcome, self._clock() + ttl)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return outcome

    async def _review(self, token: str) -> AuthOutcome:
        async with self._reviews:
            self.token_reviews += 1
            try:
                user = await self._reviewer.authenticate(token)
            except PickerError as exc:
                log.warning("metrics auth: TokenReview failed: %s", exc.message)
                return AuthOutcome(401, "Authentication failed", cacheable=False)
            if user is None:
                log.debug("metrics auth: token not authenticated")
                return UNAUTHORIZED
            name = user.username
            self.access_reviews += 1
            try:
                decision = await self._reviewer.authorize(user, path=self._path, verb=self._verb)
            except PickerError as exc:
                log.warning("metrics auth: SubjectAccessReview for user %r failed: %s", name, exc.message)
                return AuthOutcome(500, f"Authorization for user {name} failed", name, cacheable=False)
        if not decision.allowed:
            log.debug(
                "metrics auth: %s %s denied for user %r: %r", self._verb, self._path, name, decision.reason
            )
            return AuthOutcome(403, f"Authorization denied for user {name}", name)
        return AuthOutcome(200, "", name)
