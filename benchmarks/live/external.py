"""bench_failover's external-endpoint fault: the ``PickerConfig`` that declares the external endpoint, the
poller of the EPP's ``/debug/external`` (peak usage per window), the summary and its report lines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

__all__ = ["external_document", "external_markdown", "external_summary", "poll_external"]


def external_document(
    address: str, *, price: tuple[float, float], pool_price: tuple[float, float], rpm: int, tpm: int
) -> str:
    """The second config document: the pool's price and one external endpoint with its limits."""
    (ext_in, ext_out), (pool_in, pool_out) = price, pool_price
    return (
        "---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        f"endpointPrices: {{default: {{inputPer1M: {pool_in}, outputPer1M: {pool_out}}}}}\n"
        "externalEndpoints:\n"
        f"- {{name: managed, address: '{address}', price: {{inputPer1M: {ext_in}, outputPer1M: {ext_out}}}, "
        f"limits: {{requestsPerMinute: {rpm}, tokensPerMinute: {tpm}}}}}\n"
    )


async def poll_external(session: Any, admin: str, peaks: dict[str, int]) -> None:
    """Every second: the highest used + reserved requests and tokens per minute the EPP accounted."""
    while True:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with session.get(admin + "/debug/external") as resp:
                rows = (await resp.json())["external"]
            for row in rows:
                for meter in ("requestsPerMinute", "tokensPerMinute"):
                    total = int(row["used"][meter]) + int(row["reserved"][meter])
                    peaks[meter] = max(peaks.get(meter, 0), total)
                hour = int(row["used"]["tokensPerHour"])
                peaks["tokensPerHour"] = max(peaks.get("tokensPerHour", 0), hour)
        await asyncio.sleep(1.0)


def external_summary(
    records: Sequence[Any],
    external: str,
    *,
    window: Sequence[float],
    peaks: dict[str, int],
    final: dict[str, Any],
    prices: tuple[tuple[float, float], tuple[float, float]],
    limits: tuple[int, int],
) -> dict[str, Any]:
    """The external endpoint's share of first attempts per window, its requests, cost and peaks."""
    start, end = window

    def share(rs: Sequence[Any]) -> float | None:
        picked = [r for r in rs if r.attempts]
        return sum(r.attempts[0] == external for r in picked) / len(picked) if picked else None

    sent = [r for r in records if r.attempts and r.attempts[0] == external]
    served = [r for r in sent if r.ok and r.endpoint == external]
    # the EPP's accounting: tokens and cost per meter; every request here fits one window of a day
    used = final["used"]
    # the hour meter holds the run's tokens unless the run crossed an hour boundary (then the poller's
    # highest reading of it is the larger)
    tokens = max(int(used["tokensPerHour"]), peaks.get("tokensPerHour", 0))
    cost = int(used["costPerDay"]) / 1e9
    (ext_in, ext_out), (pool_in, pool_out) = prices
    return {
        "share": {
            "before": share([r for r in records if r.sent_s < start]),
            "during": share([r for r in records if start <= r.sent_s < end]),
            "after": share([r for r in records if r.sent_s >= end]),
        },
        "sent": len(sent),
        "served": len(served),
        "dispatched_by_epp": final["dispatched"],
        "tokens_accounted": tokens,
        "cost": cost,
        # the same tokens at the pool's price (the ratio of the two prices, as the mix is the same)
        "cost_at_pool_price": cost * (pool_in + pool_out) / (ext_in + ext_out),
        "peak_per_minute": {k: v for k, v in peaks.items() if k.endswith("PerMinute")},
        "limits": {"requestsPerMinute": limits[0], "tokensPerMinute": limits[1]},
    }


def external_markdown(name: str, row: dict[str, Any]) -> list[str]:
    """The external endpoint's table of a fault's report."""
    x = row["external"]
    share = "/".join("—" if x["share"][w] is None else f"{x['share'][w]:.1%}" for w in x["share"])
    peak = x["peak_per_minute"]
    return [
        "",
        (
            f"{name}: the external endpoint (limits {x['limits']['requestsPerMinute']} requests and "
            f"{x['limits']['tokensPerMinute']} tokens per minute)"
        ),
        "",
        (
            "| share sent to it before/during/after | requests sent / served | tokens accounted | cost | "
            "same tokens at the pool's price | peak requests / tokens per minute | targets |"
        ),
        "|---|---|---|---|---|---|---|",
        f"| {share} | {x['sent']} / {x['served']} | {x['tokens_accounted']} | {x['cost']:.4f} | "
        f"{x['cost_at_pool_price']:.4f} | {peak.get('requestsPerMinute', 0)} / "
        f"{peak.get('tokensPerMinute', 0)} | "
        + ", ".join(f"{k}: {v}" for k, v in row["targets"].items())
        + " |",
    ]
