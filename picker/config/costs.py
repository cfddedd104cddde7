"""Cost-aware routing in our ``PickerConfig`` document: what each endpoint costs, and capacity outside the
pool that takes the overflow.

::

    endpointPrices:                      # what serving costs on the pool's endpoints, per million tokens
      default: {inputPer1M: 0.05, outputPer1M: 0.20}        # every pool endpoint without a closer match
      engines:
      - {engine: tgi, inputPer1M: 0.08, outputPer1M: 0.30}  # by engine (pod label or detected)
    externalEndpoints:                   # used when the pool is saturated or unhealthy, or when asked
    - name: managed-api
      address: 10.96.12.7:8080           # ip:port the gateway can reach (e.g. a ClusterIP Service)
      priority: 0                        # lower is tried first
      price: {inputPer1M: 0.15, outputPer1M: 0.60}
      limits: {requestsPerMinute: 600, tokensPerMinute: 200000, concurrent: 32, costPerDay: 50}
    spillover: {saturationThreshold: 1.0, objectives: [bulk-offload]}

A pod's own price comes first: the label or annotation ``picker.dev/price-input-per-1m`` and
``picker.dev/price-output-per-1m`` (annotations win over labels). Then the engine's entry, then
``default``; nothing → unknown (the ``cost-scorer`` treats it as the mean of the known prices).

External endpoints are not pool members: not scraped, their load is our own accounting, and the director
sends them a request only when the pool is saturated, unhealthy or empty, or when the request's objective
is listed in ``spillover.objectives`` (``picker.routing.external``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from pydantic import Field, field_validator, model_validator

from picker.config.base import StrictModel as _Model
from picker.config.tenants import TENANT_ID_PATTERN, LimitsConfig

__all__ = [
    "PRICE_INPUT_KEY",
    "PRICE_OUTPUT_KEY",
    "EndpointPricesConfig",
    "EnginePriceConfig",
    "ExternalEndpointConfig",
    "SpilloverConfig",
    "TokenPriceConfig",
    "check_external",
    "parse_address",
]

#: pod label or annotation: the endpoint's price per million input tokens, in currency units
PRICE_INPUT_KEY: Final = "picker.dev/price-input-per-1m"
#: pod label or annotation: the endpoint's price per million output tokens
PRICE_OUTPUT_KEY: Final = "picker.dev/price-output-per-1m"
#: external endpoints per document (each is an endpoint row, a budget account and a metric label)
MAX_EXTERNAL_ENDPOINTS: Final = 32

_PORT = re.compile(r"[0-9]{1,5}")


def parse_address(text: str) -> tuple[str, int]:
    """``ip:port`` or ``[ipv6]:port`` → ``(ip, port)``; ValueError otherwise.

    An IP, not a host name: the gateway routes to ``x-gateway-destination-endpoint`` as an original
    destination (Envoy's ``ORIGINAL_DST`` cluster takes an address, it resolves no names). An in-cluster
    Service's ClusterIP works; so does a node-local egress proxy.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ip:port (a port 1..65535 after the last colon)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: {host!r} is not an IP address (the gateway routes to an address; give the Service's "
            "ClusterIP)"
        ) from None
    return str(ip), int(port)


class TokenPriceConfig(_Model):
    """Currency units per million tokens."""

    input_per1_m: float = Field(ge=0, allow_inf_nan=False, alias="inputPer1M")
    output_per1_m: float = Field(ge=0, allow_inf_nan=False, alias="outputPer1M")


class EnginePriceConfig(TokenPriceConfig):
    #: an engine name (``vllm``, ``sglang``, ``tgi``, ``trtllm-serve``, ... or one of ``engineConfigs``)
    engine: str = Field(min_length=1)


class EndpointPricesConfig(_Model):
    """The pool's prices: a default and per-engine entries (a pod's label or annotation wins)."""

    default: TokenPriceConfig | None = None
    engines: tuple[EnginePriceConfig, ...] = ()
    #: display only (``/debug`` and the README's examples)
    currency: str = Field(default="USD", min_length=1, max_length=16)

    @model_validator(mode="after")
    def _unique(self) -> EndpointPricesConfig:
        names = [e.engine for e in self.engines]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"engines: duplicate engine(s) {', '.join(duplicates)}")
        return self


class ExternalEndpointConfig(_Model):
    """Capacity outside the pool: not scraped, its load is our own accounting, its limits never exceeded."""

    #: the endpoint's name (a metric label, a ``/debug`` key)
    name: str = Field(min_length=1, max_length=64)
    #: ``ip:port`` the gateway can send to
    address: str
    #: lower is tried first; among equals the cheaper for the request, then the less busy
    priority: int = Field(default=0, ge=-1000, le=1000)
    #: what a request costs there
    price: TokenPriceConfig
    #: requests and tokens per minute, tokens per hour, concurrent requests, cost per day or month
    #: (the tenants' meters); unset = unlimited
    limits: LimitsConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TENANT_ID_PATTERN.fullmatch(v):
            raise ValueError(
                f"{v!r}: letters, digits and . _ : @ / + = - only, starting with a letter or digit"
            )
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        ip, port = parse_address(v)
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class SpilloverConfig(_Model):
    """When requests go to external endpoints (``picker.routing.external``)."""

    #: the pool counts as saturated (requests of priority >= 0 spill) at this value of the profile's
    #: saturation detector (1.0: the detector's own "saturated")
    saturation_threshold: float = Field(default=1.0, gt=0, le=10, allow_inf_nan=False)
    #: InferenceObjective names whose requests ask for external capacity first (the pool stays their
    #: fallback); the objective's name comes from ``x-gateway-inference-objective``
    objectives: tuple[str, ...] = Field(default=(), max_length=64)
    #: output tokens reserved against ``tokensPerMinute`` / ``tokensPerHour`` for a request that sets no
    #: ``max_tokens`` (the reservation is what keeps a limit from being passed: see the README)
    default_output_tokens: int = Field(default=1024, ge=1, le=10_000_000)
    #: requests below this priority never spill (sheddable ones are shed as before)
    min_priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    #: EPP replicas serving at once that share the external endpoints' limits: each holds 1/replicas of
    #: every limit (rounded down), so together they never pass it (budgets are per replica; ``--workers``
    #: of one replica share its budget exactly); a limit above 0 that leaves each replica 0 is rejected.
    #: With leader election only the leader serves: leave 1.
    replicas: int = Field(default=1, ge=1, le=1000)


def check_external(endpoints: tuple[ExternalEndpointConfig, ...], replicas: int = 1) -> None:
    """Names and addresses unique, at most :data:`MAX_EXTERNAL_ENDPOINTS`, and no limit that
    ``spillover.replicas`` splits to nothing per replica; ValueError otherwise."""
    if len(endpoints) > MAX_EXTERNAL_ENDPOINTS:
        raise ValueError(f"at most {MAX_EXTERNAL_ENDPOINTS} external endpoints, got {len(endpoints)}")
    for what, values in (
        ("name", [e.name for e in endpoints]),
        ("address", [e.address for e in endpoints]),
    ):
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"externalEndpoints: duplicate {what}(s) {', '.join(duplicates)}")
    for e in endpoints:
        _check_share(e, replicas)


def _check_share(e: ExternalEndpointConfig, replicas: int) -> None:
    """A limit above 0 that ``replicas`` splits to 0 per replica would refuse every request on every
    replica though the endpoint has room: rejected with what to change (a limit of 0 says "nothing", and
    is kept)."""
    if e.limits is None or replicas == 1:
        return
    for field, value in e.limits.model_dump(by_alias=True).items():
        if value is None:
            continue
        units = value * 1e9 if field.startswith("cost") else value  # costs are split in nano-units
        if 0 < units < replicas:
            raise ValueError(
                f"externalEndpoints {e.name}: limits.{field} {value} split over spillover.replicas "
                f"{replicas} leaves each replica 0, so the endpoint would take no request: raise the "
                "limit or lower spillover.replicas"
            )
