"""Candidate masks from endpoint lists: the proxy's subset hint and the conformance test header.

Two matching rules exist in the reference and both are needed:

* the subset hint (``envoy.lb.subset_hint``) matches on the **IP only**, ignoring any port, so every rank
  of a listed pod is eligible (``match_port=False``);
* the conformance header ``test-epp-endpoint-selection`` (and the lightweight EPP) matches ``ip:port``
  entries exactly and a bare ``ip`` against every port of that pod (``match_port=True``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from scoring.matrix import BoolArray, EndpointMatrix


def parse_entry(entry: str) -> tuple[str, str]:
    """``"10.0.0.1"`` → ``("10.0.0.1", "")``, ``"10.0.0.1:8000"`` → ``(…, "8000")``, ``"[fd00::1]:8000"``
    → ``("fd00::1", "8000")``; a bare IPv6 address (several colons, no brackets) has no port."""
    text = entry.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def subset_mask(m: EndpointMatrix, entries: Iterable[object], *, match_port: bool = False) -> BoolArray:
    """Mask over ``m`` of the endpoints named by ``entries`` (non-string entries are ignored).

    An empty list, or one that matches nothing, gives an all-False mask; the caller decides what that
    means (the reference answers 503 for the subset hint, the conformance filter removes everything).
    """
    mask = np.zeros(len(m), dtype=np.bool_)
    for entry in entries:
        if not isinstance(entry, str):
            continue
        host, port = parse_entry(entry)
        if match_port and port:
            bracketed = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            row = m.index_of_address(bracketed)
            if row is None and bracketed != f"{host}:{port}":
                row = m.index_of_address(f"{host}:{port}")
            if row is not None:
                mask[row] = True
        else:
            rows = m.rows_of_ip(host)
            if rows:
                mask[list(rows)] = True
    return mask
