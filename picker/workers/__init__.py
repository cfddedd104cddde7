"""``picker serve --workers N``: N ext_proc worker processes on one port, one scraper, one snapshot.

Why processes: one Python process serves ext_proc on one core, and the cost per stream is mostly the
gRPC stack's (see ``benchmarks/RESULTS.md``), so more throughput means more processes. Why one
supervisor: N scrapers would multiply the load on every model server's ``/metrics`` and N Kubernetes
watches the load on the API server, and N separate views of the pool would each believe the endpoints
the others just filled are idle.

Shape:

* The **supervisor** (this process, PID 1 in the container) runs everything but ext_proc: the scrape loop,
  the Kubernetes sources, config reloads, leader election, the admin/metrics server and the health port,
  all through the ordinary :class:`picker.service.Service`, whose :class:`picker.state.datastore.Datastore`
  holds a :class:`picker.state.publisher.SharedPublisher`: it publishes the pool, its metrics,
  objectives, rewrites and the config document into shared memory every few milliseconds.
* Each **worker** (a fresh interpreter, ``multiprocessing`` spawn: no fork after gRPC started) runs an
  :class:`picker.extproc.ExtProcServer` bound with ``SO_REUSEPORT`` to the same port (the kernel spreads
  connections over the workers), a :class:`picker.routing.director.Director` over a
  :class:`picker.state.view.SharedView`, and its own request metrics.

Accounting: the counter-row model of :mod:`picker.state.accounting`, as in one process, with its rows in
shared memory: every worker counts its picks and releases in its own row, the columns a pick reads are
sums over the rows, so every worker sees every other worker's streams at its next pick.

Prefix index: a replica per process (:mod:`picker.state.prefix`); a worker's records go to the
supervisor every 50 ms (``["prefix", records]``), which applies them and forwards them to the others.
Each worker also reports its replica's entries when they change, so ``/debug/workers`` shows every replica's
size next to the supervisor's.

Metrics: request-path metrics are recorded in each worker and sent to the supervisor about once a second
over the worker's pipe (:class:`picker.telemetry.MergedRequestMetrics` sums them), so ``/metrics`` lags by
up to a second. Pool gauges, scrape and config metrics come from the supervisor as usual. Tenant metrics:
with the memory backend the budget is the supervisor's and so are its counts; with Redis each worker
sends, with its snapshot, the tenants' usage and backend failures it counted since the last one (added
up by the supervisor) and the meters its Redis replies showed (the newest kept, never added: they are one
shared state), ``picker.tenants.remote``. A worker killed outright loses up to a second of those counts.
``/debug/tenants`` shows each worker's share next to the shared meters: its running requests' reservations
(memory) or its lease as last reported (Redis).

Lifecycle: a worker exits when its pipe to the supervisor closes (the supervisor died, however), and
drains for 5 s on SIGTERM/SIGINT or a stop message. The supervisor restarts a worker that dies (its open
streams are settled in the accounting and its counters kept in ``/metrics``) and gives up loudly, exiting
non-zero, after :data:`MAX_RESTARTS` restarts within :data:`RESTART_WINDOW_S`. Readiness (``/readyz``
and the gRPC health port) requires every worker to be serving.

The port: ``--grpc-port 0`` picks a free port, reserved by a socket the supervisor keeps bound with
``SO_REUSEPORT`` (never listening, so it takes no connections); a fixed port is reserved the same way, so a
port held by an unrelated process fails at start, with the one-process error (``cannot start: --grpc-port:
cannot listen on ...``, or ``--pool NAME`` for a pool's port).

Several pools (``--pool``): every worker serves every pool's port (``SO_REUSEPORT`` on each) and the
supervisor holds each pool's state as it holds one pool's: a segment, a publishing datastore, merged
metrics, budgets, held counts and a prefix replica per pool (:class:`picker.workers.hosts.PoolHost`); the
pipe carries what concerns a pool wrapped with its index (:mod:`.channel`), so nothing of one pool reaches
another's. One tracer provider per worker serves all its pools (``--tracing``).

The package: :mod:`.channel` is the pipe protocol (every message either side sends), :mod:`.worker` the
worker process, :mod:`.supervisor` the supervisor's side (the worker pool, the port reservations, start-up),
:mod:`.hosts` the supervisor's state of one pool for the workers.

The package imports neither side itself: a worker is a fresh interpreter (the ``spawn`` start method) that
imports :mod:`.worker` by name, and through the package it would load the supervisor's side too (the whole
service and its admin API's web framework) on every worker start.
"""
