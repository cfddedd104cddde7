"""What one scrape of a model server yields, engine-independent.

``picker.scrape`` produces it, ``picker.state`` stores it. NaN / None mean "this scrape did not report
the field" (a missing metric family): the datastore keeps the previous value for such a field, so one
missing family never wipes the others, and staleness is judged on the scrape time, not per field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NAN = math.nan


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    #: requests waiting in the engine queue
    waiting: float = NAN
    #: requests being decoded/prefilled right now
    running: float = NAN
    #: KV-cache usage, 0..1 (TGI: an approximation, see picker/scrape/README.md)
    kv_usage: float = NAN
    #: adapters loaded and serving; None = the engine does not report LoRA state
    lora_active: tuple[str, ...] | None = None
    #: adapters requested but not yet loaded
    lora_waiting: tuple[str, ...] | None = None
    #: max adapters resident at once (vLLM ``max_lora``)
    max_lora: float = NAN
    #: KV block size in tokens and number of GPU KV blocks
    block_size: float = NAN
    num_blocks: float = NAN
    #: model names the server serves, from the ``model_name`` label of its series (vLLM, SGLang); None =
    #: the page does not say (LoRA affinity treats a request for a served name as its base model)
    models: tuple[str, ...] | None = None

    def reported_fields(self) -> int:
        """How many fields this scrape actually reported (0 = the page had nothing we know)."""
        # ``v == v`` is False only for NaN (unreported): no call per field on a path run for every page
        return (
            (self.waiting == self.waiting)
            + (self.running == self.running)
            + (self.kv_usage == self.kv_usage)
            + (self.max_lora == self.max_lora)
            + (self.block_size == self.block_size)
            + (self.num_blocks == self.num_blocks)
            + (self.lora_active is not None)
            + (self.lora_waiting is not None)
        )

    def gauges(self) -> tuple[float, float, float, float, float, float]:
        """The float fields in :data:`GAUGE_FIELDS` order (NaN: not reported)."""
        return (self.waiting, self.running, self.kv_usage, self.max_lora, self.block_size, self.num_blocks)


#: the float fields of :class:`EndpointMetrics`, the order of :meth:`EndpointMetrics.gauges`
GAUGE_FIELDS = ("waiting", "running", "kv_usage", "max_lora", "block_size", "num_blocks")
