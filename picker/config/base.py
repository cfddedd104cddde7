"""The base of every configuration model, and how validation errors are reported."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel


def describe_errors(where: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(document)"
        parts.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return f"{where}: " + "; ".join(parts)


class StrictModel(BaseModel):
    """Strict, immutable, camelCase on the wire (the reference's field names), snake_case in Python."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        # Python code may construct models by field name; documents are validated by alias only
        # (``by_name=False`` at every document entry point), so a snake_case key in YAML is an unknown
        # field, as in the reference's decoder.
        validate_by_name=True,
        validate_by_alias=True,
        protected_namespaces=(),
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: object) -> object:
        """``key:`` with no value (YAML null) means "not set", as in Kubernetes manifests: use the default."""
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data
