"""What serving a token costs on each endpoint: the ``price_in`` / ``price_out`` columns of the snapshot.

Per endpoint and per direction (input, output), the first that applies (``picker/config/costs.py``):

1. the pod's own price: annotation, else label, ``picker.dev/price-input-per-1m`` /
   ``picker.dev/price-output-per-1m`` (a finite number >= 0; anything else is ignored, and
   ``/debug/endpoints`` says so);
2. the ``endpointPrices.engines`` entry of the endpoint's engine (its label, or the detected engine);
3. ``endpointPrices.default``;
4. unknown (NaN): ``cost-scorer`` gives it the mean of the known prices among the candidates.

Currency units per million tokens. Recomputed when the config changes and when an endpoint joins, changes
its labels or annotations, or has its engine detected; never on the request path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from picker.config.costs import PRICE_INPUT_KEY, PRICE_OUTPUT_KEY, EndpointPricesConfig
from picker.state.endpoints import Endpoint

__all__ = ["NO_PRICES", "PriceBook", "Priced"]

_NAN = math.nan
_KEYS: Final = (PRICE_INPUT_KEY, PRICE_OUTPUT_KEY)


@dataclass(frozen=True, slots=True)
class Priced:
    """An endpoint's prices and where each came from: ``pod``, ``engine``, ``default`` or ``none``, with
    `` (invalid pod value)`` added when the pod's own value could not be used."""

    input: float
    output: float
    sources: tuple[str, str]


def _own(endpoint: Endpoint, key: str) -> tuple[float, str] | None:
    """The pod's own price for ``key`` (annotation first); ``(nan, "invalid")`` if unusable, None if none."""
    raw = endpoint.annotations.get(key)
    if raw is None:
        raw = endpoint.labels.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return _NAN, "invalid"
    if not math.isfinite(value) or value < 0:
        return _NAN, "invalid"
    return value, "pod"


@dataclass(frozen=True, slots=True)
class PriceBook:
    """The ``endpointPrices`` section compiled: the pool's default and per-engine prices."""

    default: tuple[float, float] | None = None
    engines: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    currency: str = "USD"

    @classmethod
    def from_config(cls, cfg: EndpointPricesConfig | None) -> PriceBook:
        if cfg is None:
            return NO_PRICES
        default = cfg.default
        return cls(
            default=None if default is None else (default.input_per1_m, default.output_per1_m),
            engines=MappingProxyType({e.engine: (e.input_per1_m, e.output_per1_m) for e in cfg.engines}),
            currency=cfg.currency,
        )

    def price(self, endpoint: Endpoint, engine: str | None) -> Priced:
        """The endpoint's prices (its engine: the label or the detected one; None = unknown)."""
        engine_price = self.engines.get(engine) if engine else None
        values: list[float] = []
        sources: list[str] = []
        for k, key in enumerate(_KEYS):
            own = _own(endpoint, key)
            if own is not None and own[1] == "pod":
                values.append(own[0])
                sources.append("pod")
                continue
            if engine_price is not None:
                values.append(engine_price[k])
                source = "engine"
            elif self.default is not None:
                values.append(self.default[k])
                source = "default"
            else:
                values.append(_NAN)
                source = "none"
            sources.append(source if own is None else f"{source} (invalid pod value)")
        return Priced(values[0], values[1], (sources[0], sources[1]))


NO_PRICES: Final = PriceBook()
