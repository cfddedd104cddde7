"""Fixtures of the scaler's integration tests: the API emulator with its workload controllers (and the
LeaderWorkerSet CRD), and an official client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from picker.kube import load_api_client
from picker.testing.kube_api import DEFAULT_RESOURCES, LEADER_WORKER_SETS, KubeApiEmulator
from picker.testing.kube_workloads import WorkloadController

NS = "inference"
LABELS = {"app": "vllm"}


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[KubeApiEmulator, WorkloadController]]:
    emu = KubeApiEmulator(bookmark_interval=0.3, resources=(*DEFAULT_RESOURCES, LEADER_WORKER_SETS))
    await emu.start()
    ctl = WorkloadController(emu, warmup_s=0.3)
    try:
        yield emu, ctl
    finally:
        ctl.close()
        await emu.stop()


@pytest.fixture
def api(
    cluster: tuple[KubeApiEmulator, WorkloadController], tmp_path: Path
) -> Iterator[k8s_client.ApiClient]:
    client = load_api_client(cluster[0].write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))
    try:
        yield client
    finally:
        client.close()
