"""Affinity scorers: prefer endpoints that already hold what this request needs (a loaded adapter).

The prefix-cache scorer has its own module (``prefix.py``).

Family README: ``scoring/scorers/README.md`` ("Affinity").
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np

from scoring._params import Params
from scoring.matrix import F64, BoolArray, EndpointMatrix
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.types import PickRequest

#: Reference scores of the LoRA cascade.
LORA_ACTIVE = 1.0
LORA_ROOM = 0.8
LORA_WAITING = 0.6


#: what the LoRA scorer prepares per snapshot: ``0.8·room`` and "reports no served model names"
_LoraState = tuple[F64, BoolArray]


class LoraAffinityScorer(Scorer[_LoraState]):
    """``lora-affinity-scorer`` — prefer an endpoint where the request's adapter is already loaded.

    Formula (reference cascade, first match wins): 1.0 if ``target_model`` is among the endpoint's active
    adapters; else 0.8 if the endpoint has room to load one more (``|active| + |waiting| < max_lora``);
    else 0.6 if the adapter is waiting to load there; else 0.0.
    Base models (ours): when ``target_model`` is a model name some endpoint's metrics page reports it
    serves (vLLM and SGLang label their series with ``model_name``), the request is for a base model,
    not an adapter: every endpoint that serves that name, or reports no names at all (TGI, Triton), scores
    1.0 — neutral. Without this an idle mixed pool sent every base-model request to the vLLM pods, whose
    free adapter slots score 0.8 against 0 for engines that report no LoRA state.
    Inputs: ``lora_active`` / ``lora_waiting`` (N x A boolean tables indexed through ``lora_vocab``),
    ``lora_count``, ``max_lora``, ``served_models`` (N x M through ``model_vocab``); the request's
    ``target_model``. Category: affinity.

    Because the three values decrease down the cascade, the cascade equals
    ``max(1.0·active, 0.8·room, 0.6·waiting)``: one column gather per table and two element-wise maxima.
    ``0.8·room`` depends only on the snapshot and is prepared once. Unknown ``max_lora`` (NaN) means no
    room, as the reference's zero value does; a model no endpoint has ever listed scores 0.8 / 0.0 by room.
    """

    type_name: ClassVar[str] = "lora-affinity-scorer"
    category: ClassVar[Category] = Category.AFFINITY
    dependence: ClassVar[Dependence] = Dependence.REQUEST

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ())
        super().__init__(name, params.effective)

    def prepare(self, v: View, /) -> _LoraState:
        room = v.take(v.m.lora_count) < v.take(v.m.max_lora)
        base: F64 = np.where(room, LORA_ROOM, 0.0)
        base.flags.writeable = False
        served = v.take(v.m.served_models)
        unreported: BoolArray = np.logical_not(served.any(axis=1))
        unreported.flags.writeable = False
        return base, unreported

    def score(self, v: View, state: _LoraState, req: PickRequest, _dispatched: F64, /) -> F64:
        base, unreported = state
        scores: F64 = base
        adapter = v.m.lora_vocab.get(req.target_model)
        if adapter is not None:
            waiting = np.where(v.take_adapter(v.m.lora_waiting, adapter), LORA_WAITING, 0.0)
            scores = np.maximum(base, waiting)
            np.maximum(scores, v.take_adapter(v.m.lora_active, adapter), out=scores)
        model = v.m.model_vocab.get(req.target_model)
        if model is not None:
            neutral = v.take_adapter(v.m.served_models, model) | unreported
            scores = np.where(neutral, LORA_ACTIVE, scores)
        return scores

    def request_key(self, req: PickRequest, /) -> Hashable:
        return req.target_model

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        return (
            m.lora_count,
            m.max_lora,
            m.served_models,
            m.model_vocab,
            m.lora_vocab,
            m.lora_active,
            m.lora_waiting,
        )
