"""``process_*`` series: nothing is read while the collector is built, ``/proc`` is read when collected.

The process's files are written by the test into a directory laid out like ``/proc`` (the seam the library
takes), after the collector was built: a collector that read them in its constructor (as
prometheus_client's own does) found no boot time there and exports nothing.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from prometheus_client import CollectorRegistry

from picker.telemetry import ProcessMetrics

PID = 4242
BOOT = 1_700_000_000
TICKS = os.sysconf("SC_CLK_TCK")


def write_proc(root: Path, *, rss_pages: int, start_ticks: int, fds: int) -> None:
    (root / str(PID) / "fd").mkdir(parents=True)
    (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {BOOT}\n", encoding="ascii")
    # /proc/<pid>/stat after "(comm)": state is field 3; utime 14, stime 15, starttime 22, vsize 23, rss 24
    fields = ["S"] + ["0"] * 21
    fields[11], fields[12] = str(3 * TICKS), str(TICKS)
    fields[19], fields[20], fields[21] = str(start_ticks), str(1 << 30), str(rss_pages)
    (root / str(PID) / "stat").write_text(
        f"{PID} (picker serve) " + " ".join(fields) + "\n", encoding="ascii"
    )
    (root / str(PID) / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max open files            1024                 4096                 files\n",
        encoding="ascii",
    )
    for i in range(fds):
        (root / str(PID) / "fd" / str(i)).touch()


def test_proc_is_read_at_collect_not_at_construction(tmp_path: Path) -> None:
    proc = tmp_path / "proc"  # does not exist yet: the constructor must not look
    registry = CollectorRegistry()
    ProcessMetrics(registry, proc=str(proc), pid=lambda: PID)
    write_proc(proc, rss_pages=1000, start_ticks=50 * TICKS, fds=3)

    def value(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert value("process_resident_memory_bytes") == 1000 * resource.getpagesize()
    assert value("process_virtual_memory_bytes") == 1 << 30
    assert value("process_start_time_seconds") == BOOT + 50
    assert value("process_cpu_seconds_total") == 4.0
    assert value("process_open_fds") == 3
    assert value("process_max_fds") == 1024
    # every later collect reads the files again
    (proc / str(PID) / "fd" / "3").touch()
    assert value("process_open_fds") == 4


def test_the_real_process_is_exported() -> None:
    registry = CollectorRegistry()
    ProcessMetrics(registry)
    rss = registry.get_sample_value("process_resident_memory_bytes")
    assert rss is not None
    assert rss > 1 << 20
