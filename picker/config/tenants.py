"""The ``tenants`` section of our ``PickerConfig`` document: identity, limits, prices, estimation, backend.

Absent section = no tenants: nothing is metered or limited and the request path is unchanged. Present::

    tenants:
      header: x-tenant-id                # then x-gateway-inference-fairness-id, then `anonymous`
      tierHeader: x-tenant-tier          # optional: the tier named by a header set by the gateway
      maxTenants: 1000                   # distinct ids tracked (and exported); more → `other`
      defaultOutputTokens: 1024          # output reserved when a request sets no max_tokens
      defaultTier: free                  # for ids not listed below (unset = metered, not limited)
      tiers:
      - {name: free, limits: {tokensPerHour: 500000, costPerDay: 100}}
      tenants:
      - {id: acme, tier: pro}
      - {id: nightly-batch, limits: {tokensPerMinute: 20000, concurrent: 4}}
      prices:                            # currency units per million tokens
      - {model: meta-llama/Llama-3.1-8B-Instruct, inputPer1M: 0.10, outputPer1M: 0.40}
      estimation:
        charsPerToken: 4.0               # starting point; learned per model from responses' usage
        tokenizers: [{model: meta-llama/Llama-3.1-8B-Instruct, path: /tokenizers/llama3/tokenizer.json}]
      backend: {type: memory}            # or {type: redis, redis: {url: redis://redis:6379/0}}

Identity headers are trusted as sent: the gateway must set them from the authenticated caller (and drop
any the client sent), or any client can spend another's budget.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from picker.config.base import StrictModel as _Model
from scoring.durations import parse_duration

__all__ = [
    "BackendConfig",
    "EstimationConfig",
    "LeaseConfig",
    "LimitsConfig",
    "PriceConfig",
    "RedisConfig",
    "TenantConfig",
    "TenantsConfig",
    "TierConfig",
    "TokenizerConfig",
]


#: what a tenant id may contain: it becomes a metric label value, a log field and a Redis key part
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]*")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
#: Range of every count and amount: the ledger keeps costs in nano-units in 64-bit integers (9.2e18), so
#: limits and prices must leave room for a window's sums; beyond these no budget means anything.
MAX_TOKENS = 10**15
MAX_REQUESTS = 10**9
MAX_COST = 1e9
#: price per million tokens
MAX_PRICE = 1e6


class LimitsConfig(_Model):
    """Limits of one tenant or tier; unset = no limit on that meter. Windows are UTC and fixed: a minute,
    an hour, a day start on the boundary (the ``x-ratelimit-reset-*`` headers say when)."""

    #: input + output tokens per UTC minute
    tokens_per_minute: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    #: input + output tokens per UTC hour (the seed's example: 500000)
    tokens_per_hour: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    #: requests per UTC minute
    requests_per_minute: int | None = Field(default=None, ge=0, le=MAX_REQUESTS)
    #: requests open at once
    concurrent: int | None = Field(default=None, ge=0, le=MAX_REQUESTS)
    #: cost per UTC day, currency units (the seed's example: 100)
    cost_per_day: float | None = Field(default=None, ge=0, le=MAX_COST, allow_inf_nan=False)
    #: cost per UTC calendar month, currency units
    cost_per_month: float | None = Field(default=None, ge=0, le=MAX_COST, allow_inf_nan=False)

    def merged(self, override: LimitsConfig | None) -> LimitsConfig:
        """These limits with every field ``override`` sets replacing ours."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True, exclude_none=True))


class TierConfig(_Model):
    name: str = Field(min_length=1, max_length=64)
    limits: LimitsConfig = LimitsConfig()


class TenantConfig(_Model):
    """A tenant listed by id: its tier, and limits that override the tier's field by field."""

    id: str = Field(min_length=1)
    tier: str | None = None
    limits: LimitsConfig | None = None


class PriceConfig(_Model):
    """The price of one model (the body's ``model``, or the rewritten target), per million tokens."""

    model: str = Field(min_length=1)
    input_per1_m: float = Field(ge=0, le=MAX_PRICE, allow_inf_nan=False, alias="inputPer1M")
    output_per1_m: float = Field(ge=0, le=MAX_PRICE, allow_inf_nan=False, alias="outputPer1M")
    #: cached prompt tokens (``prompt_tokens_details.cached_tokens``); unset = the input price
    cached_input_per1_m: float | None = Field(
        default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False, alias="cachedInputPer1M"
    )


class TokenizerConfig(_Model):
    """A Hugging Face ``tokenizer.json`` for one model, read from a local path (never downloaded)."""

    model: str = Field(min_length=1)
    path: str = Field(min_length=1)


class EstimationConfig(_Model):
    """How input tokens are estimated at admission (before the response's usage is known)."""

    #: characters per token to start from; each model's ratio is then learned from responses' usage
    chars_per_token: float = Field(default=4.0, gt=0.5, le=32, allow_inf_nan=False)
    #: per-model starting ratios
    models: dict[str, float] = Field(default_factory=dict)
    #: exact counts with a real tokenizer (the ``tokenizers`` package) for these models
    tokenizers: tuple[TokenizerConfig, ...] = ()
    #: learn each model's characters-per-token from the usage responses report
    learn: bool = True

    @field_validator("models")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        for model, ratio in v.items():
            if not 0.5 < ratio <= 32:
                raise ValueError(f"charsPerToken of {model!r} must be in (0.5, 32], got {ratio}")
        return v


def _seconds(v: object, low: float, high: float) -> float:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"must be a duration such as 1s, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
    seconds = parse_duration(v)
    if not low <= seconds <= high:
        raise ValueError(f"must be between {low:g}s and {high:g}s")
    return seconds


class LeaseConfig(_Model):
    """Admission without a Redis round trip: each replica leases a share of each active tenant's budget
    from Redis and admits against it locally (``picker/tenants/README.md``, "Leases")."""

    #: share of each limit a lease asks for at a time (capped near the limit at the room left / the
    #: replicas holding leases, and at least one request); 0 = no leases, every admission asks Redis
    fraction: float = Field(default=0.05, ge=0, le=0.5)
    #: a lease its replica has not renewed for this long is given back by Redis (a dead replica's share
    #: comes back after it); renewed every quarter of it, used locally for at most half of it unrenewed
    ttl: float = 30.0
    #: settled usage is reported to Redis (and the lease refilled) at least this often
    report: float = 1.0
    #: a lease unused for this long is given back
    idle: float = 10.0

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: object) -> float:
        return _seconds(v, 2, 3600)

    @field_validator("report", mode="before")
    @classmethod
    def _report(cls, v: object) -> float:
        return _seconds(v, 0.01, 60)

    @field_validator("idle", mode="before")
    @classmethod
    def _idle(cls, v: object) -> float:
        return _seconds(v, 0.1, 3600)

    @model_validator(mode="after")
    def _order(self) -> LeaseConfig:
        if self.report * 4 > self.ttl:
            raise ValueError("report must be at most a quarter of ttl (leases are renewed in time)")
        return self

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


class RedisConfig(_Model):
    """A Redis server shared by every EPP replica (budgets across replicas)."""

    #: ``redis://host:port/db`` or ``rediss://`` for TLS; no password here (see ``passwordFile``)
    url: str = Field(min_length=1)
    #: a file holding the password (a mounted Secret); unset = no AUTH
    password_file: str | None = None
    #: prefix of every key this EPP writes
    key_prefix: str = Field(default="picker:tenants:", min_length=1, max_length=64)
    #: one command's timeout: a slower answer counts as Redis being down
    timeout: float = 0.05
    #: Redis down: ``open`` admits (metered locally, limits not enforced) or ``closed`` refuses with 503
    fail_mode: Literal["open", "closed"] = "open"
    #: per-replica leases of each tenant's budget (``fraction: 0`` turns them off)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError(f"must be a duration such as 50ms, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
        seconds = parse_duration(v)
        if not 0 < seconds <= 10:
            raise ValueError("must be > 0 and at most 10s")
        return seconds

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if "@" in v.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("must not carry credentials; use passwordFile")
        return v


class BackendConfig(_Model):
    #: ``memory``: this process (shared by ``--workers`` through the supervisor); ``redis``: every replica
    type: Literal["memory", "redis"] = "memory"
    redis: RedisConfig | None = None

    @model_validator(mode="after")
    def _redis(self) -> BackendConfig:
        if self.type == "redis" and self.redis is None:
            raise ValueError("type redis needs a redis section")
        return self


class TenantsConfig(_Model):
    """Tenant metering, limits and budgets (see the module docstring)."""

    #: the header naming the tenant (lowercase); then ``x-gateway-inference-fairness-id``, then ``anonymous``
    header: str = "x-tenant-id"
    #: optional header naming the tier of a tenant not listed in ``tenants``
    tier_header: str | None = None
    #: the id of requests that name none
    anonymous: str = "anonymous"
    #: distinct tenant ids tracked at once (listed ones come on top); more go to the shared ``other`` id
    max_tenants: int = Field(default=1000, ge=1, le=100_000)
    #: longer ids are not trusted and count as ``other``
    max_id_length: int = Field(default=64, ge=8, le=256)
    #: output tokens reserved for a request without ``max_tokens``/``max_completion_tokens``
    default_output_tokens: int = Field(default=1024, ge=0, le=10_000_000)
    #: the tier of ids that are not listed and name no tier; unset = metered only
    default_tier: str | None = None
    tiers: tuple[TierConfig, ...] = ()
    tenants: tuple[TenantConfig, ...] = ()
    prices: tuple[PriceConfig, ...] = ()
    #: currency of prices and cost limits (display only)
    currency: str = Field(default="USD", min_length=1, max_length=8)
    estimation: EstimationConfig = EstimationConfig()
    backend: BackendConfig = BackendConfig()
    #: add ``x-ratelimit-*`` remaining-budget headers to successful responses of limited tenants
    response_headers: bool = True

    @field_validator("header", "tier_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is not None and not _HEADER_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a lowercase HTTP header name")
        return v

    @field_validator("anonymous")
    @classmethod
    def _anonymous(cls, v: str) -> str:
        if not TENANT_ID_PATTERN.fullmatch(v) or len(v) > 64:
            raise ValueError(f"{v!r} is not a valid tenant id")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TenantsConfig:
        tiers = [t.name for t in self.tiers]
        ids = [t.id for t in self.tenants]
        models = [p.model for p in self.prices]
        for what, names in (("tiers", tiers), ("tenants", ids), ("prices", models)):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{what}: duplicate {', '.join(duplicates)}")
        known = set(tiers)
        for t in self.tenants:
            if not TENANT_ID_PATTERN.fullmatch(t.id) or len(t.id) > self.max_id_length:
                raise ValueError(
                    f"tenants: id {t.id!r} must match {TENANT_ID_PATTERN.pattern} and be at most "
                    f"{self.max_id_length} characters"
                )
            if t.tier is not None and t.tier not in known:
                raise ValueError(f"tenants: {t.id!r} names tier {t.tier!r}, which is not in tiers")
        if self.default_tier is not None and self.default_tier not in known:
            raise ValueError(f"defaultTier {self.default_tier!r} is not in tiers")
        tokenizer_models = [t.model for t in self.estimation.tokenizers]
        duplicates = sorted({n for n in tokenizer_models if tokenizer_models.count(n) > 1})
        if duplicates:
            raise ValueError(f"estimation.tokenizers: duplicate {', '.join(duplicates)}")
        return self
