"""Fuzz the real service: random ext_proc message sequences, random bodies and random metric pages.

Bounded for ``make test`` (``PICKER_FUZZ_EXAMPLES``, default 40 examples); ``python -m
benchmarks.fuzz_service`` runs thousands. See :mod:`picker.testing.fuzz` for what is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picker.testing.fuzz import FuzzRig, exchanges, metric_pages

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("PICKER_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def rig() -> Iterator[FuzzRig]:
    r = FuzzRig()
    r.start()
    try:
        yield r
    finally:
        r.stop()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(page=metric_pages(), streams=st.lists(exchanges(), min_size=1, max_size=3))
def test_random_streams_and_pages_never_hurt_the_service(
    rig: FuzzRig, page: bytes, streams: list[Any]
) -> None:
    rig.page(page)
    for messages in streams:
        rig.exchange(messages)
    rig.check()


def test_after_the_fuzzing_in_flight_counts_return_to_zero(rig: FuzzRig) -> None:
    rig.settled()
    rig.check()
