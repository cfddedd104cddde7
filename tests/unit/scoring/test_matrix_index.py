"""The IP index of the matrix used by subset masks and the conformance filter."""

from __future__ import annotations

import dataclasses

from scoring import EndpointMatrix, EndpointRow


def test_rows_of_ip_groups_ranks_of_one_pod() -> None:
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("a-0", "10.0.0.1:8000"),
            EndpointRow("b-0", "10.0.0.2:8000"),
            EndpointRow("a-1", "10.0.0.1:8001"),
        ]
    )
    assert m.rows_of_ip("10.0.0.1") == (0, 2)
    assert m.rows_of_ip("10.0.0.2") == (1,)
    assert m.rows_of_ip("10.0.0.3") == ()
    taken = m.take([2, 1])
    assert taken.rows_of_ip("10.0.0.1") == (0,)
    assert taken.index_of_address("10.0.0.2:8000") == 1


def test_indexes_are_built_for_matrices_constructed_field_by_field() -> None:
    m = EndpointMatrix.from_rows([EndpointRow("a", "10.0.0.1:8000"), EndpointRow("b", "10.0.0.2:9000")])
    fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if not f.name.startswith("_")}
    bare = EndpointMatrix(**fields)
    assert bare.index_of_address("10.0.0.2:9000") == 1
    assert bare.rows_of_ip("10.0.0.1") == (0,)
