"""Kubernetes sources: the only package that imports ``kubernetes``.

Watchers (InferencePool, Pods, InferenceObjective, InferenceModelRewrite, the scoring ConfigMap) feed the
datastore and the config store; a Lease elector decides which replica serves. :class:`KubeSources`
composes them for the app. Blocking client calls run on worker threads that only hand results to the
event loop (see :mod:`picker.kube.reflector`).
"""

from __future__ import annotations

from picker.kube.client import (
    KubeConfigError,
    KubeConflictError,
    KubeError,
    KubeGoneError,
    KubeNotFoundError,
    KubeUnavailableError,
    load_api_client,
)
from picker.kube.configmap import ConfigMapWatcher, EventRecorder
from picker.kube.leader import LeaderElector, default_identity, lease_name
from picker.kube.objectives import ObjectiveWatcher, RewriteWatcher
from picker.kube.pods import PodWatcher, parse_selector, pod_endpoints, standalone_pool
from picker.kube.pool import PoolWatcher, parse_pool
from picker.kube.reflector import Backoff, EventType, Reflector, WatchEvent, WatchSettings
from picker.kube.runner import KubeSources

__all__ = [
    "Backoff",
    "ConfigMapWatcher",
    "EventRecorder",
    "EventType",
    "KubeConfigError",
    "KubeConflictError",
    "KubeError",
    "KubeGoneError",
    "KubeNotFoundError",
    "KubeSources",
    "KubeUnavailableError",
    "LeaderElector",
    "ObjectiveWatcher",
    "PodWatcher",
    "PoolWatcher",
    "Reflector",
    "RewriteWatcher",
    "WatchEvent",
    "WatchSettings",
    "default_identity",
    "lease_name",
    "load_api_client",
    "parse_pool",
    "parse_selector",
    "pod_endpoints",
    "standalone_pool",
]
