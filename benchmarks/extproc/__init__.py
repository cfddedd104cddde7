"""The parts of ``benchmarks/bench_extproc.py``: the floor server, the Envoy-like load processes, h2load,
the orchestration of phases and the report. The command and its documentation are in ``bench_extproc``."""
