"""Named model-server profiles: the handful of numbers that make a simulated vLLM behave like a real one.

A profile is an *engine step cost model* plus the scheduler limits of vLLM:

    step_time = step_overhead_s
              + per_token_s          x (prefill tokens + decoding sequences in the step)
              + per_context_token_s  x (KV tokens the step's sequences attend to)
              + lora_load_s          x (adapters loaded into a GPU slot by this step)

Why this shape: a forward pass has a fixed cost (reading the weights once, launching kernels, the Python
scheduler), a cost per token pushed through the linear layers (compute bound, and the same for a prefill token
and a decode token), and an attention cost proportional to the KV cache read (memory bound). Three
coefficients are enough to reproduce both the low-batch step time and the saturated throughput that vLLM
publishes, which is all the router comparison needs: queueing, batching and KV pressure then emerge from the
scheduler model in :mod:`benchmarks.sim.server`.

Every number below carries its source. Where a coefficient is *derived* (solved from two published
measurements, or from a datasheet figure), the derivation is spelled out next to it, so a reader can redo it.
``validation`` records the published saturated figures the profile must land near; the simulator's own tests
check that it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

# --------------------------------------------------------------------------------------------- sources
#: Lambda Labs, "LLMs inference benchmarks, using vLLM, on Lambda Cloud" (vLLM v0.5.4 / v0.6.0), report and
#: raw results: https://github.com/LambdaLabsML/vllm-benchmark (benchmark_v0.md; results/prompt_10/…json).
LAMBDA_REPORT = "https://github.com/LambdaLabsML/vllm-benchmark/blob/main/benchmark_v0.md"
LAMBDA_8B_RAW = (
    "https://github.com/LambdaLabsML/vllm-benchmark/blob/main/results/prompt_10/1xH100-80GB-SXM/"
    "Meta-Llama-3-8B-Instruct_tp1_len2048.json"
)
LAMBDA_70B_RAW = (
    "https://github.com/LambdaLabsML/vllm-benchmark/blob/main/results/prompt_10/4xH100-80GB-SXM/"
    "Meta-Llama-3-70B-Instruct_tp4_len2048.json"
)
#: vLLM engine defaults for GPUs with >= 70 GiB (H100): max_num_batched_tokens 8192 and max_num_seqs 1024 for
#: the OpenAI API server; V1 always chunks prefills and enables prefix caching by default.
VLLM_ARG_DEFAULTS = (
    "https://github.com/vllm-project/vllm/blob/main/vllm/engine/arg_utils.py (get_batch_defaults)"
)
#: vLLM CLI reference: ``--max-loras`` default 1, ``--max-cpu-loras`` (CPU-side adapter cache).
VLLM_LORA_ARGS = "vLLM engine arguments reference, LoRA group: --max-loras (default 1), --max-cpu-loras"
#: Order-of-magnitude cost of swapping an adapter from the CPU cache into a GPU slot ("~50 ms per swap").
LORA_SWAP_NOTE = "https://theneuralbase.com/vllm/learn/intermediate/memory-overhead-of-multi-lora/"
#: GIE prefix-cache sizing guidance: H100 80 GB, 16 GB weights, 128 KB/token → ~500k tokens → 31,250 blocks.
GIE_PREFIX_SIZING = "Gateway API Inference Extension docs, prefix-cache-scorer capacity sizing guidance"
#: NVIDIA H100 SXM datasheet: 3.35 TB/s HBM3, 80 GB.
H100_DATASHEET = "https://www.nvidia.com/en-us/data-center/h100/"


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """One model server (one vLLM instance, possibly tensor-parallel) as the simulator sees it.

    Units: seconds, tokens, KV blocks. ``validation`` maps a published figure name to its value so tests can
    check the calibration; ``sources`` maps each field to where its number comes from.
    """

    name: str
    model: str
    description: str
    step_overhead_s: float
    per_token_s: float
    per_context_token_s: float
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131072
    max_lora: int = 4
    lora_load_s: float = 0.05
    sources: Any = field(default_factory=lambda: MappingProxyType({}))
    validation: Any = field(default_factory=lambda: MappingProxyType({}))

    def step_time(self, scheduled_tokens: int, context_tokens: int, lora_loads: int = 0) -> float:
        """Duration of one engine step (see the module docstring for the formula and why)."""
        return (
            self.step_overhead_s
            + self.per_token_s * scheduled_tokens
            + self.per_context_token_s * context_tokens
            + self.lora_load_s * lora_loads
        )

    @property
    def kv_tokens(self) -> int:
        """KV-cache capacity in tokens."""
        return self.num_blocks * self.block_size

    @property
    def context_limit(self) -> int:
        """Longest request (prompt + output tokens) the server accepts: max_model_len, capped by the KV pool
        (vLLM refuses a max_model_len its cache cannot hold)."""
        return min(self.max_model_len, self.kv_tokens)

    def with_overrides(self, **changes: Any) -> ServerProfile:
        """A copy with some fields changed (tests, what-if runs: ``max_lora=1``, ``max_num_seqs=256``)."""
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------ Llama 8B / H100
# Step overhead and per-token cost are solved from two measurements in the Lambda raw results for
# Meta-Llama-3-8B-Instruct on 1xH100-80GB-SXM, vLLM v0.6.0, 10 prompts at once (1,369 prompt tokens):
#   * median inter-token latency 72.3 ms over 10 scheduler steps (multi-step 10) → 7.2 ms per decode step at
#     batch ≈ 10 with short contexts. Subtracting 10 x per_token and ~3k context tokens x per_context_token
#     leaves step_overhead ≈ 6.6 ms.
#   * TTFT 62 ms for all ten prompts, i.e. one prefill step of 1,369 tokens: (62 - 6.6) ms / 1,369 tokens
#     → per_token ≈ 40 µs. (Cross-check: 16 GFLOP per token for 8B parameters at ~40 % of the H100's
#     989 dense BF16 TFLOPS is 40 µs.)
# per_context_token: Llama-3-8B stores 32 layers x 8 KV heads x 128 dims x 2 (K,V) x 2 bytes = 128 KiB per
# token; reading it at ~65 % of 3.35 TB/s HBM bandwidth costs ≈ 60 ns per token per step.
# num_blocks: (0.9 x 80 GiB - 15 GiB weights - ~3 GiB activations/graphs) / 128 KiB ≈ 442k tokens → 27,600
# blocks of 16; the GIE sizing guide's rounder figure for the same card is 31,250 blocks (500k tokens).
# Validation (Lambda report, Llama 3.1 8B tp=1, v0.6.0 multi-step 10, rps=inf, max-num-seq 256): 8,088
# output tok/s and 25.6 ms median TPOT on ShareGPT-style prompts.
LLAMA3_8B_H100 = ServerProfile(
    name="llama3-8b-h100",
    model="meta-llama/Llama-3.1-8B-Instruct",
    description="Llama-3.1-8B, BF16, one H100-80GB SXM, vLLM V1 defaults for an API server",
    step_overhead_s=6.6e-3,
    per_token_s=40e-6,
    per_context_token_s=60e-9,
    num_blocks=27_600,
    block_size=16,
    max_num_seqs=1024,
    max_num_batched_tokens=8192,
    max_model_len=131072,
    max_lora=4,
    lora_load_s=0.05,
    sources=MappingProxyType(
        {
            "step_overhead_s": LAMBDA_8B_RAW + " (median ITL 72.3 ms / 10 steps)",
            "per_token_s": LAMBDA_8B_RAW + " (TTFT 62 ms for 1,369 prompt tokens in one step)",
            "per_context_token_s": H100_DATASHEET + " (3.35 TB/s) and Llama-3-8B config (128 KiB/token KV)",
            "num_blocks": GIE_PREFIX_SIZING + "; derived from 0.9 x 80 GiB - weights - activations",
            "block_size": VLLM_ARG_DEFAULTS + " (vLLM default 16)",
            "max_num_seqs": VLLM_ARG_DEFAULTS,
            "max_num_batched_tokens": VLLM_ARG_DEFAULTS,
            "max_lora": VLLM_LORA_ARGS + " (default 1; the multi-LoRA scenario raises it to 4)",
            "lora_load_s": LORA_SWAP_NOTE + " (order of magnitude; an assumption, tune with --profile-set)",
            "validation": LAMBDA_REPORT,
        }
    ),
    validation=MappingProxyType(
        {
            "saturated_output_tok_per_s": 8088.35,
            "saturated_median_tpot_s": 25.57e-3,
            "saturated_max_num_seqs": 256,
            "sharegpt_mean_prompt_tokens": 202,
            "sharegpt_mean_output_tokens": 179,
        }
    ),
)

# ------------------------------------------------------------------------------------- Llama 70B / 4xH100
# Same method on Meta-Llama-3-70B-Instruct, 4xH100-80GB-SXM tp=4, vLLM v0.6.0, the same 10 prompts:
#   * median ITL 175 ms / 10 steps → 17.5 ms per decode step at batch ≈ 10 → step_overhead ≈ 16.5 ms.
#   * TTFT 140.6 ms for 1,369 prompt tokens → (140.6 - 16.5) / 1,369 → per_token ≈ 90 µs.
# per_context_token: 80 layers x 8 KV heads x 128 x 2 x 2 bytes = 320 KiB per token, sharded over 4 GPUs with
# 4 x 3.35 TB/s at ~65 % → ≈ 37 ns per token per step.
# num_blocks: per GPU 0.9 x 80 GiB - 32.9 GiB weights - ~4 GiB = 35 GiB, x 4 = 140 GiB / 320 KiB ≈ 459k
# tokens → 28,700 blocks.
# Validation (Lambda report, Llama 3.1 70B tp=4, v0.6.0 multi-step 10, max-num-seq 256): 3,542.88 output
# tok/s, 61.1 ms median TPOT.
LLAMA3_70B_H100_TP4 = ServerProfile(
    name="llama3-70b-h100-tp4",
    model="meta-llama/Llama-3.1-70B-Instruct",
    description="Llama-3.1-70B, BF16, 4xH100-80GB SXM tensor-parallel, vLLM V1 defaults for an API server",
    step_overhead_s=16.5e-3,
    per_token_s=90e-6,
    per_context_token_s=37e-9,
    num_blocks=28_700,
    block_size=16,
    max_num_seqs=1024,
    max_num_batched_tokens=8192,
    max_model_len=131072,
    max_lora=4,
    lora_load_s=0.05,
    sources=MappingProxyType(
        {
            "step_overhead_s": LAMBDA_70B_RAW + " (median ITL 175 ms / 10 steps)",
            "per_token_s": LAMBDA_70B_RAW + " (TTFT 140.6 ms for 1,369 prompt tokens in one step)",
            "per_context_token_s": H100_DATASHEET + " (4 x 3.35 TB/s) and Llama-3-70B config (320 KiB/token)",
            "num_blocks": "derived from 4 x (0.9 x 80 GiB - weights - activations) / 320 KiB per token",
            "block_size": VLLM_ARG_DEFAULTS + " (vLLM default 16)",
            "max_num_seqs": VLLM_ARG_DEFAULTS,
            "max_num_batched_tokens": VLLM_ARG_DEFAULTS,
            "max_lora": VLLM_LORA_ARGS + " (default 1; the multi-LoRA scenario raises it to 4)",
            "lora_load_s": LORA_SWAP_NOTE + " (order of magnitude; an assumption)",
            "validation": LAMBDA_REPORT,
        }
    ),
    validation=MappingProxyType(
        {
            "saturated_output_tok_per_s": 3542.88,
            "saturated_median_tpot_s": 61.10e-3,
            "saturated_max_num_seqs": 256,
            "sharegpt_mean_prompt_tokens": 202,
            "sharegpt_mean_output_tokens": 179,
        }
    ),
)

PROFILES: MappingProxyType[str, ServerProfile] = MappingProxyType(
    {p.name: p for p in (LLAMA3_8B_H100, LLAMA3_70B_H100_TP4)}
)


def get_profile(name: str) -> ServerProfile:
    """Profile by name, with the list of valid names in the error."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
