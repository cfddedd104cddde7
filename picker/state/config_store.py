"""The live scoring configuration, swapped atomically on reload with the last good one kept.

Sources (a watched file, a ConfigMap watched through the API, ``--config-text`` at start) all call
:meth:`ConfigStore.apply_text`. A document is fully validated *and* its scheduler built before the swap;
any failure leaves the current config untouched and is reported through the listeners, which log it,
count ``picker_config_reload_total{result}`` and (for ConfigMaps) post a Kubernetes Event.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from picker.config import PickerConfig, load_config_text
from picker.config.scaling import ScaleToZeroConfig
from picker.errors import ConfigError
from scoring import Profiles, Scheduler


@dataclass(frozen=True, slots=True)
class ReloadResult:
    source: str
    ok: bool
    #: "applied", "unchanged" or "rejected"
    result: str
    message: str
    digest: str
    at: float


@dataclass(frozen=True, slots=True)
class ActiveConfig:
    """A validated config and the scheduling profiles built from it; replaced as a whole, never mutated.

    The settings every ext_proc stream reads are copied to plain fields here: read through the config
    document they cost a chain of model objects per stream (see ``picker.config.PickerConfig`` for their
    meaning).
    """

    config: PickerConfig
    #: every scheduling profile and the handler choosing one per request
    profiles: Profiles
    source: str
    digest: str
    #: the document as applied ("" for the built-in default); ``--workers`` hands it to the workers
    text: str = ""
    #: the default profile's scheduler (the only one with ``single-profile-handler``)
    scheduler: Scheduler = field(init=False)
    parser: str = field(init=False)
    max_body_bytes: int = field(init=False)
    served_verifier: bool = field(init=False)
    may_skip_responses: bool = field(init=False)
    #: passive health is on, so skipped responses must keep their headers (the status)
    needs_response_status: bool = field(init=False)
    #: header-only mode: the request header carrying the model ("" = off) and the prompt-token header
    model_header: str = field(init=False)
    prompt_tokens_header: str = field(init=False)
    #: requests to an empty pool are held while a first replica comes up (``scaling`` allows zero replicas
    #: and is not a dry run); None otherwise
    hold_empty_pool: ScaleToZeroConfig | None = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        object.__setattr__(self, "scheduler", self.profiles.default)
        object.__setattr__(self, "parser", cfg.parser)
        object.__setattr__(self, "max_body_bytes", cfg.max_body_bytes)
        object.__setattr__(self, "served_verifier", cfg.served_verifier_enabled)
        object.__setattr__(self, "may_skip_responses", cfg.may_skip_responses)
        object.__setattr__(self, "needs_response_status", cfg.outlier_detection.enabled)
        object.__setattr__(self, "model_header", cfg.model_header)
        object.__setattr__(self, "prompt_tokens_header", cfg.prompt_tokens_header)
        scaling = cfg.scaling
        holds = scaling is not None and scaling.allows_zero and not scaling.dry_run
        hold = scaling.scale_to_zero if holds and scaling is not None else None
        object.__setattr__(self, "hold_empty_pool", hold)


#: what :meth:`ConfigStore.load` returns: the validated config and its profiles, or why not
Loaded = tuple[PickerConfig, Profiles] | ConfigError


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ConfigStore:
    """``model_header``: the ``--model-header`` flag, with which every reloaded document is loaded (the
    document's ``request.modelHeader`` overrides it; ``picker.config.header_only``)."""

    def __init__(
        self,
        initial: PickerConfig,
        *,
        source: str,
        text: str = "",
        clock: Callable[[], float] = time.time,
        model_header: str = "",
    ) -> None:
        self._clock = clock
        self._model_header = model_header
        self._active = ActiveConfig(initial, initial.build_profiles(), source, _digest(text), text)
        self.last_result: ReloadResult | None = None
        self._listeners: list[Callable[[ReloadResult, ActiveConfig], None]] = []
        self._checks: list[Callable[[PickerConfig], None]] = []

    @property
    def active(self) -> ActiveConfig:
        return self._active

    def add_listener(self, callback: Callable[[ReloadResult, ActiveConfig], None]) -> None:
        """Called after every reload attempt with its result and the (possibly unchanged) active config."""
        self._listeners.append(callback)

    def add_check(self, check: Callable[[PickerConfig], None]) -> None:
        """Run ``check`` on every document that validated, before it may become active; a ConfigError it
        raises rejects the document with that reason. For what only the owner of a section can verify
        (a tokenizer file that must load, say), so a bad reload is rejected whole rather than applied
        in part. Called from :meth:`load`, possibly in a worker thread: a check may do blocking I/O."""
        self._checks.append(check)

    def load(self, text: str, *, source: str) -> Loaded:
        """Validate ``text`` and build its profiles, without touching the store: safe in a worker thread,
        so a large document is never parsed on the event loop (see :meth:`apply_text_off_loop`)."""
        if not text.strip():
            # a file truncated in place (editors, sync tools) must not replace the operator's config with
            # the built-in default; only an absent file at start means "default"
            return ConfigError("empty document; the active configuration is kept")
        try:
            cfg = load_config_text(text, source=source, model_header=self._model_header)
            profiles = cfg.build_profiles()
            for check in tuple(self._checks):
                check(cfg)
        except ConfigError as exc:
            return exc
        return cfg, profiles

    def apply_text(self, text: str, *, source: str) -> ReloadResult:
        """Validate and swap in ``text`` on the calling thread (see :meth:`apply_text_off_loop`)."""
        if _digest(text) == self._active.digest:
            return self.commit(text, source=source, loaded=None)
        return self.commit(text, source=source, loaded=self.load(text, source=source))

    async def apply_text_off_loop(self, text: str, *, source: str) -> ReloadResult:
        """:meth:`apply_text` with the parse in a worker thread and the swap on the loop (the single
        writer): a 1 MiB document must not stall routing and health checks."""
        if _digest(text) == self._active.digest:
            return self.commit(text, source=source, loaded=None)
        loaded = await asyncio.to_thread(self.load, text, source=source)
        return self.commit(text, source=source, loaded=loaded)

    def reject(self, message: str, *, source: str, digest: str = "") -> ReloadResult:
        """Count and show a document that could not even be read (not UTF-8, too large, unreadable)."""
        return self._report(ReloadResult(source, False, "rejected", message, digest, self._clock()))

    def commit(self, text: str, *, source: str, loaded: Loaded | None) -> ReloadResult:
        """Swap in what :meth:`load` returned for ``text`` (None: the active document, unchanged)."""
        digest = _digest(text)
        if loaded is None or digest == self._active.digest:
            result = ReloadResult(source, True, "unchanged", "same document", digest, self._clock())
        elif isinstance(loaded, ConfigError):
            result = ReloadResult(source, False, "rejected", loaded.message, digest, self._clock())
        else:
            cfg, profiles = loaded
            self._active = ActiveConfig(cfg, profiles, source, digest, text)
            result = ReloadResult(source, True, "applied", "ok", digest, self._clock())
        return self._report(result)

    def _report(self, result: ReloadResult) -> ReloadResult:
        self.last_result = result
        for cb in tuple(self._listeners):
            cb(result, self._active)
        return result
