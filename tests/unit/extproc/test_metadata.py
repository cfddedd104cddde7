"""What the stream reads from the proxy's ``metadata_context``: the subset hint's rules (the last non-empty
list wins; an explicit empty list means no candidates only when nothing else came; a comma-separated
string works too) and the served endpoint, with the conformance verifier's ``fail: ...`` values."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Metadata

from picker.extproc.metadata import served_address, served_endpoint, subset_hint
from picker.extproc.protocol import LB_NAMESPACE, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE


def subset(value: list[str] | str | None) -> Metadata:
    metadata = Metadata()
    fields = metadata.filter_metadata[SUBSET_NAMESPACE].fields
    if isinstance(value, str):
        fields[SUBSET_KEY].string_value = value
    elif value is not None:
        fields[SUBSET_KEY].list_value.SetInParent()  # an explicit list, even when empty
        for item in value:
            fields[SUBSET_KEY].list_value.values.add().string_value = item
    return metadata


def test_subset_hint_rules() -> None:
    assert subset_hint(Metadata(), None) is None  # no hint: every endpoint
    assert subset_hint(subset(None), ("10.0.0.1",)) == ("10.0.0.1",)  # namespace without the key
    assert subset_hint(subset(["10.0.0.1", "10.0.0.2"]), None) == ("10.0.0.1", "10.0.0.2")
    assert subset_hint(subset(" 10.0.0.3 , ,10.0.0.4"), None) == ("10.0.0.3", "10.0.0.4")
    assert subset_hint(subset([]), None) == ()  # explicit and nothing before: no candidates
    assert subset_hint(subset([]), ("10.0.0.1",)) == ("10.0.0.1",)  # a later empty list does not erase
    assert subset_hint(subset(["10.0.0.9"]), ("10.0.0.1",)) == ("10.0.0.9",)  # the last non-empty wins


def test_served_endpoint() -> None:
    assert served_address(Metadata()) is None
    assert served_endpoint(Metadata()) == "fail: missing envoy lb metadata"
    metadata = Metadata()
    fields = metadata.filter_metadata[LB_NAMESPACE].fields
    assert served_endpoint(metadata) == "fail: missing destination endpoint served metadata"
    fields[SERVED_KEY].number_value = 1
    assert served_address(metadata) is None
    assert served_endpoint(metadata) == "fail: missing destination endpoint served metadata"
    fields[SERVED_KEY].string_value = "10.0.0.1:8000"
    assert served_address(metadata) == "10.0.0.1:8000"
    assert served_endpoint(metadata) == "10.0.0.1:8000"
