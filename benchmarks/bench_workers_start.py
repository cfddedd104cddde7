"""What starting a ``picker serve --workers 2`` process tree costs: CPU seconds per process until ready.

    python -m benchmarks.bench_workers_start            # 3 starts, the median per process
    python -m benchmarks.bench_workers_start --runs 5 --json

Every ``--workers`` test starts such a tree (a supervisor and two workers, each a fresh interpreter of the
``spawn`` start method) before its first request, and on a loaded machine the tree's start-up CPU is most
of the test's time. Each run starts the tree on loopback with two unreachable static endpoints, waits for
``/readyz`` (every worker serving), reads each process's user+system CPU from ``/proc``, and stops the
tree. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PICKER = str(Path(sys.executable).parent / "picker")
ARGS = (
    "serve",
    "--grpc-port=0",
    "--grpc-health-port=0",
    "--metrics-port=0",
    "--admin-port=0",
    "--host=127.0.0.1",
    "--workers=2",
    "--static-endpoints=127.0.0.1:1,127.0.0.1:2",
    "--secure-serving=false",
)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _role(pid: int) -> str:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    if b"spawn_main" in cmd:
        return "worker"
    return "resource tracker" if b"resource_tracker" in cmd else "supervisor"


def one_start(deadline_s: float = 120.0) -> dict[str, float]:
    """Start a tree, wait until ready; CPU seconds per role (workers summed) and the wall time to ready."""
    proc = subprocess.Popen([PICKER, *ARGS], stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if m := re.search(r"metrics :(\d+)", line):
                port = int(m[1])
                break
        if port is None:
            raise RuntimeError("picker serve ended before serving")
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > deadline_s:
                raise RuntimeError("the workers never became ready")
            time.sleep(0.05)
        ready_s = time.monotonic() - t0
        pids = [int(p) for p in subprocess.check_output(["pgrep", "-g", str(proc.pid)]).split()]
        out = {"ready_s": ready_s, "supervisor": 0.0, "worker": 0.0, "resource tracker": 0.0}
        for pid in pids:
            out[_role(pid)] += _cpu_s(pid)
        out["tree"] = out["supervisor"] + out["worker"] + out["resource tracker"]
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    runs = [one_start() for _ in range(args.runs)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    doc = {"benchmark": "bench_workers_start", "runs": runs, "median": median, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"--workers 2 start, median of {args.runs}: tree {median['tree']:.2f} s CPU (supervisor "
            f"{median['supervisor']:.2f}, both workers {median['worker']:.2f}), ready after "
            f"{median['ready_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
