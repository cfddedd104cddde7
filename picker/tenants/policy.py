"""The ``tenants`` configuration compiled into what the request path reads: limits by tenant, prices by model.

Built once per applied config document (:meth:`TenantsPolicy.from_config`), immutable, looked up with one
or two dict reads per request. Costs are integers in nano-units (1e-9 of the currency), see
:mod:`picker.tenants.ledger`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType

from picker.config.tenants import LimitsConfig, PriceConfig, TenantsConfig
from picker.tenants.ledger import Limits

__all__ = ["NANO", "Price", "TenantsPolicy", "compile_limits", "nano"]

#: nano-units per currency unit
NANO = 1_000_000_000
_NO_LIMITS: Limits = (None, None, None, None, None, None)


def nano(units: float) -> int:
    """Currency units as integer nano-units, rounded half up (0.1 → 100,000,000 exactly)."""
    return int((Decimal(repr(units)) * NANO).to_integral_value(ROUND_HALF_UP))


def compile_limits(cfg: LimitsConfig) -> Limits:
    """A limits section as the six-meter tuple of :mod:`picker.tenants.ledger` (costs in nano-units)."""
    return (
        cfg.tokens_per_minute,
        cfg.tokens_per_hour,
        cfg.requests_per_minute,
        cfg.concurrent,
        None if cfg.cost_per_day is None else nano(cfg.cost_per_day),
        None if cfg.cost_per_month is None else nano(cfg.cost_per_month),
    )


@dataclass(frozen=True, slots=True)
class Price:
    """Nano-units per million tokens, so that a request's cost is an exact integer division."""

    input: int
    output: int
    cached_input: int

    @classmethod
    def from_config(cls, cfg: PriceConfig) -> Price:
        cached = cfg.input_per1_m if cfg.cached_input_per1_m is None else cfg.cached_input_per1_m
        return cls(nano(cfg.input_per1_m), nano(cfg.output_per1_m), nano(cached))

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
        """Nano-units for these counts, rounded half up once per request."""
        cached = min(max(cached_tokens, 0), input_tokens)
        total = (
            (input_tokens - cached) * self.input + cached * self.cached_input + output_tokens * self.output
        )
        return (total + 500_000) // 1_000_000


_FREE = Price(0, 0, 0)


@dataclass(frozen=True, slots=True)
class TenantsPolicy:
    """Everything the request path needs from the ``tenants`` section."""

    header: str
    tier_header: str | None
    anonymous: str
    max_tenants: int
    max_id_length: int
    default_output_tokens: int
    response_headers: bool
    currency: str
    #: listed tenants' limits (tier merged with their own)
    by_tenant: Mapping[str, Limits]
    by_tier: Mapping[str, Limits]
    #: limits of ids that are neither listed nor name a tier (None = metered only)
    default: Limits | None
    prices: Mapping[str, Price] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: TenantsConfig) -> TenantsPolicy:
        tiers = {t.name: t.limits for t in cfg.tiers}
        by_tenant: dict[str, Limits] = {}
        for t in cfg.tenants:
            base = tiers[t.tier] if t.tier is not None else LimitsConfig()
            by_tenant[t.id] = compile_limits(base.merged(t.limits))
        return cls(
            header=cfg.header,
            tier_header=cfg.tier_header,
            anonymous=cfg.anonymous,
            max_tenants=cfg.max_tenants,
            max_id_length=cfg.max_id_length,
            default_output_tokens=cfg.default_output_tokens,
            response_headers=cfg.response_headers,
            currency=cfg.currency,
            by_tenant=MappingProxyType(by_tenant),
            by_tier=MappingProxyType({name: compile_limits(limits) for name, limits in tiers.items()}),
            default=None if cfg.default_tier is None else compile_limits(tiers[cfg.default_tier]),
            prices=MappingProxyType({p.model: Price.from_config(p) for p in cfg.prices}),
        )

    def limits(self, tenant: str, tier: str | None = None) -> Limits | None:
        """The limits of a tenant: listed → its own; else the tier its request names (when a tier header is
        configured and the tier exists); else the default tier; None = no limits (metered only)."""
        limits = self.by_tenant.get(tenant)
        if limits is not None:
            return limits
        if tier is not None:
            limits = self.by_tier.get(tier)
            if limits is not None:
                return limits
        return self.default

    def price(self, model: str) -> Price:
        """The price of a model; a model without one costs nothing."""
        return self.prices.get(model, _FREE)

    @property
    def listed(self) -> frozenset[str]:
        return frozenset(self.by_tenant)


def unlimited(limits: Limits | None) -> bool:
    """No limit on any meter."""
    return limits is None or limits == _NO_LIMITS
