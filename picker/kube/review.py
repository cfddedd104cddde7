"""TokenReview and SubjectAccessReview: who holds a bearer token, and may they ``get /metrics``?

This is the Kubernetes half of ``--metrics-endpoint-auth`` (the reference EPP's default, via
controller-runtime's ``WithAuthenticationAndAuthorization`` filter): the API server authenticates the token
a scraper presents (``authentication.k8s.io/v1`` TokenReview) and then authorizes the user it names for a
non-resource URL and verb (``authorization.k8s.io/v1`` SubjectAccessReview), so RBAC decides who may read
``/metrics`` (a ClusterRole with ``nonResourceURLs: ["/metrics"]``, ``verbs: [get]``). The EPP's own
ServiceAccount needs ``create`` on both review resources (``system:auth-delegator`` grants exactly that).

Caching and the HTTP answers live in :mod:`picker.admin.auth`; this module only makes the two calls, on a
worker thread each, and translates what comes back. The token never leaves this module except in the
request body to the API server: it is not logged and not kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client as k8s_client

from picker.kube._threads import run_in_thread
from picker.kube.client import JsonObj, KubeUnavailableError, call_json

#: (connect, read) seconds of one review: a scrape waits for it, and Prometheus' own timeout is ~10 s
REVIEW_TIMEOUT = (3.0, 5.0)


@dataclass(frozen=True, slots=True)
class ReviewedUser:
    """The identity a TokenReview vouched for (``status.user``)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """What a SubjectAccessReview answered: ``allowed`` and the authorizer's ``reason`` (may be empty)."""

    allowed: bool
    reason: str = ""


def _user(status: JsonObj) -> ReviewedUser:
    raw = status.get("user") or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("username"), str):
        raise KubeUnavailableError("malformed TokenReview: authenticated without status.user.username")
    groups = raw.get("groups") or []
    extra = raw.get("extra") or {}
    return ReviewedUser(
        username=raw["username"],
        uid=str(raw.get("uid") or ""),
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        extra=tuple(
            (str(k), tuple(str(v) for v in vs))
            for k, vs in (extra.items() if isinstance(extra, dict) else ())
            if isinstance(vs, list)
        ),
    )


class AccessReviewer:
    """Makes TokenReviews and SubjectAccessReviews through the EPP's API client.

    ``api`` returns the ``ApiClient`` to use; it is called at review time, not at construction, because the
    composition root loads the client (reading kubeconfig or the service-account files) only when it
    starts. Satisfies :class:`picker.admin.auth.Reviewer`.
    """

    def __init__(
        self,
        api: Callable[[], k8s_client.ApiClient],
        *,
        audiences: tuple[str, ...] = (),
        timeout: tuple[float, float] = REVIEW_TIMEOUT,
    ) -> None:
        self._api = api
        self._audiences = audiences
        self._timeout = timeout

    async def authenticate(self, token: str) -> ReviewedUser | None:
        """The user ``token`` belongs to, or None when the API server does not authenticate it.

        Raises :class:`~picker.kube.client.KubeError` when the review itself fails (API unreachable, or the
        EPP lacks ``create tokenreviews``)."""
        spec: JsonObj = {"token": token}
        if self._audiences:
            spec["audiences"] = list(self._audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        api = k8s_client.AuthenticationV1Api(self._api())
        doc = await run_in_thread(
            lambda: call_json(api.create_token_review, body, timeout=self._timeout), name="kube-tokenreview"
        )
        status = doc.get("status") or {}
        if not isinstance(status, dict):
            raise KubeUnavailableError("malformed TokenReview: status is not an object")
        if status.get("authenticated") is not True:
            return None
        return _user(status)

    async def authorize(self, user: ReviewedUser, *, path: str, verb: str) -> AccessDecision:
        """May ``user`` use ``verb`` on the non-resource URL ``path``? Raises :class:`KubeError` when the
        review fails."""
        spec: JsonObj = {
            "user": user.username,
            "groups": list(user.groups),
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(vs) for k, vs in user.extra}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        api = k8s_client.AuthorizationV1Api(self._api())
        doc = await run_in_thread(
            lambda: call_json(api.create_subject_access_review, body, timeout=self._timeout),
            name="kube-subjectaccessreview",
        )
        status = doc.get("status") or {}
        if not isinstance(status, dict):
            raise KubeUnavailableError("malformed SubjectAccessReview: status is not an object")
        reason = str(status.get("reason") or "")
        if error := status.get("evaluationError"):
            # RBAC reports rules it could not resolve (a missing ClusterRole) here; the answer stands.
            reason = f"{reason} (evaluation error: {error})".strip()
        return AccessDecision(allowed=status.get("allowed") is True, reason=reason)
