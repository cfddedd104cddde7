"""When landed scrapes reach the simulated picks (benchmarks.sim.publish): publish interval, scrape rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.sim.capacity_sweep import merge_run
from benchmarks.sim.fleet import FleetConfig, simulate
from benchmarks.sim.policies import LeastInFlight
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.publish import Landings, publish_config
from benchmarks.sim.server import Snapshot
from benchmarks.sim.traces import Workload
from picker.config import load_config_file
from picker.config.header_only import header_only_default_specs
from picker.settings import Settings
from picker.wiring import snapshot_interval
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest


def page(waiting: int) -> Snapshot:
    return Snapshot(waiting=waiting, running=0, kv_usage=0.0, lora_running=(), lora_waiting=())


class Shown:
    """Collects what :meth:`Landings.due` publishes."""

    def __init__(self) -> None:
        self.pages: list[tuple[int, int, float]] = []

    def __call__(self, i: int, snap: Snapshot, at: float) -> None:
        self.pages.append((i, snap.waiting, at))


def test_a_landed_page_waits_for_the_interval_and_the_newest_of_a_server_wins() -> None:
    dispatched = np.zeros(2)
    landings = Landings(dispatched, interval_s=0.02)
    shown = Shown()
    landings.begin(0, page(1))
    landings.land(0, 0.001)
    assert landings.due(0.001, shown)  # the first publish waits for nobody
    assert shown.pages == [(0, 1, 0.001)]
    landings.begin(0, page(2))
    landings.land(0, 0.005)
    landings.begin(0, page(3))
    landings.land(0, 0.015)
    assert not landings.due(0.020, shown), "19 ms after the last publish"
    assert landings.due(0.021, shown)
    assert shown.pages[1:] == [(0, 3, 0.015)]
    assert not landings.due(0.5, shown), "nothing landed since"


def test_dispatched_drops_by_what_the_published_scrape_saw_however_polls_overlap() -> None:
    # the service's ledger: dispatched = sent - (sent when the published scrape began)
    dispatched = np.zeros(1)
    landings = Landings(dispatched, interval_s=0.1)
    shown = Shown()
    dispatched[0] += 3  # 3 sent
    landings.begin(0, page(0))  # mark 3
    dispatched[0] += 2  # 5 sent
    landings.land(0, 0.01)
    assert landings.due(0.01, shown)
    assert dispatched[0] == 2.0
    landings.begin(0, page(0))  # mark 5
    dispatched[0] += 4  # 9 sent
    landings.land(0, 0.05)
    landings.begin(0, page(0))  # mark 9, before the previous page is published
    dispatched[0] += 1  # 10 sent
    assert not landings.due(0.06, shown)
    assert dispatched[0] == 7.0, "nothing subtracted before the gauges are shown"
    landings.land(0, 0.08)
    assert landings.due(0.12, shown)
    assert dispatched[0] == 1.0, "sent since the newest published scrape began, counted once"


def test_rounds_publish_once_no_poll_of_the_round_is_in_flight() -> None:
    dispatched = np.zeros(3)
    landings = Landings(dispatched, interval_s=10.0, rounds=True)
    shown = Shown()
    for i in range(3):
        landings.begin(i, page(i))
    landings.land(0, 0.002)
    landings.land(1, 0.002)
    assert not landings.due(0.003, shown)
    landings.land(2, 0.004)
    assert landings.due(0.004, shown), "the interval does not apply to rounds"
    assert sorted(i for i, _, _ in shown.pages) == [0, 1, 2]


def test_a_negative_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="publish interval"):
        Landings(np.zeros(1), interval_s=-0.01)


def test_the_default_interval_is_the_services() -> None:
    cfg = FleetConfig(LLAMA3_8B_H100)
    settings = Settings(static_endpoints="10.0.0.1:8000", refresh_metrics_interval=cfg.scrape_interval_s)
    assert cfg.publish_interval_s == snapshot_interval(settings)


def steady_workload(n: int, rate: float) -> Workload:
    rng = np.random.default_rng(5)
    return Workload(
        name="steady",
        arrival_s=np.cumsum(rng.exponential(1.0 / rate, n)),
        prompt_tokens=rng.integers(200, 1500, n),
        output_tokens=rng.integers(20, 200, n),
        units=tuple(() for _ in range(n)),
        unit_tokens=0,
        adapter=np.full(n, -1, dtype=np.int64),
    )


class Watch:
    """Records each new snapshot's pick time and scraped_at, and checks the accounting on every pick."""

    name = "watch"

    def __init__(self) -> None:
        self.inner = LeastInFlight()
        self.published: list[tuple[float, np.ndarray]] = []
        self.picks = 0
        self.ages: list[float] = []

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:
        self.picks += 1
        if not self.published or m.scraped_at is not self.published[-1][1]:
            self.published.append((now, m.scraped_at))
        assert (m.dispatched >= 0).all()
        assert m.dispatched.sum() <= self.picks
        self.ages.append(float((now - m.scraped_at).max()))
        return self.inner.pick(m, req, now, rng)


@pytest.mark.parametrize("publish", [0.0, 0.02, 0.05, 0.12])
def test_the_picks_see_pages_as_of_the_last_publish(publish: float) -> None:
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=4, scrape_interval_s=0.05, publish_interval_s=publish)
    watch = Watch()
    res = simulate(steady_workload(1200, 200.0), watch, cfg)
    assert not np.isnan(res.finish).any()
    times = np.array([t for t, _ in watch.published])
    assert len(times) > 40
    assert np.diff(times).min() >= publish - 1e-12, "no two publishes closer than the interval"
    assert max(watch.ages) <= cfg.scrape_interval_s + cfg.scrape_latency_s + publish + 1e-9
    if publish:
        assert max(watch.ages) > cfg.scrape_interval_s, "a page stays shown until a newer one is published"


def test_a_longer_interval_publishes_fewer_snapshots_with_older_pages() -> None:
    def run(publish: float) -> Watch:
        watch = Watch()
        cfg = FleetConfig(LLAMA3_8B_H100, n_servers=8, publish_interval_s=publish)
        simulate(steady_workload(1500, 300.0), watch, cfg)
        return watch

    fast, slow = run(0.0), run(0.05)
    assert len(slow.published) < len(fast.published) / 2
    assert np.mean(slow.ages) > np.mean(fast.ages)


def test_scrape_rounds_show_every_server_scraped_at_one_instant() -> None:
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=6, scrape_rounds=True, publish_interval_s=1.0)
    watch = Watch()
    simulate(steady_workload(800, 150.0), watch, cfg)
    rounds = [at for _, at in watch.published if np.isfinite(at).all()]
    assert len(rounds) > 20, "one publish per round, the interval ignored"
    assert all(np.ptp(at) == 0.0 for at in rounds), "a round is published whole"


def test_the_sweeps_publish_option() -> None:
    cfg = FleetConfig(LLAMA3_8B_H100)
    assert publish_config(cfg, None) is cfg
    assert publish_config(cfg, "0.05").publish_interval_s == 0.05
    assert publish_config(cfg, "rounds").scrape_rounds
    for bad in ("-0.01", "soon", "nan", "inf"):
        with pytest.raises(SystemExit, match="interval in seconds"):
            publish_config(cfg, bad)


def test_a_sweeps_merged_run_keeps_the_newer_runs_publish_rule() -> None:
    earlier = {"capacity": {"round-robin": {"capacity_rps": 10.0}}, "evaluations": {}, "wall_s": 1.0}
    rule = {"interval_s": 0.05, "scrape_rounds": False}
    newer = {"capacity": {"default": {"capacity_rps": 12.0}}, "wall_s": 2.0, "publish": rule}
    merged = merge_run(earlier, newer)
    assert merged["publish"] == rule
    assert set(merged["capacity"]) == {"round-robin", "default"}


def test_header_only_modes_profile_in_the_simulator_is_the_services() -> None:
    # benchmarks/sim/configs/header-only.yaml: the profile the publish-interval sweep measured for this mode
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "sim" / "configs" / "header-only.yaml"
    doc = load_config_file(path).endpoint_picker
    plugins, profiles = header_only_default_specs()
    service = [(p.type, dict(p.parameters)) for p in plugins]
    assert [(p.type, dict(p.parameters)) for p in doc.plugins] == service
    ours = [(r.plugin_ref, r.weight) for r in doc.scheduling_profiles[0].plugins]
    assert ours == [(ref, w) for ref, w in profiles[0].plugins]
