"""Calibration error: the fast model against the discrete-event simulator on sampled replay windows.

Windows are taken from the replay itself, where the model's assumptions are most at risk: the steepest rate
jump, replicas joining after a warm-up, a drain, a plain (killing) scale-down, the worst overload, and
quiet stretches. Each window is replayed twice from an empty fleet state ``lead_s`` seconds before it: by
the simulator (Poisson arrivals at the tick rates, the replicas that served then, drops where a replica
was deleted with requests running) and by the model (the same ticks and replica counts). Compared: the
share of the window's arrivals meeting the SLO, and dropped requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.scaling.calibration import AttainmentTable, Slot, poisson_workload, run_window
from benchmarks.scaling.model import Fleet, QueueModel
from benchmarks.sim.metrics import Slo
from benchmarks.sim.profiles import ServerProfile
from benchmarks.sim.traces import Workload

PRIORITY = (
    ("ours", "rate-jump"),
    ("reactive", "kill"),
    ("ours", "drain"),
    ("reactive", "rate-jump"),
    ("ours", "replica-joins"),
    ("ours", "worst-tick"),
    ("reactive", "replica-joins"),
    ("reactive", "worst-tick"),
)


@dataclass(frozen=True, slots=True)
class Window:
    policy: str
    kind: str
    start: float
    end: float


def pick_windows(fleets: dict[str, Fleet], dt: float, length_s: float, count: int, seed: int) -> list[Window]:
    """Up to ``count`` windows: one per event kind that occurred, then random ones (deterministic)."""
    out: list[Window] = []
    half = length_s / 2

    def add(policy: str, kind: str, center: float) -> None:
        start = round((center - half) / dt) * dt
        if all(abs(w.start - start) >= length_s for w in out):
            out.append(Window(policy, kind, start, start + length_s))

    found: dict[tuple[str, str], float] = {}
    for name in ("ours", "reactive"):
        fleet = fleets.get(name)
        if fleet is None or len(fleet.log) < 3:
            continue
        log = np.asarray([(t, lam, alive, n, a) for t, lam, alive, n, a in fleet.log])
        t, lam, n = log[:, 0], log[:, 1], log[:, 3]
        found[(name, "rate-jump")] = float(t[int(np.argmax(np.diff(lam / np.maximum(n, 1)))) + 1])
        found[(name, "worst-tick")] = float(t[int(np.argmin(log[:, 4]))])
        joined = [p.ready_at for p in fleet.pods if p.ready_at > t[0] + 600]
        if joined:
            found[(name, "replica-joins")] = float(joined[len(joined) // 2])
        drained = [p.serve_until for p in fleet.pods if not p.killed and p.serve_until < p.gone_at < np.inf]
        if drained:
            found[(name, "drain")] = float(drained[len(drained) // 2])
        killed = [p.gone_at for p in fleet.pods if p.killed]
        if killed:
            found[(name, "kill")] = float(killed[len(killed) // 2])
    # the riskiest situations first, so that a small count still covers them
    for key in PRIORITY:
        if key in found:
            add(*key, found[key])
    rng = np.random.default_rng([seed, 11])
    ours = fleets.get("ours") or next(iter(fleets.values()))
    ts = np.asarray([row[0] for row in ours.log])
    tries = 0
    while len(out) < count and tries < 100 and len(ts) > 100:
        tries += 1
        add("ours", "random", float(ts[rng.integers(50, len(ts) - 50)]))
    return out[:count]


def _model_window(
    fleet: Fleet, table: AttainmentTable, slo: Slo, w: Window, *, lead_s: float, dt: float
) -> tuple[float, float]:
    """(attainment, dropped) of the model over the window's arrivals, starting empty ``lead_s`` before."""
    model = QueueModel(table, slo.ttft_s)
    arrivals = met = 0.0
    for t, lam, _alive, n, _a in fleet.log:
        if t < w.start - lead_s or t >= w.end:
            continue
        out = model.step(lam, int(n), dt)
        if t >= w.start:
            arrivals += out.arrivals
            met += out.met
    dropped = 0.0
    by_t = {row[0]: row for row in fleet.log}
    for p in fleet.pods:
        if p.killed and w.start <= p.gone_at < w.end:
            row = by_t.get(round(p.gone_at / dt) * dt) or by_t.get(p.gone_at)
            if row is not None and row[3] > 0:
                mean, _ = table.e2e(row[3], min(row[1] / (row[3] * table.mu), 1.0))
                dropped += row[1] / row[3] * mean
    return (met / arrivals if arrivals else 1.0), dropped


def _slots(fleet: Fleet, start: float, end: float) -> list[Slot]:
    slots = []
    for p in fleet.pods:
        s = p.slot()
        if s.serve_from < end and (s.serve_until > start or (s.kill_at is not None and s.kill_at > start)):
            kill = None if s.kill_at is None else s.kill_at - start
            slots.append(Slot(s.serve_from - start, s.serve_until - start, kill))
    return slots or [Slot(float("inf"), float("inf"))]


def compare(
    windows: Sequence[Window],
    fleets: dict[str, Fleet],
    *,
    rate_at: Any,
    lengths: Workload,
    table: AttainmentTable,
    profile: ServerProfile,
    slo: Slo,
    lead_s: float,
    dt: float,
    seed: int,
    progress: Any = None,
) -> dict[str, Any]:
    rows = []
    rng = np.random.default_rng([seed, 13])
    for w in windows:
        fleet = fleets[w.policy]
        begin = w.start - lead_s
        wl = poisson_workload(lengths, rate_at, begin, w.end, tick_s=dt, rng=rng)
        des = run_window(wl, _slots(fleet, begin, w.end), profile, slo, seed)
        inside = des.arrival >= lead_s
        des_att = float(des.met[inside].mean()) if inside.any() else 1.0
        model_att, model_drop = _model_window(fleet, table, slo, w, lead_s=lead_s, dt=dt)
        rows.append(
            {
                "policy": w.policy,
                "kind": w.kind,
                "start_s": w.start,
                "requests": int(inside.sum()),
                "des_attainment": round(des_att, 5),
                "model_attainment": round(model_att, 5),
                "error_pp": round(100 * (model_att - des_att), 3),
                "des_dropped": int(des.dropped[inside].sum()),
                "model_dropped": round(model_drop, 1),
            }
        )
        if progress is not None:
            progress(f"window {w.policy}/{w.kind}: DES {des_att:.4f} model {model_att:.4f}")
    signed = np.asarray([r["error_pp"] for r in rows]) if rows else np.zeros(1)
    return {
        "windows": rows,
        "mean_abs_error_pp": round(float(np.abs(signed).mean()), 3),
        "max_abs_error_pp": round(float(np.abs(signed).max()), 3),
        # > 0: the model is optimistic (more requests meet the SLO than in the simulator)
        "mean_signed_error_pp": round(float(signed.mean()), 3),
    }
