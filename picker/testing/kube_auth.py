"""TokenReview and SubjectAccessReview for the API-server emulator (:mod:`picker.testing.kube_api`).

The real API server answers ``POST /apis/authentication.k8s.io/v1/tokenreviews`` by asking its
authenticators who holds the token, and ``POST /apis/authorization.k8s.io/v1/subjectaccessreviews`` by
asking its authorizers (RBAC) whether a user may do something. Here both come from an
:class:`AccessPolicy` a test fills in: tokens mapped to users (name, uid, groups), and RBAC-like grants of
verbs on non-resource URLs to users or groups. Path patterns follow RBAC: an exact path, or a prefix
ending in ``*`` (``/debug/*``); ``*`` alone matches every path, and the verb ``*`` every verb.

Deliberately left out: resource attributes (the reviews the EPP makes are for non-resource URLs only; a
resource review is answered ``allowed: false`` with a reason saying so), audiences checks, and
impersonation. Who may *create* reviews is not checked; a test that wants the EPP's own RBAC to be
missing injects a 403 with :meth:`KubeApiEmulator.fail`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

JsonObj = dict[str, Any]

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 - a URL path, not a secret
ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclass(frozen=True, slots=True)
class User:
    """An identity a token authenticates as (``status.user`` of a TokenReview)."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ("system:authenticated",)


@dataclass(frozen=True, slots=True)
class NonResourceGrant:
    """One RBAC-like rule: ``verbs`` on ``paths`` for the listed users and groups."""

    verbs: frozenset[str]
    paths: tuple[str, ...]
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def applies(self, user: str, groups: Iterable[str], path: str, verb: str) -> bool:
        if user not in self.users and not self.groups.intersection(groups):
            return False
        if "*" not in self.verbs and verb not in self.verbs:
            return False
        return any(_path_matches(p, path) for p in self.paths)


def _path_matches(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


@dataclass
class AccessPolicy:
    """The emulator's authenticator and authorizer. Fill it with :meth:`add_token` and :meth:`grant`."""

    tokens: dict[str, User] = field(default_factory=dict)
    grants: list[NonResourceGrant] = field(default_factory=list)

    def add_token(self, token: str, user: str | User, *, groups: Iterable[str] = ()) -> User:
        """``token`` authenticates as ``user`` (a name gets ``system:authenticated`` plus ``groups``)."""
        who = user if isinstance(user, User) else User(user, groups=("system:authenticated", *groups))
        self.tokens[token] = who
        return who

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def grant(
        self,
        *,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        paths: Iterable[str] = ("/metrics",),
        verbs: Iterable[str] = ("get",),
    ) -> NonResourceGrant:
        """Allow ``verbs`` on ``paths`` to ``users`` and members of ``groups`` (a ClusterRole with
        ``nonResourceURLs`` plus its ClusterRoleBinding)."""
        rule = NonResourceGrant(frozenset(verbs), tuple(paths), frozenset(users), frozenset(groups))
        self.grants.append(rule)
        return rule

    def clear_grants(self) -> None:
        self.grants.clear()

    # ------------------------------------------------------------------------------------ reviews
    def token_review(self, body: JsonObj) -> JsonObj:
        """The TokenReview object with its ``status`` filled in (what the API server returns)."""
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        token = spec.get("token") if isinstance(spec, dict) else None
        user = self.tokens.get(token) if isinstance(token, str) else None
        status: JsonObj
        if user is None:
            status = {"authenticated": False, "error": "invalid bearer token"}
        else:
            status = {
                "authenticated": True,
                "user": {"username": user.name, "uid": user.uid, "groups": list(user.groups)},
            }
            if isinstance(spec, dict) and isinstance(spec.get("audiences"), list):
                status["audiences"] = spec["audiences"]
        return {**_envelope(body, "authentication.k8s.io/v1", "TokenReview"), "spec": spec, "status": status}

    def subject_access_review(self, body: JsonObj) -> JsonObj:
        """The SubjectAccessReview object with its ``status`` filled in."""
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        user = str(spec.get("user") or "")
        groups = [str(g) for g in spec.get("groups") or [] if isinstance(g, str)]
        attrs = spec.get("nonResourceAttributes")
        if not isinstance(attrs, dict):
            status: JsonObj = {
                "allowed": False,
                "reason": "the emulator authorizes nonResourceAttributes only",
            }
        else:
            path, verb = str(attrs.get("path") or ""), str(attrs.get("verb") or "")
            allowed = any(g.applies(user, groups, path, verb) for g in self.grants)
            status = {"allowed": allowed}
            if allowed:
                status["reason"] = "allowed by an emulator grant"
        return {
            **_envelope(body, "authorization.k8s.io/v1", "SubjectAccessReview"),
            "spec": spec,
            "status": status,
        }


def _envelope(body: JsonObj, api_version: str, kind: str) -> JsonObj:
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    return {"apiVersion": api_version, "kind": kind, "metadata": {**(meta or {}), "creationTimestamp": None}}
