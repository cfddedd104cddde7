"""The service fuzz test, long: ``python -m benchmarks.fuzz_service [--examples N]``.

Runs ``tests/property/service/test_fuzz_service.py`` (random ext_proc message sequences, random bodies,
random metric pages against a real service; see :mod:`picker.testing.fuzz`) with N examples instead of
the 40 of ``make test``, and prints one JSON line: examples, outcome, seconds. Not part of ``make bench``:
it is a robustness run, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pytest

TEST = Path(__file__).parents[1] / "tests" / "property" / "service" / "test_fuzz_service.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args(argv)
    os.environ["PICKER_FUZZ_EXAMPLES"] = str(args.examples)
    started = time.monotonic()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-o", "timeout=0", str(TEST)])
    print(
        json.dumps(
            {
                "benchmark": "fuzz_service",
                "examples": args.examples,
                "passed": code == 0,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
