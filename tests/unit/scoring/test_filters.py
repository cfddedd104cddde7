"""Table-driven tests of the filters, the saturation detectors and the subset mask."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scoring import EndpointMatrix, EndpointRow, PickRequest, View, subset_mask
from scoring.errors import ConfigurationError
from scoring.filters import (
    ConcurrencyDetector,
    HeaderBasedTestingFilter,
    LoraCapacityFilter,
    MetricsStalenessFilter,
    UtilizationDetector,
)
from scoring.subset import parse_entry

NAN = math.nan
NOW = 1000.0


def endpoints(*specs: dict[str, object]) -> EndpointMatrix:
    rows = []
    for i, spec in enumerate(specs):
        fields: dict[str, object] = {"name": f"e{i}", "address": f"10.0.0.{i}:8000", "scraped_at": NOW}
        fields.update(spec)
        rows.append(EndpointRow(**fields))  # type: ignore[arg-type]
    return EndpointMatrix.from_rows(rows)


def keep(f: object, m: EndpointMatrix, req: PickRequest | None = None) -> list[bool]:
    assert hasattr(f, "keep")
    return [bool(x) for x in f.keep(View(m), req or PickRequest(), NOW)]


@pytest.mark.parametrize(
    ("params", "ages", "expected"),
    [
        ({}, [0.0, 0.1, 0.2, 0.25], [True, True, True, False]),  # default 200ms
        ({"threshold": "1s"}, [0.5, 1.5], [True, False]),
        ({"threshold": 0.05}, [0.01, 0.06], [True, False]),
        ({}, [math.inf], [False]),  # never scraped
    ],
)
def test_staleness_filter(params: dict[str, object], ages: list[float], expected: list[bool]) -> None:
    m = endpoints(*({"scraped_at": NOW - a} for a in ages))
    assert keep(MetricsStalenessFilter("stale", params), m) == expected


def test_staleness_filter_is_fail_open_by_default_and_configurable() -> None:
    assert MetricsStalenessFilter("s").fail_open
    assert not MetricsStalenessFilter("s", {"failOpen": False}).fail_open
    with pytest.raises(ConfigurationError, match="threshold"):
        MetricsStalenessFilter("s", {"threshold": "soon"})


@pytest.mark.parametrize(
    ("row", "params", "kept"),
    [
        ({"waiting": 4.0, "kv_usage": 0.79}, {}, True),
        ({"waiting": 5.0, "kv_usage": 0.1}, {}, False),  # queue >= 5
        ({"waiting": 0.0, "kv_usage": 0.8}, {}, False),  # kv >= 0.8
        ({"waiting": 5.0, "kv_usage": 0.1}, {"headroom": 0.2}, True),  # 5 < 6
        ({"waiting": 0.0, "kv_usage": 0.9}, {"headroom": 0.2}, True),  # 0.9 < 0.96
        ({"waiting": 0.0, "kv_usage": 0.1, "scraped_at": NOW - 0.3}, {}, False),  # stale
        ({"waiting": NAN, "kv_usage": 0.1}, {}, True),  # one gauge unknown: the other decides
        ({"waiting": 1.0, "kv_usage": NAN}, {}, True),
        ({"waiting": NAN, "kv_usage": NAN}, {}, False),  # no load signal at all
    ],
)
def test_utilization_detector_as_filter(
    row: dict[str, object], params: dict[str, object], kept: bool
) -> None:
    m = endpoints(row, {"waiting": 0.0, "kv_usage": 0.0})  # a second, healthy endpoint: no fail-open
    assert keep(UtilizationDetector("u", params), m) == [kept, True]


def test_utilization_detector_filter_fails_open() -> None:
    f = UtilizationDetector("u")
    m = endpoints({"waiting": 50.0, "kv_usage": 0.1}, {"waiting": 0.0, "kv_usage": 0.99})
    assert keep(f, m) == [False, False]
    assert f.fail_open  # the scheduler then keeps both (see test_scheduler)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"waiting": 0.0, "kv_usage": 0.0}], 0.0),
        ([{"waiting": 5.0, "kv_usage": 0.4}], 1.0),  # max(5/5, 0.4/0.8)
        ([{"waiting": 1.0, "kv_usage": 0.4}, {"waiting": 10.0, "kv_usage": 0.0}], (0.5 + 2.0) / 2),
        ([{"waiting": 0.0, "kv_usage": 0.0, "scraped_at": NOW - 1.0}], 1.0),  # stale counts as 1
        ([{"waiting": NAN, "kv_usage": 0.4}], 0.5),
        ([{"waiting": NAN, "kv_usage": NAN}, {"waiting": 0.0, "kv_usage": 0.0}], 0.5),
    ],
)
def test_utilization_detector_saturation(rows: list[dict[str, object]], expected: float) -> None:
    assert UtilizationDetector("u").saturation(View(endpoints(*rows)), NOW) == pytest.approx(expected)


def test_utilization_detector_empty_pool_is_saturated() -> None:
    assert UtilizationDetector("u").saturation(View(EndpointMatrix.empty()), NOW) == 1.0


def test_utilization_detector_custom_thresholds_and_bad_parameters() -> None:
    d = UtilizationDetector("u", {"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.5})
    assert d.saturation(View(endpoints({"waiting": 5.0, "kv_usage": 0.4})), NOW) == pytest.approx(0.8)
    for bad in (
        {"queueDepthThreshold": 0},
        {"kvCacheUtilThreshold": 1.5},
        {"kvCacheUtilThreshold": 0},
        {"headroom": -1},
        {"metricsStalenessThreshold": "-1s"},
        {"queueDepth": 5},
    ):
        with pytest.raises(ConfigurationError):
            UtilizationDetector("u", bad)


def test_concurrency_detector() -> None:
    d = ConcurrencyDetector("c", {"maxConcurrency": 4})
    m = endpoints({"inflight": 2.0}, {"inflight": 4.0}, {"inflight": 0.0})
    assert d.saturation(View(m), NOW) == pytest.approx(6 / 12)
    assert keep(d, m) == [True, False, True]
    assert keep(ConcurrencyDetector("c", {"maxConcurrency": 4, "headroom": 0.5}), m) == [True, True, True]
    assert d.saturation(View(EndpointMatrix.empty()), NOW) == 1.0
    with pytest.raises(ConfigurationError, match="tokens"):
        ConcurrencyDetector("c", {"concurrencyMode": "tokens"})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("10.0.0.1", [False, True, True, False]),  # bare IP: every port of the pod
        ("10.0.0.1:8001", [False, False, True, False]),
        ("10.0.0.0:8000, 10.0.0.2:8000", [True, False, False, True]),
        ("10.0.0.9", [False, False, False, False]),
        ("", [False, False, False, False]),
        (None, [False, False, False, False]),  # absent → removes everything (reference)
    ],
)
def test_header_based_testing_filter(header: str | None, expected: list[bool]) -> None:
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("a", "10.0.0.0:8000"),
            EndpointRow("b-0", "10.0.0.1:8000"),
            EndpointRow("b-1", "10.0.0.1:8001"),
            EndpointRow("c", "10.0.0.2:8000"),
        ]
    )
    headers = {} if header is None else {"test-epp-endpoint-selection": header}
    f = HeaderBasedTestingFilter("h")
    assert not f.fail_open
    assert keep(f, m, PickRequest(headers=headers)) == expected


def test_lora_capacity_filter() -> None:
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("active", "10.0.0.1:1", lora_active=("a", "b"), max_lora=2.0),
            EndpointRow("waiting", "10.0.0.2:1", lora_active=("b",), lora_waiting=("a",), max_lora=2.0),
            EndpointRow("room", "10.0.0.3:1", lora_active=("b",), max_lora=2.0),
            EndpointRow("full", "10.0.0.4:1", lora_active=("b", "c"), max_lora=2.0),
            EndpointRow("no-lora-info", "10.0.0.5:1"),
        ]
    )
    f = LoraCapacityFilter("l")
    assert keep(f, m, PickRequest(target_model="a")) == [True, True, True, False, True]
    # a base model (or an adapter nobody lists) needs no slot: nothing is removed
    assert keep(f, m, PickRequest(target_model="base")) == [True] * 5


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("10.0.0.1", ("10.0.0.1", "")),
        ("10.0.0.1:8000", ("10.0.0.1", "8000")),
        (" 10.0.0.1:8000 ", ("10.0.0.1", "8000")),
        ("[fd00::1]:8000", ("fd00::1", "8000")),
        ("[fd00::1]", ("fd00::1", "")),
        ("fd00::1", ("fd00::1", "")),
    ],
)
def test_parse_entry(entry: str, parsed: tuple[str, str]) -> None:
    assert parse_entry(entry) == parsed


def test_subset_mask_ip_only_and_with_ports() -> None:
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("a", "10.0.0.1:8000"),
            EndpointRow("b", "10.0.0.1:8001"),
            EndpointRow("c", "[fd00::1]:8000"),
            EndpointRow("d", "10.0.0.2:8000"),
        ]
    )
    # the subset hint matches on IP only (reference): a port in the entry is ignored
    assert subset_mask(m, ["10.0.0.1:9999", 7, "[fd00::1]:1"]).tolist() == [True, True, True, False]
    # the conformance rule: ip:port exact, bare IP = all ports
    assert subset_mask(m, ["10.0.0.1:8001", "[fd00::1]:8000"], match_port=True).tolist() == [
        False,
        True,
        True,
        False,
    ]
    assert subset_mask(m, ["10.0.0.2"], match_port=True).tolist() == [False, False, False, True]


def test_filters_work_on_a_subset_view() -> None:
    m = endpoints({"scraped_at": NOW - 5}, {}, {"scraped_at": NOW - 5}, {})
    v = View(m, np.array([3, 2, 1]))
    assert MetricsStalenessFilter("s").keep(v, PickRequest(), NOW).tolist() == [True, False, True]
