"""Scorers by family: load (queue, running), token load (prefill queue, in-flight tokens), utilization (KV
cache, GPU), affinity (LoRA, prefix), observed latency, cost, the operator's Prometheus signals.

Formulas and inputs of every scorer: ``README.md`` next to this file.
"""

from scoring.scorers.affinity import LoraAffinityScorer
from scoring.scorers.cost import CostScorer
from scoring.scorers.latency import LatencyScorer
from scoring.scorers.load import MinMaxLoadScorer, QueueScorer, RunningRequestsScorer
from scoring.scorers.prefix import PrefixCacheScorer
from scoring.scorers.signal import PrometheusScorer
from scoring.scorers.tokens import PrefillQueueScorer, TokenLoadScorer
from scoring.scorers.utilization import GpuUtilizationScorer, KvCacheUtilizationScorer

__all__ = [
    "CostScorer",
    "GpuUtilizationScorer",
    "KvCacheUtilizationScorer",
    "LatencyScorer",
    "LoraAffinityScorer",
    "MinMaxLoadScorer",
    "PrefillQueueScorer",
    "PrefixCacheScorer",
    "PrometheusScorer",
    "QueueScorer",
    "RunningRequestsScorer",
    "TokenLoadScorer",
]
