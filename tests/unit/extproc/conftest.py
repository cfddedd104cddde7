"""Shared doubles of the ext_proc unit tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lease:
    """A lease that counts what the stream does with it (first bytes, outcome reports, releases)."""

    first_bytes: int = 0
    releases: int = 0
    reports: int = 0

    def first_byte(self) -> None:
        self.first_bytes += 1

    def report(self, _outcome: object) -> None:
        self.reports += 1

    def release(self) -> None:
        self.releases += 1
