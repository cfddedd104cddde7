"""HTTP header names given in configuration (flags and the PickerConfig document), checked one way.

A header name the operator configures is matched against the lower-case names the proxy sends (HTTP/2
names are lower case; the ext_proc adapter lower-cases HTTP/1 ones), so it is stored lower-cased. Only
RFC 9110 token characters are accepted: anything else could never match a header and is a typo.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_HEADER_NAME", "header_name"]

#: longest header name accepted (proxies allow more; a name this long is a mistake)
MAX_HEADER_NAME: Final = 128
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")


def header_name(value: str) -> str:
    """``value`` lower-cased if it is a valid header name; raises ``ValueError`` saying why not."""
    name = value.strip().lower()
    if not name:
        raise ValueError("header name must not be empty")
    if len(name) > MAX_HEADER_NAME:
        raise ValueError(f"header name longer than {MAX_HEADER_NAME} characters")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{value!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)")
    return name
