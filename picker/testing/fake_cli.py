"""``picker fake-server``: flags → :func:`picker.testing.fake_server.run_fake_server`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses

from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import DEFAULT_MODEL, run_fake_server


def load_params_from_args(ns: argparse.Namespace) -> LoadParams:
    changes = {
        name: getattr(ns, name)
        for name in ("max_num_seqs", "num_blocks", "max_lora")
        if getattr(ns, name, None) is not None
    }
    params = dataclasses.replace(LoadParams(), **changes)
    return params.slower(ns.slower) if ns.slower != 1.0 else params


def run_fake_server_cli(ns: argparse.Namespace) -> int:
    coro = run_fake_server(
        engine=ns.engine,
        port=ns.port,
        host=ns.host,
        models=tuple(ns.model or (DEFAULT_MODEL,)),
        lora_adapters=tuple(ns.lora or ()),
        load=load_params_from_args(ns),
        time_scale=ns.time_scale,
        seed=ns.seed,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    return 0
