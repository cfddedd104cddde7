"""The command line exactly as the issue writes it, run as subprocesses: ``picker serve`` and
``python -m picker serve``, the reference flags, ``--static-endpoints``, ``picker fake-server``, SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.cli import build_parser, settings_from_args
from picker.testing.envoy import EnvoyClient, HttpRequest
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.net import free_port
from tests.integration.cli.conftest import LAUNCHERS, run_to_exit
from tests.integration.conftest import LOCAL, PICKER, Ports, Spawn, serving_ports

pytestmark = pytest.mark.integration

SERVING_STATUS = health_pb2.HealthCheckResponse.SERVING
BODY = b'{"model":"m","prompt":"hello"}'


async def _health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def _route(ports: Ports) -> str | None:
    async with EnvoyClient(f"127.0.0.1:{ports.grpc}", tls=ports.tls, timeout=10) as client:
        result = await client.exchange(HttpRequest(body=BODY))
        return result.destination


async def _get_json(port: int, path: str) -> object:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as resp:
        assert resp.status == 200
        return await resp.json()


# ------------------------------------------------------------------------------------------ serve


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
async def test_serve_with_static_endpoints_runs_without_kubernetes_and_stops_on_sigterm(
    spawn: Spawn, launcher: str
) -> None:
    process = await spawn(
        [
            *LAUNCHERS[launcher],
            "serve",
            "--static-endpoints",
            "127.0.0.2:1,127.0.0.3:2@sglang",
            *LOCAL,
            "--secure-serving=false",  # pflag-style boolean
            "--health-checking",  # bare boolean = true
            "--disable-endpoint-subset-filter=false",
        ]
    )
    ports = await serving_ports(process)
    assert not ports.tls
    assert await _health(ports.health) == SERVING_STATUS
    assert await _health(ports.grpc, "envoy.service.ext_proc.v3.ExternalProcessor") == SERVING_STATUS
    assert await _route(ports) in {"127.0.0.2:1", "127.0.0.3:2"}
    doc = await _get_json(ports.admin, "/debug/endpoints")
    assert isinstance(doc, dict)
    engines = {row["address"]: row["engine"] for row in doc["endpoints"]}
    assert engines["127.0.0.3:2"] == "sglang"
    assert doc["pool"]["name"] == "static"

    assert await process.stop(signal.SIGTERM) == 0
    assert "shutting down" in process.output
    assert "Traceback" not in process.output


async def test_reference_flags_with_their_defaults_are_accepted(spawn: Spawn) -> None:
    """Every reference flag at its reference default (ports excepted), including the ones this EPP
    does not implement: each of those is accepted with one warning."""
    implemented = [
        "--pool-namespace=",
        "--pool-group=inference.networking.k8s.io",
        "--endpoint-selector=",
        "--refresh-metrics-interval=50ms",
        "--metrics-staleness-threshold=2s",
        "--secure-serving=true",
        "--cert-path=",
        "--enable-cert-reload=false",
        "--health-checking=false",
        "--disable-endpoint-subset-filter=false",
        "--ha-enable-leader-election=false",
        "--model-server-metrics-port=0",
        "--config-file=",
        "--config-text=",
        "--metrics-endpoint-auth=false",
        "--tracing=true",  # no collector listens: routing is unaffected (test_tracing.py)
        "-v=2",
    ]
    ignored = {
        "--refresh-prometheus-metrics-interval": "5s",
        "--model-server-metrics-scheme": "http",
        "--model-server-metrics-path": "/metrics",
        "--model-server-metrics-https-insecure-skip-verify": "true",
        "--enable-pprof": "true",
        "--zap-encoder": "json",
        "--kv-cache-usage-percentage-metric": "vllm:kv_cache_usage_perc",
    }
    argv = [PICKER, "serve", "--static-endpoints=127.0.0.2:8000", *LOCAL, *implemented]
    argv += [f"{flag}={value}" for flag, value in ignored.items()]
    process = await spawn(argv)
    ports = await serving_ports(process)
    assert ports.tls  # --secure-serving=true: a self-signed certificate
    assert await _route(ports) == "127.0.0.2:8000"
    for flag in ignored:
        warnings = [line for line in process.lines if f"flag {flag} is accepted for compatibility" in line]
        assert len(warnings) == 1, flag
    assert await process.stop() == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--no-such-flag"], "unrecognized arguments: --no-such-flag", id="unknown-flag"),
        pytest.param(["--secure-serving=maybe"], "invalid boolean 'maybe'", id="bad-boolean"),
        pytest.param(["--refresh-metrics-interval=fast"], "--refresh-metrics-interval", id="bad-duration"),
        pytest.param(["--grpc-port=http"], "--grpc-port", id="bad-port"),
    ],
)
async def test_bad_flags_fail_with_a_clear_error(spawn: Spawn, argv: list[str], message: str) -> None:
    code, output = await run_to_exit(
        spawn, [PICKER, "serve", "--static-endpoints=127.0.0.2:8000", *LOCAL, *argv]
    )
    assert code == 2
    assert message in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            [],
            "one of --pool-name, --pool, --endpoint-selector or --static-endpoints is required",
            id="neither",
        ),
        pytest.param(
            ["--pool-name=pool", "--endpoint-selector=app=vllm", "--endpoint-target-ports=8000"],
            "set only one of --pool-name, --endpoint-selector, --static-endpoints",
            id="pool-name-and-selector",
        ),
        pytest.param(
            [
                "--endpoint-selector=app=vllm",
                "--endpoint-target-ports=8000",
                "--static-endpoints=127.0.0.2:8000",
            ],
            "set only one of --pool-name, --endpoint-selector, --static-endpoints",
            id="selector-and-static",
        ),
    ],
)
async def test_pool_source_must_be_exactly_one(spawn: Spawn, argv: list[str], message: str) -> None:
    code, output = await run_to_exit(spawn, [PICKER, "serve", *LOCAL, *argv])
    assert code == 2
    assert message in output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            b"apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
            b"- type: no-such-scorer\n",
            "no-such-scorer",
            id="unknown-plugin",
        ),
        pytest.param(b"\xff\xfe binary", "cannot read config file", id="not-utf8"),
        pytest.param(b"[" * 100_000, "nested too deeply", id="deep-nesting"),
        pytest.param(b"a: " + b"9" * 5000 + b"\n", "invalid YAML in", id="huge-integer"),
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"# " + b"x" * (1 << 20) + b"\n", "larger than 1048576 bytes", id="over-1MiB"),
        pytest.param(b"a: [1,\n  b: c", "config.yaml", id="yaml-error-names-the-file"),
        pytest.param(None, "cannot read config file", id="missing-file"),
    ],
)
async def test_invalid_config_file_is_a_startup_error(
    spawn: Spawn, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_bytes(content)
    code, output = await run_to_exit(
        spawn, [PICKER, "serve", "--static-endpoints=127.0.0.2:8000", *LOCAL, f"--config-file={path}"]
    )
    assert code == 2
    line = next(line for line in output.splitlines() if "invalid configuration:" in line)
    assert message in line
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--refresh-metrics-interval=50ms"], "refresh_metrics_interval", 0.05),
        (["--refresh-metrics-interval", "2s"], "refresh_metrics_interval", 2.0),
        (["--metrics-staleness-threshold=1m"], "metrics_staleness_threshold", 60.0),
        (["--scrape-timeout=1500ms"], "scrape_timeout", 1.5),
        (["--secure-serving=false"], "secure_serving", False),
        (["--secure-serving", "false"], "secure_serving", False),
        (["--secure-serving"], "secure_serving", True),
        ([], "secure_serving", True),
        (["--health-checking=true"], "health_checking", True),
        (["--ha-enable-leader-election=FALSE"], "ha_enable_leader_election", False),
        ([], "grpc_port", 9002),
        ([], "grpc_health_port", 9003),
        ([], "metrics_port", 9090),
        ([], "admin_port", 9091),
        ([], "admin_bind", "127.0.0.1"),
        (["--admin-bind=0.0.0.0", "--admin-port=7000"], "admin_port", 7000),
        ([], "metrics_endpoint_auth", None),
        (["--metrics-endpoint-auth"], "metrics_endpoint_auth", True),
        ([], "refresh_metrics_interval", 0.05),
        ([], "metrics_staleness_threshold", 2.0),
        ([], "pool_group", "inference.networking.k8s.io"),
        (["-v=4"], "verbosity", 4),
        (["--v", "3"], "verbosity", 3),
    ],
)
def test_flag_values_and_defaults(argv: list[str], field: str, value: object) -> None:
    """What the flags above turn into (the parser ``picker serve`` runs, in-process)."""
    args = ["serve", "--static-endpoints=127.0.0.2:8000", *argv]
    args = [f"--v={a[3:]}" if a.startswith("-v=") else a for a in args]  # as picker.cli.main does
    settings = settings_from_args(build_parser().parse_args(args), environ={})
    assert getattr(settings, field) == value


# ------------------------------------------------------------------------------------------ fake-server

ENGINE_MARKERS = {
    "vllm": "vllm:num_requests_waiting",
    "sglang": "sglang:num_queue_reqs",
    "tgi": "tgi_queue_size",
    "trtllm": "nv_trt_llm_request_metrics",
}
#: the engine names the EPP reports (``trtllm`` serves the Triton TensorRT-LLM page)
DETECTED = {"vllm": "vllm", "sglang": "sglang", "tgi": "tgi", "trtllm": "triton-tensorrt-llm"}


async def test_fake_servers_of_each_engine_serve_and_the_epp_detects_their_engines(spawn: Spawn) -> None:
    """``picker fake-server`` per engine, then ``picker serve`` over all four with no engine given and no
    Kubernetes: the engine of each endpoint is detected from its metrics page."""
    # each binds an ephemeral port and prints it (a port picked here could be taken by then: EADDRINUSE)
    fakes = {
        engine: await spawn([PICKER, "fake-server", "--port", "0", "--engine", engine])
        for engine in ENGINE_MARKERS
    }
    listening = re.compile(r"fake \S+ server on http://127\.0\.0\.1:(\d+)")
    ports: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        for engine, process in fakes.items():
            ports[engine] = int((await process.wait_for(listening))[1])
            base = f"http://127.0.0.1:{ports[engine]}"
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert ENGINE_MARKERS[engine] in await resp.text()
            payload = {"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "hi", "max_tokens": 2}
            async with http.post(f"{base}/v1/completions", json=payload) as resp:
                assert resp.status == 200
                assert (await resp.json())["choices"]

    static = ",".join(f"127.0.0.1:{port}" for port in ports.values())
    epp = await spawn([PICKER, "serve", f"--static-endpoints={static}", *LOCAL, "--secure-serving=false"])
    epp_ports = await serving_ports(epp)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        doc = await _get_json(epp_ports.admin, "/debug/endpoints")
        assert isinstance(doc, dict)
        rows = {row["address"]: row for row in doc["endpoints"]}
        if all(row["scrapes_ok"] > 0 for row in rows.values()):
            break
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.05)
    detected = {engine: rows[f"127.0.0.1:{port}"]["engine"] for engine, port in ports.items()}
    assert detected == DETECTED
    assert all(row["waiting"] == 0 for row in rows.values())  # idle servers, read from their pages
    assert await _route(epp_ports) in rows
    assert await epp.stop() == 0
    codes = await asyncio.gather(*(p.stop(signal.SIGINT) for p in fakes.values()))
    assert codes == [0, 0, 0, 0]


# ------------------------------------------------------------------------------------------ operator errors


def _busy_port() -> tuple[object, int]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--static-endpoints=nonsense"],
            "--static-endpoints: invalid static endpoint 'nonsense'",
            id="static-endpoints",
        ),
        pytest.param(["--static-endpoints=127.0.0.2:1", "--workers=0"], "--workers: ", id="workers-0"),
        pytest.param(
            ["--pool-name=pool", "--kubeconfig=/nonexistent/kubeconfig"],
            "--kubeconfig: cannot load Kubernetes client configuration from /nonexistent/kubeconfig",
            id="missing-kubeconfig",
        ),
        pytest.param(["--pool-name=pool"], "--kubeconfig: cannot load", id="no-kubeconfig"),
    ],
)
async def test_operator_errors_are_one_line_with_exit_2(spawn: Spawn, argv: list[str], message: str) -> None:
    # importing the Kubernetes client takes a while on a loaded machine: a generous bound
    code, output = await run_to_exit(spawn, [PICKER, "serve", *LOCAL, *argv], deadline_s=90.0)
    assert code == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if message in line]
    assert len(errors) == 1, output
    assert len([line for line in output.splitlines() if "error" in line.lower()]) == 1, output


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("flag", ["--grpc-port", "--grpc-health-port", "--metrics-port", "--admin-port"])
async def test_a_busy_port_names_the_flag(spawn: Spawn, flag: str, workers: int) -> None:
    """Every port ``picker serve`` listens on, in one process and under ``--workers`` (whose supervisor
    reserves the ext_proc port for its workers before anything else binds)."""
    sock, port = _busy_port()
    try:
        code, output = await run_to_exit(
            spawn,
            [
                PICKER,
                "serve",
                "--static-endpoints=127.0.0.2:1",
                "--secure-serving=false",
                *LOCAL,
                f"--workers={workers}",
                f"{flag}={port}",
            ],
        )
    finally:
        sock.close()  # type: ignore[attr-defined]
    _assert_one_busy_port_line(code, output, flag, port)


#: fresh ports for the other pool when another process took its port first (see the test below)
POOL_PORT_ATTEMPTS = 3


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("several", [False, True], ids=["one-pool", "second-of-two-pools"])
async def test_a_busy_pool_port_names_the_pool(
    spawn: Spawn, emulator: KubeApiEmulator, tmp_path: Path, several: bool, workers: int
) -> None:
    """A ``--pool`` port in use is named as that pool's, not as ``--grpc-port``: alone (one ``--pool`` is
    served as ``--pool-name``) and as the second of two pools (the first bound, or reserved, before it).

    The first pool's port is only free when picked: if another process takes it before ``picker serve``
    binds it, the exit names that port instead, and the test starts again on a fresh one."""
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    sock, port = _busy_port()
    try:
        for attempt in range(1, POOL_PORT_ATTEMPTS + 1):
            first = free_port()
            pools = [f"--pool=alpha={first}", f"--pool=beta={port}"] if several else [f"--pool=beta={port}"]
            code, output = await run_to_exit(
                spawn,
                [
                    PICKER,
                    "serve",
                    *pools,
                    f"--kubeconfig={kubeconfig}",
                    "--secure-serving=false",
                    *(flag for flag in LOCAL if not flag.startswith("--grpc-port=")),  # --pool gives it
                    f"--workers={workers}",
                ],
            )
            if not several or f":{first}:" not in output or attempt == POOL_PORT_ATTEMPTS:
                break
    finally:
        sock.close()  # type: ignore[attr-defined]
    _assert_one_busy_port_line(code, output, "--pool beta", port)


def _assert_one_busy_port_line(code: int, output: str, flag: str, port: int) -> None:
    """The process exited 2 with one line about ``port``: ``cannot start``, naming ``flag`` and the port,
    and keeping the system's reason (what scripts that retry on a taken port look for)."""
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if str(port) in line]
    assert len(lines) == 1, output
    assert f"cannot start: {flag}: cannot listen on 127.0.0.1:{port}: Address already in use" in lines[0]


async def test_version(spawn: Spawn) -> None:
    code, output = await run_to_exit(spawn, [PICKER, "--version"])
    assert code == 0
    assert output == "" or output.startswith("picker ")  # printed on stdout


async def test_a_wait_for_a_line_of_a_process_that_exited_fails_with_its_last_lines(spawn: Spawn) -> None:
    """A child that exits before the line a test waits for fails the wait with everything it wrote, its
    last line (why it exited) included, and its exit code: its pipe is read to the end first (the exit is
    often noticed while a pipe's worth of lines is still unread)."""
    script = "import sys; sys.stderr.write('filler line\\n' * 20000 + 'the reason\\n'); sys.exit(3)"
    process = await spawn([sys.executable, "-c", script])
    with pytest.raises(AssertionError) as failed:
        await process.wait_for(re.compile("never written"))
    message = str(failed.value)
    assert "(exited with 3)" in message
    assert message.endswith("filler line\nthe reason")
