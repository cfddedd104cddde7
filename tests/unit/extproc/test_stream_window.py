"""``--grpc-stream-window``: the flag reaches every ext_proc server of the process, and a window too small to
carry one HTTP/2 frame is refused (0 keeps gRPC's automatic window). What the window bounds is tested end to
end in ``tests/integration/cli/test_hostile_peers.py``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from picker.cli import build_parser, settings_from_args
from picker.config import default_config
from picker.extproc.server import AUTO_STREAM_WINDOW, DEFAULT_STREAM_WINDOW, window_options
from picker.service import Service
from picker.settings import Settings


def _settings(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]), environ={})


@pytest.mark.parametrize(("flag", "window"), [("256Ki", 256 << 10), ("1Mi", 1 << 20), ("0", 0)])
def test_the_flag_is_the_window_of_every_pool_server(flag: str, window: int) -> None:
    settings = _settings("--pool=a=9100", "--pool=b=9101", f"--grpc-stream-window={flag}")
    assert settings.grpc_stream_window == window
    config = default_config()
    svc = Service(settings, config, documents=[(config, "", "default")])
    servers = [pool.extproc for pool in svc.pools if pool.extproc is not None]
    assert len(servers) == 2
    assert all(server.stream_window == window for server in servers)


def test_the_default_is_a_fixed_window() -> None:
    settings = _settings("--static-endpoints=127.0.0.1:1")
    assert settings.grpc_stream_window == DEFAULT_STREAM_WINDOW == 256 << 10


@pytest.mark.parametrize("window", [1, 16383, -1, (1 << 30) + 1])
def test_a_window_that_cannot_carry_a_frame_is_refused(window: int) -> None:
    with pytest.raises(ValidationError, match="grpc_stream_window"):
        Settings(grpc_stream_window=window)


def test_a_fixed_window_turns_the_probe_off_and_announces_the_window() -> None:
    # the same options serve ExtProcServer and the benchmark's null handler (its floor)
    assert window_options(AUTO_STREAM_WINDOW) == []
    assert dict(window_options(DEFAULT_STREAM_WINDOW)) == {
        "grpc.http2.bdp_probe": 0,
        "grpc.http2.lookahead_bytes": DEFAULT_STREAM_WINDOW,
    }
