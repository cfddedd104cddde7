"""The Kubernetes API client factory and the package's exception boundary.

Everything in :mod:`picker.kube` talks to the API server through one ``kubernetes.client.ApiClient`` built
here, and every foreign exception (``ApiException``, urllib3 errors, socket errors) is translated into
:class:`KubeError` subclasses by :func:`translate` before it leaves a worker thread. Callers decide on
*types*: :class:`KubeUnavailableError` and :class:`KubeGoneError` are retried with backoff / relist, the
rest are logged and retried slowly (RBAC and missing CRDs get fixed by operators while we keep running).

Why raw JSON instead of the generated models: every call uses ``_preload_content=False`` and parses the
body with :func:`json.loads`. The generated pydantic models cost milliseconds per pod to deserialize,
drop fields of CRDs they do not know, and give nothing the watchers need; the dict access is checked by
the parsers in ``pool.py``/``pods.py``/``objectives.py`` instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from picker.errors import PickerError

#: (connect, read) seconds for ordinary requests; watches pass their own read (inactivity) timeout
DEFAULT_REQUEST_TIMEOUT = (5.0, 30.0)

#: The API classes the package uses, loaded now. ``kubernetes.client`` imports each class lazily on first
#: attribute access, and ``CoreV1Api`` alone takes about half a second (seconds on a busy node) to
#: import. Left lazy, that import would happen on the event loop when the first pod watch starts, e.g.
#: on a leader takeover, stalling health checks and ext_proc streams for that long.
API_CLASSES = (
    k8s_client.CoreV1Api,
    k8s_client.CustomObjectsApi,
    k8s_client.CoordinationV1Api,
    k8s_client.AuthenticationV1Api,
    k8s_client.AuthorizationV1Api,
)

JsonObj = dict[str, Any]


class KubeError(PickerError):
    """A Kubernetes API call failed. ``status`` is the HTTP status (None for transport errors)."""

    code: ClassVar[str] = "KubeApiError"

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        #: seconds the server asked us to wait (``Retry-After`` / ``details.retryAfterSeconds``)
        self.retry_after = retry_after


class KubeUnavailableError(KubeError):
    """Transport error, timeout, 429 or 5xx: the API server is (temporarily) not answering well."""

    transient = True


class KubeGoneError(KubeError):
    """410 Gone / Expired: the requested resourceVersion is too old — relist."""

    transient = True


class KubeConflictError(KubeError):
    """409: optimistic-concurrency conflict or AlreadyExists — re-read and try again."""


class KubeNotFoundError(KubeError):
    """404: the object (or the resource type: CRD not installed) does not exist."""


class KubeConfigError(PickerError):
    """No usable kubeconfig / in-cluster configuration."""

    code = "ConfigError"


def _retry_after(headers: Mapping[str, str] | None, body: JsonObj | None) -> float | None:
    raw = None if headers is None else headers.get("Retry-After")
    if raw is not None:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
    details = (body or {}).get("details") or {}
    seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else None


def error_from_status(
    status: int, body: JsonObj | None, headers: Mapping[str, str] | None = None
) -> KubeError:
    """Map an HTTP status (+ the ``metav1.Status`` body, if any) to our exception types."""
    body = body or {}
    reason = body.get("reason") or ""
    message = f"{status} {reason}: {body.get('message') or 'no message'}".replace(" :", ":")
    retry_after = _retry_after(headers, body)
    if status == 410:
        return KubeGoneError(message, status=status, retry_after=retry_after)
    if status == 409:
        return KubeConflictError(message, status=status, retry_after=retry_after)
    if status == 404:
        return KubeNotFoundError(message, status=status, retry_after=retry_after)
    if status == 429 or status >= 500:
        return KubeUnavailableError(message, status=status, retry_after=retry_after)
    return KubeError(message, status=status, retry_after=retry_after)


def translate(exc: BaseException) -> KubeError:
    """Translate a foreign exception raised by a client call into a :class:`KubeError`."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        body: JsonObj | None = None
        if exc.body:
            try:
                parsed = json.loads(exc.body)
            except (ValueError, TypeError):
                parsed = None
            body = parsed if isinstance(parsed, dict) else None
        headers = dict(exc.headers) if exc.headers else None
        if not exc.status:
            return KubeUnavailableError(f"request failed: {exc.reason}")
        return error_from_status(int(exc.status), body, headers)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return KubeUnavailableError(f"API server unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):  # malformed JSON from the server
        return KubeUnavailableError(f"malformed response: {exc}")
    raise TypeError(f"not a Kubernetes client error: {exc!r}") from exc


def read_json(response: urllib3.BaseHTTPResponse) -> JsonObj:
    """Read and parse a non-streaming response obtained with ``_preload_content=False``."""
    try:
        data = json.loads(response.data)
    finally:
        response.release_conn()
    if not isinstance(data, dict):
        raise KubeUnavailableError("malformed response: not a JSON object")
    return data


def call_json(
    fn: Callable[..., Any], *args: Any, timeout: tuple[float, float] = DEFAULT_REQUEST_TIMEOUT
) -> JsonObj:
    """Blocking: call a generated API method for its raw JSON (``_preload_content=False``).

    Foreign exceptions come out translated. The generated methods are annotated with model return
    types, which ``_preload_content=False`` makes untrue; ``fn`` is typed loosely on purpose.
    """
    try:
        return read_json(fn(*args, _preload_content=False, _request_timeout=timeout))
    except Exception as exc:
        raise translate(exc) from exc


# the loaders are untyped in the kubernetes package; give them a signature once
_load_kube_config: Callable[..., None] = k8s_config.load_kube_config
_load_incluster_config: Callable[..., None] = k8s_config.load_incluster_config


def load_api_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    *,
    context: str | None = None,
    user_agent: str = "picker-epp",
    pool_size: int = 16,
) -> k8s_client.ApiClient:
    """Build an ApiClient: the given kubeconfig, else the in-cluster service account, else ~/.kube/config.

    Nothing global is touched: the configuration object belongs to the returned client only (the
    ``kubernetes`` package would otherwise install it as the process-wide default). urllib3's own
    retries are turned off: the watchers and the elector have their own backoff, and hidden retries
    would multiply every timeout by four.
    """
    cfg = k8s_client.Configuration()
    try:
        if kubeconfig:
            _load_kube_config(
                config_file=os.fspath(kubeconfig),
                context=context,
                client_configuration=cfg,
                persist_config=False,
            )
        else:
            try:
                _load_incluster_config(client_configuration=cfg)
            except ConfigException:
                _load_kube_config(context=context, client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError, TypeError, ValueError) as exc:
        where = os.fspath(kubeconfig) if kubeconfig else "in-cluster service account or ~/.kube/config"
        raise KubeConfigError(f"cannot load Kubernetes client configuration from {where}: {exc}") from exc
    cfg.retries = urllib3.util.Retry(total=0, redirect=0, raise_on_status=False)
    cfg.connection_pool_maxsize = pool_size
    api = k8s_client.ApiClient(configuration=cfg)
    api.user_agent = user_agent
    return api
