"""``Service`` is built from what it is given (ARCHITECTURE.md: constructors do no I/O): the constructor
reads neither the config file nor the environment; :meth:`Service.load` does, for a process's start."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from picker.config import load_config_text
from picker.errors import ConfigError
from picker.service import Service
from picker.settings import Settings
from picker.wiring import BuildInfo

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def info_line(service: Service) -> str:
    text = generate_latest(service.telemetry.registry).decode()
    return next(line for line in text.splitlines() if line.startswith("inference_extension_info{"))


def test_the_constructor_reads_no_file_and_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PICKER_BUILD_REF", "from-the-environment")
    missing = tmp_path / "absent.yaml"  # loading it would fail: the constructor must not try
    settings = Settings(config_file=str(missing), secure_serving=False, static_endpoints="127.0.0.1:9")
    service = Service(settings, load_config_text(EPP), config_text=EPP, config_source="test")
    assert service.config_store.active.source == "test"
    assert "from-the-environment" not in info_line(service)
    built = Service(settings, load_config_text(EPP), build=BuildInfo(ref="v1", commit="abc"))
    assert 'build_ref="v1"' in info_line(built)


def test_load_reads_the_config_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PICKER_BUILD_REF", "v2")
    path = tmp_path / "config.yaml"
    path.write_text(EPP + "plugins: [{type: queue-scorer}]\n")
    service = Service.load(
        Settings(config_file=str(path), secure_serving=False, static_endpoints="127.0.0.1:9")
    )
    assert service.config_store.active.source == f"file:{path}"
    assert 'build_ref="v2"' in info_line(service)
    with pytest.raises(ConfigError, match="cannot read config file"):
        Service.load(
            Settings(
                config_file=str(tmp_path / "absent.yaml"),
                secure_serving=False,
                static_endpoints="127.0.0.1:9",
            )
        )
