"""What the EPP reads from the proxy's ``metadata_context``: the subset hint of a request (reference §1.7)
and the endpoint that served its response (``envoy.lb``; passive health and the conformance verifier).
Pure functions of the message, so the stream keeps only their results."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Metadata

from picker.extproc.protocol import LB_NAMESPACE, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE

__all__ = ["served_address", "served_endpoint", "subset_hint"]


def subset_hint(metadata: Metadata, current: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The subset hint after this message: the endpoints its ``envoy.lb.subset_hint`` lists, or ``current``
    when it carries none. An empty list does not replace a non-empty one seen before (so the last
    non-empty list wins, and an explicit empty list still means "no candidates" when nothing else came). A
    comma-separated string is accepted as well as a ListValue (lwepp does the same)."""
    filter_metadata = metadata.filter_metadata
    if SUBSET_NAMESPACE not in filter_metadata:
        return current
    fields = filter_metadata[SUBSET_NAMESPACE].fields
    if SUBSET_KEY not in fields:
        return current
    value = fields[SUBSET_KEY]
    kind = value.WhichOneof("kind")
    items: tuple[str, ...]
    if kind == "list_value":
        items = tuple(
            v.string_value for v in value.list_value.values if v.WhichOneof("kind") == "string_value"
        )
    elif kind == "string_value":
        items = tuple(part.strip() for part in value.string_value.split(",") if part.strip())
    else:
        items = ()
    return items if items or current is None else current


def served_address(metadata: Metadata) -> str | None:
    """The endpoint the gateway reports having served the response, if it does (passive health)."""
    filter_metadata = metadata.filter_metadata
    if LB_NAMESPACE not in filter_metadata:
        return None
    fields = filter_metadata[LB_NAMESPACE].fields
    if SERVED_KEY not in fields:
        return None
    value = fields[SERVED_KEY]
    return str(value.string_value) if value.WhichOneof("kind") == "string_value" else None


def served_endpoint(metadata: Metadata) -> str:
    """The conformance verifier's value, with the reference's ``fail: ...`` strings."""
    if LB_NAMESPACE not in metadata.filter_metadata:
        return "fail: missing envoy lb metadata"
    served = served_address(metadata)
    return served if served is not None else "fail: missing destination endpoint served metadata"
