"""Endpoint prices: a pod's label or annotation, then its engine's entry, then the pool's default; the
datastore's price columns follow config changes, membership and engine detection."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest

from picker.config import load_config_text
from picker.errors import ConfigError
from picker.kube.pods import pod_endpoints
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint, PoolInfo
from picker.state.metrics import EndpointMetrics
from picker.state.prices import NO_PRICES, PriceBook

IN, OUT = "picker.dev/price-input-per-1m", "picker.dev/price-output-per-1m"
BOOK = PriceBook(default=(0.5, 1.5), engines=MappingProxyType({"sglang": (0.2, 0.6)}))


def endpoint(
    name: str = "a", *, engine: str | None = None, labels: dict[str, str] | None = None, **annotations: str
) -> Endpoint:
    return Endpoint(
        name=name,
        ip="10.0.0.1",
        port=8000,
        pod=name,
        engine=engine,
        labels=MappingProxyType(labels or {}),
        annotations=MappingProxyType(
            {"picker.dev/" + k.replace("_", "-"): v for k, v in annotations.items()}
        ),
    )


def own(input_price: str | None = None, output_price: str | None = None) -> dict[str, str]:
    out = {}
    if input_price is not None:
        out[IN] = input_price
    if output_price is not None:
        out[OUT] = output_price
    return out


@pytest.mark.parametrize(
    ("labels", "annotations", "engine", "expected", "sources"),
    [
        ({}, {}, None, (0.5, 1.5), ("default", "default")),
        ({}, {}, "sglang", (0.2, 0.6), ("engine", "engine")),
        (own("0.1", "0.3"), {}, "sglang", (0.1, 0.3), ("pod", "pod")),
        (own("0.1", "0.3"), own("0.05"), None, (0.05, 0.3), ("pod", "pod")),  # annotation wins
        (own("0.1"), {}, None, (0.1, 1.5), ("pod", "default")),  # each direction on its own
        (own("cheap", "-1"), {}, None, (0.5, 1.5), ("default (invalid pod value)",) * 2),
        (own("inf", "nan"), {}, "sglang", (0.2, 0.6), ("engine (invalid pod value)",) * 2),
    ],
)
def test_price_precedence(
    labels: dict[str, str],
    annotations: dict[str, str],
    engine: str | None,
    expected: tuple[float, float],
    sources: tuple[str, str],
) -> None:
    ep = Endpoint(
        name="a",
        ip="10.0.0.1",
        port=8000,
        labels=MappingProxyType(labels),
        annotations=MappingProxyType(annotations),
    )
    priced = BOOK.price(ep, engine)
    assert (priced.input, priced.output) == expected
    assert priced.sources == sources


def test_no_prices_anywhere_is_unknown() -> None:
    priced = NO_PRICES.price(endpoint(), "vllm")
    assert math.isnan(priced.input)
    assert math.isnan(priced.output)
    assert priced.sources == ("none", "none")


def test_the_datastore_columns_follow_config_membership_and_engine_detection() -> None:
    ds = Datastore()
    ds.replace_endpoints([endpoint("a"), endpoint("b", engine="sglang")])
    assert all(math.isnan(x) for x in ds.snapshot().price_in.tolist())
    ds.set_prices(BOOK)
    assert ds.snapshot().price_in.tolist() == [0.5, 0.2]
    ds.upsert_endpoint(endpoint("c", labels=own("0.01", "0.02")))
    m = ds.snapshot()
    assert m.price_in.tolist() == [0.5, 0.2, 0.01]
    assert m.price_out.tolist() == [1.5, 0.6, 0.02]
    # an unlabeled endpoint detected as sglang gets the engine's price
    ds.record_scrape("a", EndpointMetrics(waiting=0.0), engine="sglang")
    assert ds.snapshot().price_in.tolist() == [0.2, 0.2, 0.01]
    # a changed annotation (same address: metrics kept) re-prices the endpoint
    ds.upsert_endpoint(endpoint("b", engine="sglang", price_input_per_1m="0.07"))
    assert ds.snapshot().price_in.tolist() == [0.2, 0.07, 0.01]
    status = ds.status("b")
    assert status is not None
    assert status.priced is not None
    assert status.priced.sources == ("pod", "engine")
    ds.set_prices(NO_PRICES)
    assert ds.snapshot().price_in.tolist()[1:] == [0.07, 0.01]
    assert math.isnan(ds.snapshot().price_in[0])


def test_pods_keep_only_their_picker_annotations() -> None:
    pool = PoolInfo(name="p", namespace="ns", selector=MappingProxyType({"app": "m"}), target_ports=(8000,))
    pod = {
        "metadata": {
            "name": "m-0",
            "namespace": "ns",
            "labels": {"app": "m", OUT: "0.9"},
            "annotations": {IN: "0.3", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
        },
        "status": {"podIP": "10.1.0.5", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    (ep,) = pod_endpoints(pod, pool)
    assert dict(ep.annotations) == {IN: "0.3"}
    priced = NO_PRICES.price(ep, None)
    assert (priced.input, priced.output) == (0.3, 0.9)


def test_the_endpoint_prices_section() -> None:
    cfg = load_config_text(
        """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
endpointPrices:
  default: {inputPer1M: 0.5, outputPer1M: 1.5}
  engines: [{engine: sglang, inputPer1M: 0.2, outputPer1M: 0.6}]
  currency: EUR
"""
    )
    book = PriceBook.from_config(cfg.settings.endpoint_prices)
    assert book == PriceBook(default=(0.5, 1.5), engines={"sglang": (0.2, 0.6)}, currency="EUR")
    for bad, message in [
        ("default: {inputPer1M: -1, outputPer1M: 1}", "greater than or equal to 0"),
        ("default: {inputPer1M: 1}", "outputPer1M"),
        (
            (
                "engines: [{engine: a, inputPer1M: 1, outputPer1M: 1}, "
                "{engine: a, inputPer1M: 2, outputPer1M: 2}]"
            ),
            "duplicate engine",
        ),
        ("default: {inputPer1M: 1, outputPer1M: 1, cachedPer1M: 1}", "cachedPer1M"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config_text(
                f"apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\nendpointPrices: {{{bad}}}\n"
            )
