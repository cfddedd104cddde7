"""The forecast's history read through ``prometheus-api-client`` from a real Prometheus (Debian's binary),
backfilled with two weeks of demand by ``promtool tsdb create-blocks-from openmetrics``: the forecast made
from what Prometheus returns equals the one made from the same series in memory. Once for a gauge of
requests per second, once for the default queries over our own counters (the request counter and the token
histograms' ``_sum``, as the EPP exports them), where ``rate()`` has to give back the token rate."""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from picker.config.scaling import DEFAULT_FORECAST_QUERY, DEFAULT_TOKEN_QUERY, ForecastConfig
from picker.scaler.forecast import WEEK_S, DemandHistory, forecast
from picker.scaler.history import HistoryUnavailableError, PrometheusHistory
from picker.testing.net import free_port
from picker.testing.tools import tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METRIC = "pool_demand_rps"
STEP = 300.0


def demand_series(end: float) -> tuple[np.ndarray, np.ndarray]:
    """Two weeks (and five hours) of a daily cycle, noise and growth; a sample per 5 minutes up to ``end``."""
    t = np.arange(end - 2 * WEEK_S - 5 * 3600, end + 1, STEP)
    rng = np.random.default_rng(7)
    day = 2 * math.pi * (t % 86400) / 86400
    growth = 1 + 0.1 * (t - t[0]) / WEEK_S
    v = (20 + 15 * np.sin(day) + rng.normal(0, 2, len(t))).clip(0.5) * growth
    return t, np.round(v, 3)


def token_rate(t: np.ndarray, rps: np.ndarray) -> np.ndarray:
    """Tokens per second for the request rate ``rps``: the mix drifts over the day (600 to 1,400 tokens per
    request), so the token forecast differs from a multiple of the request forecast."""
    return rps * (1000 + 400 * np.cos(2 * math.pi * (t % 86400) / 86400))


#: the counters as the EPP exports them, and the share of the token rate each carries (two models)
COUNTERS = (
    ('inference_objective_input_tokens_sum{model_name="a",target_model_name="a"}', 0.45),
    ('inference_objective_input_tokens_sum{model_name="b",target_model_name="b"}', 0.15),
    ('inference_objective_output_tokens_sum{model_name="a",target_model_name="a"}', 0.4),
)


def counter_lines(name: str, t: np.ndarray, rate: np.ndarray) -> list[str]:
    """A counter growing at ``rate[i]`` over ``(t[i-1], t[i]]``, sampled every minute (like a scrape)."""
    value = np.concatenate(([1e6], 1e6 + np.cumsum(rate[1:] * np.diff(t))))
    minutes = np.arange(t[0], t[-1] + 1, 60.0)
    sampled = np.interp(minutes, t, value)
    return [f"{name} {x!r} {stamp:.0f}" for stamp, x in zip(minutes, sampled.tolist(), strict=True)]


def backfill(promtool: str, workdir: Path, t: np.ndarray, v: np.ndarray) -> Path:
    text = [f"# HELP {METRIC} requests per second routed to the pool", f"# TYPE {METRIC} gauge"]
    text += [f"{METRIC} {value} {stamp:.0f}" for stamp, value in zip(t, v, strict=True)]
    text += ["# TYPE inference_objective_request counter"]
    text += counter_lines(
        'inference_objective_request_total{model_name="a",priority="0",target_model_name="a"}', t, v
    )
    tokens = token_rate(t, v)
    for family in ("input", "output"):
        text.append(f"# TYPE inference_objective_{family}_tokens_sum unknown")
        for name, share in COUNTERS:
            if name.startswith(f"inference_objective_{family}_"):
                text += counter_lines(name, t, tokens * share)
    text.append("# EOF")
    source = workdir / "history.om"
    source.write_text("\n".join(text) + "\n")
    data = workdir / "data"
    subprocess.run(
        # one block for the whole span (the default 2 h blocks make Prometheus start slowly)
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=720h",
            str(source),
            str(data),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return data


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, float, np.ndarray, np.ndarray]]:
    # skips, or fails under PICKER_REQUIRE_TOOLS (CI)
    prometheus_bin = tool("prometheus", apt="prometheus")
    promtool = tool("promtool", apt="prometheus")
    tmp_path = tmp_path_factory.mktemp("prometheus")
    end = math.floor((time.time() - 3600) / STEP) * STEP
    t, v = demand_series(end)
    data = backfill(promtool, tmp_path, t, v)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=60d",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text(errors="replace")
            time.sleep(0.2)
        yield url, end, t, v
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_forecast_from_prometheus_matches_the_in_memory_series(
    prometheus: tuple[str, float, np.ndarray, np.ndarray],
) -> None:
    url, end, t, v = prometheus
    memory = DemandHistory.from_samples(t, v)
    horizon = 195.0
    for trend in (False, True):
        cfg = ForecastConfig(prometheus_url=url, query=METRIC, weeks=2, step=STEP, refresh=600.0, trend=trend)
        reader = PrometheusHistory(cfg)
        for now in (end, end - 1234.0, end - 3 * 3600.0):
            read = (await reader.fetch(now, horizon_s=horizon)).requests
            assert len(read) > 0
            assert set(read.t.tolist()) <= set(
                memory.t.tolist()
            )  # the samples themselves, not interpolations
            # with each sample's averaging window too: the read reaches that far past the horizon
            for lookback in (0.0, cfg.sample_window):
                expected = forecast(memory, now, horizon, weeks=2, trend=trend, lookback_s=lookback)
                got = forecast(read, now, horizon, weeks=2, trend=trend, lookback_s=lookback)
                assert expected is not None
                assert got is not None
                assert got.rps == pytest.approx(expected.rps, rel=1e-9)
                assert got.peaks == pytest.approx(expected.peaks, rel=1e-9, nan_ok=True)
                assert not any(math.isnan(p) for p in got.peaks)
                assert got.trend == pytest.approx(expected.trend, rel=1e-9)
    # the trend factor sees this week's growth
    trended = forecast(memory, end, horizon, weeks=2, trend=True)
    assert trended is not None
    assert trended.trend > 1.0


async def test_unreachable_or_bad_queries_are_reported_not_raised_as_foreign_errors(
    prometheus: tuple[str, float, np.ndarray, np.ndarray],
) -> None:
    url, end, _, _ = prometheus
    bad = PrometheusHistory(ForecastConfig(prometheus_url=url, query="sum(", timeout=2.0))
    with pytest.raises(HistoryUnavailableError, match="failed"):
        await bad.fetch(end, horizon_s=60.0)
    gone = PrometheusHistory(ForecastConfig(prometheus_url=f"http://127.0.0.1:{free_port()}", timeout=1.0))
    with pytest.raises(HistoryUnavailableError):
        await asyncio.wait_for(gone.fetch(end, horizon_s=60.0), timeout=30)


async def test_the_default_queries_over_our_counters_give_back_the_request_and_token_rates(
    prometheus: tuple[str, float, np.ndarray, np.ndarray],
) -> None:
    """``forecast.query`` and ``forecast.tokenQuery`` at their defaults: ``rate()`` over our request counter
    and over both token histograms' ``_sum`` (summed over models) is the rate each was backfilled with, so
    the forecast from Prometheus equals the one from the rates in memory, for requests and for tokens."""
    url, end, t, v = prometheus
    # a rate over (t[i-1], t[i]] is what Prometheus returns at t[i] (the 5-minute window ends there)
    requests = DemandHistory.from_samples(t[1:], v[1:])
    tokens = DemandHistory.from_samples(t[1:], token_rate(t, v)[1:])
    horizon = 195.0
    cfg = ForecastConfig(prometheus_url=url, weeks=2, step=STEP, refresh=600.0)
    assert cfg.query == DEFAULT_FORECAST_QUERY
    assert cfg.token_query == DEFAULT_TOKEN_QUERY
    only_requests = await PrometheusHistory(cfg).fetch(end, horizon_s=horizon)
    assert only_requests.tokens is None  # read only when the sizing counts tokens
    reader = PrometheusHistory(cfg, tokens=True)
    for now in (end, end - 1234.0, end - 3 * 3600.0):
        read = await reader.fetch(now, horizon_s=horizon)
        assert read.tokens is not None
        for memory, got in ((requests, read.requests), (tokens, read.tokens)):
            assert len(got) > 0
            assert set(got.t.tolist()) <= set(memory.t.tolist())
            expected = forecast(memory, now, horizon, weeks=2, trend=True)
            mine = forecast(got, now, horizon, weeks=2, trend=True)
            assert expected is not None
            assert mine is not None
            assert mine.rps == pytest.approx(expected.rps, rel=1e-6)
            assert mine.peaks == pytest.approx(expected.peaks, rel=1e-6)
            assert mine.trend == pytest.approx(expected.trend, rel=1e-6)
        # the mix drifts: tokens per request differ between the two forecasts' hours
        fc_r = forecast(read.requests, now, horizon, weeks=2, trend=False)
        fc_t = forecast(read.tokens, now, horizon, weeks=2, trend=False)
        assert fc_r is not None
        assert fc_t is not None
        # (at the day's turning points the ratio is the bound itself, up to rounding)
        assert fc_t.rps / fc_r.rps == pytest.approx(1000, abs=400 + 1e-6)
    # a pool whose servers never reported one of the two (embeddings: no completion tokens) keeps a series
    prompt_only = cfg.model_copy(
        update={"token_query": DEFAULT_TOKEN_QUERY.replace("output_tokens_sum", "absent_tokens_sum")}
    )
    read = await PrometheusHistory(prompt_only, tokens=True).fetch(end, horizon_s=horizon)
    assert read.tokens is not None
    assert len(read.tokens) == len(read.requests) > 0
    shares = read.tokens.rps / np.interp(read.tokens.t, tokens.t, tokens.rps)
    assert shares == pytest.approx(0.6, rel=1e-6)  # the two models' prompt tokens
