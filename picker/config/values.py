"""Value parsers shared by both documents: Kubernetes quantities and reference metric specs."""

from __future__ import annotations

import math
import re

from picker.metricspec import parse_spec

_QUANTITY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\s*")
_QUANTITY_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: object) -> int:
    """Bytes from an integer or a Kubernetes quantity (``16Mi``, ``10Gi``, ``500k``, ``1e6``); rounds up.

    Raises ``ValueError`` for anything else (pydantic validators turn only ValueError into field errors).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")  # noqa: TRY004 - see docstring
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"quantity must not be negative, got {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid quantity {value!r}")
        return math.ceil(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid quantity {value!r}")  # noqa: TRY004 - see docstring
    m = _QUANTITY.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid quantity {value!r} (use e.g. 16Mi, 10Gi, 500k or a number of bytes)")
    try:
        number = float(m.group(1)) * 10.0 ** int(m.group(2) or 0) * _QUANTITY_FACTORS[m.group(3)]
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"quantity {value!r} is too large")
    return math.ceil(number)


def check_metric_spec(text: str) -> str:
    """Validate a reference metric spec (``name{label=value,...}``; empty = disabled) and return it.

    The same parser the scraper uses (:mod:`picker.metricspec`), so a spec that loads here can never fail
    later in the scraper. Only ``=`` matchers are accepted: the reference silently drops the others, which
    widens the selection without telling anyone, so here they are an error.
    """
    parse_spec(text)
    return text
