"""The scaler end to end: the whole EPP against the API-server emulator's Deployment controller, requests
through the mini gateway (ext_proc with the Envoy-like client, then the real HTTP forward).

Sizing on tokens: at an unchanged low request rate, long prompts (their ``usage`` counted by our token
counters) make the token budget bind, and the scaler adds a replica through the scale subresource, saying
so in ``/debug/scaler`` and the token gauges; the same rate of short prompts adds nothing.

With streams in flight on every pod, a scale-down removes exactly the pod it chose, only after that pod's
streams ended, and no request is routed to it after the draining mark. The decision, the drain and the
removal are visible where an operator looks: ``/debug/scaler``, ``/metrics`` and Events on the Deployment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from picker.testing.fake_load import FINISH_LENGTH, LoadHandle, LoadRequest, LoadSnapshot
from picker.testing.gateway import GatewayResult, MiniGateway
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import deployment
from picker.testing.kube_workloads import WorkloadController
from picker.testing.poll import eventually
from tests.integration.kube_e2e.conftest import (
    NS,
    SEL,
    Epp,
    FakePods,
    StartEpp,
    completion,
    create_pool,
    wait_serving,
)

pytestmark = pytest.mark.integration

EPP_DOC = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


@dataclasses.dataclass(eq=False)
class _Held:
    request: LoadRequest
    output_tokens: int = 0
    done: bool = False
    finish_reason: str | None = None
    first_token_at: float | None = None
    finished_at: float | None = None


class HeldLoad:
    """A model server whose requests run until the test lets them finish (:meth:`finish_all`): streams in
    flight for as long as a test needs them. Polled by the fake server every 50 ms while it holds any."""

    def __init__(self) -> None:
        self.open: list[_Held] = []
        self.finished = 0
        self._release = False
        self._now = 0.0
        self._snap = LoadSnapshot(num_blocks=1000, max_num_seqs=64)

    def finish_all(self) -> None:
        self._release = True

    def admit(self, request: LoadRequest, now: float) -> LoadHandle:
        self._now = now
        handle = _Held(request, first_token_at=now)
        self.open.append(handle)
        self._touch()
        return handle

    def abort(self, handle: LoadHandle, now: float) -> None:
        if handle in self.open:
            self.open.remove(handle)  # type: ignore[arg-type]
            self._touch()

    def step(self, now: float) -> Sequence[LoadHandle]:
        self._now = now
        if not self._release or not self.open:
            return ()
        done, self.open = self.open, []
        for h in done:
            h.output_tokens, h.done, h.finish_reason, h.finished_at = (
                h.request.output_tokens,
                True,
                FINISH_LENGTH,
                now,
            )
        self.finished += len(done)
        self._release = False
        self._touch()
        return done

    def next_event_time(self) -> float | None:
        return self._now + 0.05 if self.open else None

    def snapshot(self) -> LoadSnapshot:
        return self._snap

    def _touch(self) -> None:
        self._snap = dataclasses.replace(self._snap, version=self._snap.version + 1, running=len(self.open))


async def scaler_ticks(epp: Epp, n: int) -> None:
    """Wait until the scaler has decided ``n`` more times (each tick's time in ``/debug/scaler``)."""
    start = (await epp.admin.json("/debug/scaler"))["last"].get("at")
    seen: set[float] = set()

    async def ticked() -> bool:
        at = (await epp.admin.json("/debug/scaler"))["last"].get("at")
        if at is not None and at != start:
            seen.add(at)
        return len(seen) >= n

    await eventually(ticked, within=30, what=f"{n} scaler ticks")


def scaling_doc(min_replicas: int) -> str:
    return (
        f"{EPP_DOC}---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        "scaling:\n"
        "  target: {kind: Deployment, name: vllm}\n"
        "  dryRun: false\n"
        f"  minReplicas: {min_replicas}\n"
        "  maxReplicas: 3\n"
        "  replicaCapacity: {requestsPerSecond: 100}\n"
        "  warmup: 0s\n"
        "  interval: 1s\n"
        "  scaleDown: {stabilization: 2s, cooldown: 1s, drainTimeout: 60s, verifyTimeout: 20s}\n"
    )


async def test_scale_down_removes_the_chosen_pod_after_its_streams_and_routes_nothing_to_it(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp, tmp_path: Path
) -> None:
    loads = [HeldLoad() for _ in range(3)]
    pods = [await fake_pods.add(f"slot-{i}", gauges=loads[i], time_scale=1.0) for i in range(3)]  # type: ignore[arg-type]
    by_ip = {p.ip: (p, load) for p, load in zip(pods, loads, strict=True)}
    controller = WorkloadController(emulator, ips=[p.ip for p in pods], termination_s=0.2)
    try:
        create_pool(emulator, fake_pods)
        emulator.create(deployment("vllm", NS, labels=SEL, replicas=3))
        await eventually(lambda: len(emulator.list_objects("v1", "Pod", NS)) == 3, what="three pods")
        await asyncio.sleep(0)  # they turn Ready at once (no warm-up)
        config = tmp_path / "config.yaml"
        config.write_text(scaling_doc(min_replicas=3))  # scaling on, nothing to remove yet
        epp = await start_epp(config_file=str(config), config_poll_interval=0.2)
        await wait_serving(epp)
        await eventually(lambda: len(epp.addresses()) == 3, what="three endpoints")
        pod_at = {
            f"{ip}:{fake_pods.port}": pod["metadata"]["name"]
            for pod in emulator.list_objects("v1", "Pod", NS)
            for ip in [pod["status"]["podIP"]]
        }

        gateway = MiniGateway(epp.client, timeout_s=120)
        streams: list[asyncio.Task[GatewayResult]] = []

        def start_stream() -> None:
            body = completion(prompt=f"long {len(streams)}", max_tokens=8)
            streams.append(asyncio.create_task(gateway.send("/v1/completions", body)))

        # streams in flight on every pod
        while any(not load.open for load in loads):
            start_stream()
            await asyncio.sleep(0.05)
            assert len(streams) < 60, [len(load.open) for load in loads]
        in_flight = {p.name: len(load.open) for p, load in zip(pods, loads, strict=True)}
        assert all(in_flight.values())

        # the operator allows one replica fewer: the scaler drains one pod
        config.write_text(scaling_doc(min_replicas=2))
        svc = epp.service
        await eventually(lambda: svc.datastore.draining, within=30, what="a pod marked draining")
        (victim,) = svc.datastore.draining
        victim_ip = next(ip for ip, (p, _) in by_ip.items() if pod_at.get(f"{ip}:{fake_pods.port}") == victim)
        victim_load = by_ip[victim_ip][1]
        victim_address = f"{victim_ip}:{fake_pods.port}"
        open_on_victim = len(victim_load.open)
        assert open_on_victim > 0, "the victim had streams in flight when it was marked"

        # after the mark: new requests go elsewhere, and the victim is not removed while it has streams
        after_mark = [await epp.send() for _ in range(30)]
        assert all(r.immediate is None for r in after_mark)
        assert victim_address not in {r.destination for r in after_mark}
        await scaler_ticks(epp, 2)  # the victim still has its streams at each of them
        scale = emulator.get("apps/v1", "Deployment", NS, "vllm")
        assert scale is not None
        assert scale["spec"]["replicas"] == 3, "scaled while the victim had streams"
        assert controller.deleted == []

        # its streams end: then, and only then, Kubernetes removes exactly that pod
        victim_load.finish_all()
        await eventually(lambda: controller.deleted, within=30, what="a pod deleted")
        assert controller.deleted == [victim]
        assert victim_load.finished == open_on_victim
        assert not victim_load.open
        marked = [e for e in emulator.requests if e.verb == "patch" and e.plural == "pods"]
        assert marked, "the victim got its pod-deletion-cost before the count went down"

        # the other pods' streams were never touched; let them finish now
        for ip, (_, load) in by_ip.items():
            if ip != victim_ip:
                assert load.open
                load.finish_all()
        results = await asyncio.gather(*streams)
        assert all(r.status == 200 for r in results), [r for r in results if r.status != 200]

        # the scaler says what it did: verified, in /debug/scaler, /metrics and Events on the Deployment
        async def verified() -> Any:
            doc = await epp.admin.json("/debug/scaler")
            return [d for d in doc["decisions"] if d["action"] == "verified"]

        decisions = await eventually(verified, within=30, what="removal verified")
        assert decisions[0]["victim"] == victim
        doc = await epp.admin.json("/debug/scaler")
        assert doc["enabled"]
        assert doc["dryRun"] is False
        assert doc["target"] == "Deployment inference/vllm"
        assert [d["action"] for d in reversed(doc["decisions"])][:3] == ["drain", "remove", "verified"]
        assert await epp.admin.metric("picker_scaler_drain_duration_seconds_count") == 1
        assert (
            await epp.admin.metric("picker_scaler_decisions_total", direction="down", reason="drained") == 1
        )
        reasons = [
            e["reason"]
            for e in emulator.list_objects("v1", "Event", NS)
            if e["involvedObject"]["kind"] == "Deployment"
        ]
        assert {"DrainStarted", "ScaleDown", "ScaleDownVerified"} <= set(reasons)
        assert emulator.get("apps/v1", "Deployment", NS, "vllm")["spec"]["replicas"] == 2  # type: ignore[index]
        # the victim was the pod the annotation named
        for request in marked:
            assert request.name == victim
        assert json.dumps(doc)  # the debug document is plain JSON
        await gateway.close()
    finally:
        controller.close()


def scale_to_zero_doc() -> str:
    return (
        f"{EPP_DOC}---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        "scaling:\n"
        "  target: {kind: Deployment, name: vllm}\n"
        "  dryRun: false\n"
        "  minReplicas: 0\n"
        "  maxReplicas: 2\n"
        "  replicaCapacity: {requestsPerSecond: 100}\n"
        "  warmup: 2s\n"
        "  interval: 5s\n"  # the held request wakes the scaler: no waiting for the next tick
        "  scaleToZero: {holdTimeout: 60s}\n"
    )


async def test_a_request_to_an_empty_pool_is_held_while_one_replica_comes_up_then_answered(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp, tmp_path: Path
) -> None:
    pod = await fake_pods.add("slot-0")
    # the model takes 2 s to load: longer than the proxy's 0.5 s message timer
    controller = WorkloadController(emulator, ips=[pod.ip], warmup_s=2.0)
    try:
        create_pool(emulator, fake_pods)
        emulator.create(deployment("vllm", NS, labels=SEL, replicas=0))
        config = tmp_path / "config.yaml"
        config.write_text(scale_to_zero_doc())
        epp = await start_epp(config_file=str(config))
        await wait_serving(epp)
        assert not epp.addresses()

        # Envoy with max_message_timeout: the EPP's override_message_timeout is honoured
        patient = MiniGateway(epp.client, timeout_s=120, message_timeout_s=0.5, max_message_timeout_s=120.0)
        # Envoy as configured by default (max_message_timeout 0): the override is ignored
        strict = MiniGateway(epp.client, timeout_s=120, message_timeout_s=0.5)
        held = asyncio.create_task(patient.send("/v1/completions", completion(prompt="first", max_tokens=4)))
        second = asyncio.create_task(
            strict.send("/v1/completions", completion(prompt="second", max_tokens=4))
        )

        # operators see it held (the gauge is read live, not at the scaler's tick); the replica takes 2 s
        async def held_now() -> bool:
            return await epp.admin.metric("picker_scaler_held_requests") >= 1

        await eventually(held_now, within=30, what="picker_scaler_held_requests >= 1 while held")
        refused = await second
        assert refused.status == 504, refused  # the proxy's own timer: the hold needs max_message_timeout
        assert refused.local_reply

        result = await asyncio.wait_for(held, 60)
        assert result.status == 200, result
        assert result.ok
        assert result.endpoint == pod.address
        assert result.timeout_overrides == [65.0]  # holdTimeout + the margin, asked once

        # the scaler brought exactly one replica up, because of the held request
        deployment_now = emulator.get("apps/v1", "Deployment", NS, "vllm")
        assert deployment_now is not None
        assert deployment_now["spec"]["replicas"] == 1
        doc = await epp.admin.json("/debug/scaler")
        ups = [(d["action"], d["reason"]) for d in doc["decisions"] if d["action"] == "scale-up"]
        assert ups == [("scale-up", "scale-from-zero")]
        assert epp.service.held_requests() == 0
        reasons = {
            e["reason"]
            for e in emulator.list_objects("v1", "Event", NS)
            if e["involvedObject"]["kind"] == "Deployment"
        }
        assert "ScaleUp" in reasons
        await patient.close()
        await strict.close()
    finally:
        controller.close()


def token_sizing_doc() -> str:
    """Requests alone would need one replica (100 requests/s each); the tokens of long prompts need two."""
    return (
        f"{EPP_DOC}---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        "scaling:\n"
        "  target: {kind: Deployment, name: vllm}\n"
        "  dryRun: false\n"
        "  minReplicas: 1\n"
        "  maxReplicas: 2\n"
        "  replicaCapacity: {requestsPerSecond: 100, tokensPerSecond: 1000}\n"
        "  headroom: 0\n"
        "  warmup: 0s\n"
        "  interval: 1s\n"
        "  scaleDown: {stabilization: 1h}\n"
    )


#: a prompt of 2,000 tokens for the fake servers (4 characters a token): at one request per second that is
#: 2.0 replicas' worth of tokens at 1,000 tokens/s each, and 0.01 of requests at 100 requests/s each
LONG_PROMPT = "x" * (4 * 2000)


async def test_long_prompts_at_a_low_request_rate_add_a_replica_through_the_token_budget(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp, tmp_path: Path
) -> None:
    pods = [await fake_pods.add(f"slot-{i}") for i in range(2)]
    controller = WorkloadController(emulator, ips=[p.ip for p in pods])
    try:
        create_pool(emulator, fake_pods)
        emulator.create(deployment("vllm", NS, labels=SEL, replicas=1))
        await eventually(lambda: len(emulator.list_objects("v1", "Pod", NS)) == 1, what="one pod")
        config = tmp_path / "config.yaml"
        config.write_text(token_sizing_doc())
        epp = await start_epp(config_file=str(config))
        await wait_serving(epp)
        await eventually(lambda: len(epp.addresses()) == 1, what="one endpoint")
        gateway = MiniGateway(epp.client, timeout_s=60)
        sent: list[GatewayResult] = []

        async def traffic(prompt: str, stop: asyncio.Event) -> None:
            """About two requests a second, one at a time, until stopped."""
            while not stop.is_set():
                sent.append(await gateway.send("/v1/completions", completion(prompt=prompt, max_tokens=8)))
                await asyncio.sleep(0.5)

        async def last() -> dict[str, Any]:
            doc = await epp.admin.json("/debug/scaler")
            return doc["last"] or {}  # type: ignore[no-any-return]

        async def scale_ups() -> list[dict[str, Any]]:
            doc = await epp.admin.json("/debug/scaler")
            return [d for d in doc["decisions"] if d["action"] == "scale-up"]

        # short prompts at that rate: a few tokens a second, measured, and one replica is enough
        stop = asyncio.Event()
        task = asyncio.create_task(traffic("hello", stop))

        async def short_measured() -> bool:
            tick = await last()
            return bool(tick.get("demandRps")) and tick.get("demandTps") is not None and tick["demandTps"] > 0

        await eventually(short_measured, within=30, what="the short requests' token rate measured")
        await eventually(short_measured, within=30, what="measured on a second tick")
        tick = await last()
        assert tick["demandTps"] < 500, tick  # a handful of tokens per request: well under one replica's
        assert await scale_ups() == []
        stop.set()
        await task

        # the same request rate with 2,000-token prompts: the token budget binds and a replica is added
        # through the scale subresource
        stop = asyncio.Event()
        task = asyncio.create_task(traffic(LONG_PROMPT, stop))
        ups = await eventually(scale_ups, within=60, what="a scale-up")
        stop.set()
        await task
        assert all(r.status == 200 for r in sent), [r for r in sent if r.status != 200]
        (up,) = ups
        assert up["reason"] == "demand"
        assert (up["current"], up["desired"]) == (1, 2)
        assert "(tokens bind)" in up["message"], up["message"]
        scaled = [
            r
            for r in emulator.requests
            if r.plural == "deployments" and r.subresource == "scale" and r.verb in ("patch", "update")
        ]
        assert scaled, "the count changed through the scale subresource"
        await eventually(
            lambda: emulator.get("apps/v1", "Deployment", NS, "vllm")["spec"]["replicas"] == 2,  # type: ignore[index]
            what="two replicas",
        )
        await eventually(lambda: len(epp.addresses()) == 2, what="the new replica routed to")
        # the token side is where operators look too: /debug/scaler and the gauges
        doc = await epp.admin.json("/debug/scaler")
        assert doc["plan"]["capacity"]["tokensPerSecond"] == 1000.0, doc["plan"]["capacity"]
        assert await epp.admin.metric("picker_scaler_capacity_tps") == 1000.0
        assert await epp.admin.metric("picker_scaler_decisions_total", direction="up", reason="demand") == 1
        await gateway.close()
    finally:
        controller.close()
