"""One exception tree for the whole service.

Errors cross layers as *codes*, never as strings to match on. Each code maps to exactly one wire form in
:func:`picker.extproc` (an Envoy ``ImmediateResponse`` with status and body ``inference error: <Code> -
<message>``, as the reference EPP writes it). The ``code`` strings are also the values of the
``error_code`` label of ``inference_objective_request_error_total``, so they must stay stable.
"""

from __future__ import annotations

import json
from typing import ClassVar


class PickerError(Exception):
    """Base of every error the picker raises on purpose."""

    code: ClassVar[str] = "Unknown"
    http_status: ClassVar[int] = 500
    #: True when retrying the same operation later may succeed (used by watchers/scrapers, not ext_proc).
    transient: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def wire_body(self) -> str:
        """The ImmediateResponse body, byte-compatible with the reference EPP."""
        return f"inference error: {self.code} - {self.message}"

    def wire_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers of the ImmediateResponse: none, as the reference (tenant refusals add some)."""
        return ()


class BadRequest(PickerError):
    """The request cannot be understood (bad JSON, missing model/prompt/messages, wrong types)."""

    code = "BadRequest"
    http_status = 400


class Unauthorized(PickerError):
    code = "Unauthorized"
    http_status = 401


class Forbidden(PickerError):
    code = "Forbidden"
    http_status = 403


class NotFound(PickerError):
    code = "NotFound"
    http_status = 404


class PayloadTooLarge(PickerError):
    """Request body over the configured cap. Not in the reference table: it buffers without a limit."""

    code = "PayloadTooLarge"
    http_status = 413


class ResourceExhausted(PickerError):
    """Shed (sheddable request while saturated) or nothing left after the profile's filters."""

    code = "ResourceExhausted"
    http_status = 429


class ServiceUnavailable(PickerError):
    """No candidate endpoints for this request (empty pool, or the subset hint matched nothing)."""

    code = "ServiceUnavailable"
    http_status = 503
    transient = True


class Internal(PickerError):
    code = "Internal"
    http_status = 500


class ConfigError(PickerError):
    """A configuration document (file, ConfigMap, flags) is invalid. Never reaches the wire."""

    code = "ConfigError"


class StartupError(PickerError):
    """The process cannot start as configured: a port in use, no Kubernetes credentials. The message names
    the flag, port or file; the command line prints it as one line and exits 2. Never reaches the wire."""

    code = "StartupError"


#: Label value used for a response whose upstream status was not 200 (counted, not raised).
MODEL_SERVER_ERROR = "ModelServerError"


class _OpenAIError:
    """An error answered with an OpenAI-shaped body ``{"error": {message, type, param, code}}`` and headers.

    Used for tenants' refusals, which the reference does not have: the body is what OpenAI's API answers, so
    clients and SDKs that handle OpenAI's rate limits (retry after ``retry-after``, read ``x-ratelimit-*``)
    handle ours. The error metric still counts them under the reference's codes.
    """

    message: str

    def _init_openai(
        self, *, reason: str, error_type: str, error_code: str, headers: tuple[tuple[str, str], ...]
    ) -> None:
        #: the ``reason`` label of ``picker_tenant_rejections_total``
        self.reason = reason
        self.error_type = error_type
        self.error_code = error_code
        self._headers = headers

    def wire_body(self) -> str:
        error = {"message": self.message, "type": self.error_type, "param": None, "code": self.error_code}
        return json.dumps({"error": error})

    def wire_headers(self) -> tuple[tuple[str, str], ...]:
        return (("content-type", "application/json"), *self._headers)


class TenantRefused(_OpenAIError, ResourceExhausted):
    """A tenant over one of its limits or budgets, or its share of a full queue: 429."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        error_type: str = "requests",
        error_code: str = "rate_limit_exceeded",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        ResourceExhausted.__init__(self, message)
        self._init_openai(reason=reason, error_type=error_type, error_code=error_code, headers=headers)


class TenantUnavailable(_OpenAIError, ServiceUnavailable):
    """A request that cannot be admitted now: its queue wait ran out, or the budget store is down and the
    configuration says fail closed: 503."""

    def __init__(self, message: str, *, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        ServiceUnavailable.__init__(self, message)
        self._init_openai(
            reason=reason, error_type="server_error", error_code="service_unavailable", headers=headers
        )
