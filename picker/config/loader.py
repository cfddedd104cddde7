"""Loading: YAML text → both documents → cross-checked, defaulted :class:`PickerConfig`.

The scheduler is built once while loading, so an invalid document is rejected before it can be swapped in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from picker.config.base import StrictModel, describe_errors
from picker.config.document import PICKER_API_VERSION, PICKER_KIND, PickerSettingsDocument
from picker.config.effective import PickerConfig
from picker.config.header_only import header_only_default_specs, header_only_problems
from picker.config.plugins import (
    CORE_METRICS_EXTRACTOR,
    DEFAULT_PARSER,
    METRICS_DATA_SOURCE,
    OUTLIER_DETECTOR,
    PARSER_TYPES,
    REQUEST_ATTRIBUTE_REPORTER,
    SERVED_VERIFIER,
    SERVICE_PARAM_MODELS,
    CoreMetricsExtractorParams,
    MetricsDataSourceParams,
    OutlierDetectorParams,
)
from picker.config.reference import (
    REFERENCE_API_VERSION,
    REFERENCE_KIND,
    EndpointPickerDocument,
    PluginConfig,
    ProfilePluginRef,
    SchedulingProfileConfig,
)
from picker.errors import ConfigError
from scoring import PluginSpec, ProfileSpec, Registry
from scoring.registry import default_specs, reference_default_specs


def _service_params(plugin: PluginConfig) -> StrictModel | None:
    model = SERVICE_PARAM_MODELS.get(plugin.type)
    if model is None:
        return None
    try:
        return model.model_validate(plugin.parameters, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ConfigError(
            describe_errors(f"{REFERENCE_KIND}: plugin {plugin.effective_name!r} (type {plugin.type!r})", exc)
        ) from exc


def _pick_one(kind: str, plugins: Sequence[PluginConfig]) -> PluginConfig | None:
    if len(plugins) > 1:
        names = ", ".join(p.effective_name for p in plugins)
        raise ConfigError(
            f"{REFERENCE_KIND}: more than one {kind} plugin ({names}); reference one explicitly"
        )
    return plugins[0] if plugins else None


def _by_ref(
    by_name: Mapping[str, PluginConfig], ref: str, allowed: frozenset[str], field: str
) -> PluginConfig:
    plugin = by_name.get(ref)
    if plugin is None and ref in allowed:
        # the reference auto-instantiates these plugins under their type name, so a reference to the
        # bare type (``parser: {pluginRef: openai-parser}``) is valid without a plugins[] entry
        return PluginConfig(type=ref)
    if plugin is None:
        raise ConfigError(f"{REFERENCE_KIND}: {field}: pluginRef {ref!r} does not name a plugin")
    if plugin.type not in allowed:
        raise ConfigError(
            f"{REFERENCE_KIND}: {field}: plugin {ref!r} has type {plugin.type!r}, expected "
            f"{' or '.join(sorted(allowed))}"
        )
    return plugin


def _data_layer(
    doc: EndpointPickerDocument, by_name: Mapping[str, PluginConfig]
) -> tuple[PluginConfig | None, PluginConfig | None]:
    """The metrics source and extractor plugins in effect (None = built-in defaults)."""
    if doc.data_layer is not None and doc.data_layer.sources:
        sources = doc.data_layer.sources
        if len(sources) > 1:
            raise ConfigError(f"{REFERENCE_KIND}: dataLayer.sources: only one metrics source is supported")
        source = _by_ref(
            by_name, sources[0].plugin_ref, frozenset({METRICS_DATA_SOURCE}), "dataLayer.sources[0]"
        )
        extractors = [
            _by_ref(
                by_name,
                e.plugin_ref,
                frozenset({CORE_METRICS_EXTRACTOR}),
                f"dataLayer.sources[0].extractors[{i}]",
            )
            for i, e in enumerate(sources[0].extractors)
        ]
        return source, _pick_one(CORE_METRICS_EXTRACTOR, extractors)
    plugins = doc.plugins
    return (
        _pick_one(METRICS_DATA_SOURCE, [p for p in plugins if p.type == METRICS_DATA_SOURCE]),
        _pick_one(CORE_METRICS_EXTRACTOR, [p for p in plugins if p.type == CORE_METRICS_EXTRACTOR]),
    )


def _assemble(
    doc: EndpointPickerDocument,
    settings: PickerSettingsDocument,
    registry: Registry | None,
    model_header: str = "",
) -> PickerConfig:
    """Cross-check and default both documents. ``model_header``: the effective header-only mode header
    ("" = off), whose restrictions (:mod:`picker.config.header_only`) are checked here."""
    by_name: dict[str, PluginConfig] = {}
    for p in doc.plugins:
        by_name.setdefault(p.effective_name, p)
    base = PickerConfig(endpoint_picker=doc, settings=settings)
    base.build_profiles(registry)  # unknown types, dangling refs, bad scheduling parameters
    for p in doc.plugins:
        _service_params(p)
    source, extractor = _data_layer(doc, by_name)
    if doc.parser is not None:
        if not doc.parser.plugin_ref:
            raise ConfigError(f"{REFERENCE_KIND}: parser.pluginRef must not be empty")
        parser = _by_ref(by_name, doc.parser.plugin_ref, PARSER_TYPES, "parser").type
    else:
        defined = _pick_one("parser", [p for p in doc.plugins if p.type in PARSER_TYPES])
        parser = defined.type if defined is not None else DEFAULT_PARSER
    detectors = [p for p in doc.plugins if p.type == OUTLIER_DETECTOR]
    if len(detectors) > 1:
        names = ", ".join(p.effective_name for p in detectors)
        raise ConfigError(f"{REFERENCE_KIND}: more than one {OUTLIER_DETECTOR} plugin ({names}); keep one")
    detector = detectors[0] if detectors else None
    configured = _service_params(detector) if detector is not None else None
    outlier = configured if isinstance(configured, OutlierDetectorParams) else OutlierDetectorParams()
    if model_header:
        problems = header_only_problems(
            doc, settings, outlier_enabled=outlier.enabled if configured is not None else None
        )
        if problems:
            raise ConfigError(
                f"header-only mode (model header {model_header}) cannot serve this configuration: "
                + "; ".join(problems)
            )
        # no response is seen, so passive health would never receive an outcome
        outlier = outlier.model_copy(update={"enabled": False})
    reporters = [p.effective_name for p in doc.plugins if p.type == REQUEST_ATTRIBUTE_REPORTER]
    if reporters:
        # The reference evaluates CEL over the response's usage and returns the value in the response's
        # dynamic metadata. Not implemented here: accepting it would silently report nothing.
        raise ConfigError(
            f"{REFERENCE_KIND}: plugin {reporters[0]!r}: request-attribute-reporter (usage reported in "
            "the response's dynamic metadata) is not supported by this EPP; remove it (usage is counted "
            "in inference_objective_input_tokens / _output_tokens)"
        )
    if parser == "vllmgrpc-parser":
        # Accepted by the reference for vLLM's gRPC engine API; we only route HTTP (OpenAI) or opaque bodies.
        raise ConfigError(
            f"{REFERENCE_KIND}: parser vllmgrpc-parser is not supported by this EPP; "
            "use openai-parser or passthrough-parser"
        )
    return base.model_copy(
        update={
            "metrics_source": _service_params(source) if source is not None else MetricsDataSourceParams(),
            "metrics_extractor": (
                _service_params(extractor) if extractor is not None else CoreMetricsExtractorParams()
            ),
            "parser": parser,
            "served_verifier_enabled": any(p.type == SERVED_VERIFIER for p in doc.plugins),
            "request_attribute_reporters": tuple(
                p for p in doc.plugins if p.type == REQUEST_ATTRIBUTE_REPORTER
            ),
            "outlier_detection": outlier,
            "model_header": model_header,
        }
    )


def _classify(raw: Mapping[str, Any], index: int) -> str:
    api = raw.get("apiVersion")
    kind = raw.get("kind")
    if (api, kind) == (REFERENCE_API_VERSION, REFERENCE_KIND):
        return REFERENCE_KIND
    if (api, kind) == (PICKER_API_VERSION, PICKER_KIND):
        return PICKER_KIND
    raise ConfigError(
        f"document {index + 1}: apiVersion/kind {api!r}/{kind!r} is not "
        f"{REFERENCE_API_VERSION}/{REFERENCE_KIND} nor {PICKER_API_VERSION}/{PICKER_KIND}"
    )


#: Largest configuration text accepted, in bytes (UTF-8): a ConfigMap holds at most 1 MiB, and a document
#: is a few kilobytes. Parsing 100 MB of YAML took half a minute.
MAX_CONFIG_BYTES: Final = 1 << 20
#: Integers in a document must fit in 64 bits (``/config`` serializes them, and no field needs more)
_MAX_INT: Final = 2**63 - 1
#: Nesting deeper than this is no configuration (the schema nests about 8 levels)
_MAX_DEPTH: Final = 64


def _check_values(node: object, depth: int = 0) -> None:
    """Reject what the schema cannot mean but would make later steps fail: nesting deeper than any field
    and integers beyond 64 bits (an objective priority of 1e23 once made every ``/config`` answer 500)."""
    if depth > _MAX_DEPTH:
        raise ConfigError(f"document nested deeper than {_MAX_DEPTH} levels")
    if isinstance(node, Mapping):
        for key, value in node.items():
            _check_values(key, depth + 1)
            _check_values(value, depth + 1)
    elif isinstance(node, list | tuple):
        for value in node:
            _check_values(value, depth + 1)
    elif isinstance(node, int) and not isinstance(node, bool) and not -_MAX_INT - 1 <= node <= _MAX_INT:
        raise ConfigError(f"integer {str(node)[:24]}… does not fit in 64 bits")


def _parse(text: str, source: str) -> list[Any]:
    """The YAML documents of ``text``. Every failure of the parser (syntax, a recursion limit hit by
    deep nesting, an integer over Python's digit limit) is a :class:`ConfigError` naming ``source``."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {size} bytes, more than the {MAX_CONFIG_BYTES} bytes a config may have")
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {str(exc).replace('<unicode string>', source)}") from exc
    except RecursionError as exc:
        raise ConfigError(f"invalid YAML in {source}: nested too deeply") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer over Python's digit limit
        raise ConfigError(f"invalid YAML in {source}: {str(exc)[:200]}") from exc
    _check_values(documents)
    return documents


def load_config_text(
    text: str,
    *,
    registry: Registry | None = None,
    source: str = "the configuration",
    model_header: str = "",
) -> PickerConfig:
    """Parse, default and fully validate a configuration text (one or two YAML documents).

    ``model_header`` is the ``--model-header`` flag (header-only mode; "" = off), which the document's
    ``request.modelHeader`` overrides. Raises :class:`~picker.errors.ConfigError` naming the document and
    field for any problem, whatever the input: no other exception leaves this function. ``source`` names
    the text in messages (a file, a ConfigMap). Texts over :data:`MAX_CONFIG_BYTES` are refused before
    parsing.
    """
    try:
        return _load(text, registry, source, model_header)
    except ConfigError:
        raise
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(
            f"{source}: invalid configuration ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def _load(text: str, registry: Registry | None, source: str, model_header: str) -> PickerConfig:
    documents = _parse(text, source)
    found: dict[str, Mapping[str, Any]] = {}
    for i, raw in enumerate(documents):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"document {i + 1}: expected a mapping, got {type(raw).__name__}")
        kind = _classify(raw, i)
        if kind in found:
            raise ConfigError(f"more than one {kind} document")
        found[kind] = raw
    if not found:
        return default_config(model_header=model_header)
    try:
        settings = PickerSettingsDocument.model_validate(
            found.get(PICKER_KIND, {}), by_alias=True, by_name=False
        )
    except ValidationError as exc:
        raise ConfigError(describe_errors(PICKER_KIND, exc)) from exc
    header = settings.request.model_header if settings.request.model_header is not None else model_header
    try:
        doc = (
            EndpointPickerDocument.model_validate(found[REFERENCE_KIND], by_alias=True, by_name=False)
            if REFERENCE_KIND in found
            else _default_document(header_only=bool(header))
        )
    except ValidationError as exc:
        raise ConfigError(describe_errors(REFERENCE_KIND, exc)) from exc
    return _assemble(doc, settings, registry, header)


def load_config_file(
    path: str | Path, *, registry: Registry | None = None, model_header: str = ""
) -> PickerConfig:
    """:func:`load_config_text` on a file's contents (UTF-8); an unreadable file is a ConfigError too."""
    return load_config_text(
        read_config_file(path), registry=registry, source=str(path), model_header=model_header
    )


def read_config_file(path: str | Path) -> str:
    """A config file's text: refused (ConfigError) when unreadable, larger than
    :data:`MAX_CONFIG_BYTES` (read no further than that), not UTF-8, or empty (a truncated file is not
    "no configuration": only an absent ``--config-file`` means the default)."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read config file {path}: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    if not text.strip():
        raise ConfigError(f"config file {path} is empty")
    return text


def _document(plugins: list[PluginSpec], profiles: list[ProfileSpec]) -> EndpointPickerDocument:
    return EndpointPickerDocument(
        api_version=REFERENCE_API_VERSION,
        kind=REFERENCE_KIND,
        plugins=tuple(PluginConfig(name=p.name, type=p.type, parameters=dict(p.parameters)) for p in plugins),
        scheduling_profiles=tuple(
            SchedulingProfileConfig(
                name=p.name,
                plugins=tuple(ProfilePluginRef(plugin_ref=ref, weight=w) for ref, w in p.plugins),
            )
            for p in profiles
        ),
    )


def _default_document(*, header_only: bool) -> EndpointPickerDocument:
    return _document(*(header_only_default_specs() if header_only else default_specs()))


def default_config(*, model_header: str = "") -> PickerConfig:
    """The built-in configuration used when none is given: our default profile
    (:func:`scoring.default_scheduler`; see ``scoring/README.md``), defaults for everything else. In
    header-only mode (``model_header``) the profile without its body-derived scorer
    (:func:`picker.config.header_only.header_only_default_specs`)."""
    return _assemble(
        _default_document(header_only=bool(model_header)), PickerSettingsDocument(), None, model_header
    )


def reference_default_config() -> PickerConfig:
    """The reference EPP's built-in configuration (queue 2, KV 2, prefix 3), for strict compatibility."""
    return _assemble(_document(*reference_default_specs()), PickerSettingsDocument(), None)
