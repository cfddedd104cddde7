"""The two ways scoring can fail: a bad configuration (at build time) and an empty pick (at pick time).

Both are plain Python exceptions so ``scoring`` stays free of the service's error tree; the service maps
them at its boundary (``ConfigurationError`` → ``picker.errors.ConfigError``, ``NoEndpointsAvailable`` →
``ResourceExhausted``, as the reference answers 429 when scheduling yields nothing).
"""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A plugin/profile specification cannot be built: unknown type, dangling reference, bad parameter.

    The message names the plugin (or profile) and the offending field, because it ends up verbatim in the
    log line of a rejected hot reload and is all an operator gets to fix the document with.
    """


class NoEndpointsAvailable(Exception):  # noqa: N818 - public name fixed by the service contract
    """The profile's filters (or the caller's candidate mask) left no endpoint to pick from.

    The message starts like the reference's ``failed to find target endpoint: ...`` so logs and wire
    bodies read the same as with the reference EPP.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"failed to find target endpoint: {detail}")
        self.detail = detail
