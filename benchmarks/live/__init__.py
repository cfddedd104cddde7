"""The parts of ``benchmarks/bench_live.py``: the replayed workload, the child processes (fake fleet,
routers), the clients and routers, the report. The command and its documentation are in ``bench_live``."""
