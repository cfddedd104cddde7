"""SGLang router's ``cache_aware`` policy, re-implemented for the simulator from its documentation.

What we followed: the policy description in the ``sglang-router`` 0.3.2 package (``router.py``,
``router_args.py`` defaults: ``cache_threshold`` 0.3, ``balance_abs_threshold`` 64,
``balance_rel_threshold`` 1.5, ``eviction_interval_secs`` 60, ``max_tree_size`` 2^26), the SMG
"Cache-Aware Routing" guide, and the design notes at the top of ``sgl-router/src/policies/cache_aware.rs``
and ``tree.rs`` (sgl-project/sglang). Our summary, in our words:

* **Load** = requests the router has in flight to the worker (incremented when it forwards a request,
  decremented when the response ends). Here: ``EndpointMatrix.inflight``, which the simulator keeps exactly
  that way for every policy.
* **Imbalanced** iff ``max_load - min_load > balance_abs_threshold`` and ``max_load > balance_rel_threshold
  x min_load``. Then: the least-loaded worker (the first one on ties), and the request's text is still
  inserted into that worker's part of the tree.
* **Balanced**: walk one radix tree of raw request text shared by all workers ("tenants"); each node records
  which workers were sent text through it and when. The walk follows the request's characters as far as
  they match (into the middle of a node's label at most); match rate = matched characters / request
  characters. If the rate exceeds ``cache_threshold``, route to a worker recorded at the deepest node
  reached (the first in the node's map order, arbitrary but fixed); otherwise to the worker whose part of
  the tree holds the fewest characters ("smallest tree": most room; newer SMG versions pick the least
  loaded instead). The chosen worker's timestamps along the matched path are refreshed and the whole text
  is inserted under it.
* **Eviction**: every ``eviction_interval_secs``, for each worker holding more than ``max_tree_size``
  characters, its least recently used leaves are removed (a parent that becomes a leaf joins the queue)
  until it fits. The tree never learns what the engines actually evicted: with the default size it
  remembers far more than a GPU holds (the peer's known divergence, sglang issue #7773).

Text: the simulator's requests carry prefix units, not text (:mod:`benchmarks.sim.text`); a request's text
is the concatenation of its units' fixed character blocks. The tree stores node labels as character ranges
of the request that created them and compares unit by unit — equal units are equal text, different units
are taken to share no characters (they really share at most their first few) — so it behaves as a
character tree without building the text. Timestamps are simulated seconds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.sim.text import CHARS_PER_TOKEN, FILLER_UNIT_TOKENS, private_unit
from benchmarks.sim.traces import Workload
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest


class Text:
    """A request's prompt as unit-structured characters: unit ``k`` covers characters
    ``[k x unit_chars, (k + 1) x unit_chars)``; positions past the trace's units are private filler."""

    __slots__ = ("n", "request", "unit_chars", "units")

    def __init__(self, units: tuple[int, ...], n_chars: int, unit_chars: int, request: int) -> None:
        self.units = units
        self.n = n_chars
        self.unit_chars = unit_chars
        self.request = request

    def unit_at(self, k: int) -> int:
        return self.units[k] if k < len(self.units) else private_unit(self.request, k - len(self.units))

    def key(self, pos: int) -> int:
        """What identifies the character at ``pos`` for child lookup: its unit."""
        return self.unit_at(pos // self.unit_chars)


def common_chars(a: Text, a_end: int, b: Text, pos: int) -> int:
    """Characters ``a[pos:a_end]`` and ``b[pos:]`` share from ``pos`` (both aligned on the same units)."""
    stop = min(a_end, b.n)
    uc = a.unit_chars
    p = pos
    k = p // uc
    while p < stop and a.unit_at(k) == b.unit_at(k):
        k += 1
        p = min(k * uc, stop)
    return p - pos


class _Node:
    __slots__ = ("children", "end", "parent", "src", "start", "tenants")

    def __init__(self, src: Text | None, start: int, end: int, parent: _Node | None) -> None:
        self.src = src
        self.start = start
        self.end = end
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.tenants: dict[int, float] = {}

    @property
    def size(self) -> int:
        return self.end - self.start


class ApproxTree:
    """The multi-tenant approximate radix tree (tenants are worker indices)."""

    def __init__(self, n_workers: int, order: list[int]) -> None:
        self.root = _Node(None, 0, 0, None)
        self.chars = [0] * n_workers
        #: the "map order" in which a node's tenants are listed (a fixed permutation, like a hash order)
        self.rank = {w: r for r, w in enumerate(order)}
        for w in range(n_workers):
            self.root.tenants[w] = 0.0

    def _first(self, tenants: dict[int, float]) -> int:
        return min(tenants, key=self.rank.__getitem__)

    def _attach(self, node: _Node, tenant: int, now: float) -> None:
        if tenant not in node.tenants:
            self.chars[tenant] += node.size
        node.tenants[tenant] = now

    def insert(self, text: Text, tenant: int, now: float) -> None:
        node = self.root
        node.tenants[tenant] = now
        pos = 0
        while pos < text.n:
            key = text.key(pos)
            child = node.children.get(key)
            if child is None:
                leaf = _Node(text, pos, text.n, node)
                node.children[key] = leaf
                self._attach(leaf, tenant, now)
                return
            assert child.src is not None
            shared = common_chars(child.src, child.end, text, pos)
            if shared < child.size:  # split the child at ``pos + shared``
                mid = _Node(child.src, child.start, child.start + shared, node)
                mid.tenants = dict(child.tenants)
                child.start += shared
                child.parent = mid
                mid.children[child.src.key(child.start)] = child
                node.children[key] = mid
                child = mid
            self._attach(child, tenant, now)
            pos += shared
            node = child

    def prefix_match(self, text: Text, now: float) -> tuple[int, int]:
        """(matched characters, the worker recorded at the deepest node reached; -1 if none)."""
        node = self.root
        pos = 0
        while pos < text.n:
            child = node.children.get(text.key(pos))
            if child is None:
                break
            assert child.src is not None
            shared = common_chars(child.src, child.end, text, pos)
            pos += shared
            node = child
            if shared < child.size:
                break
        if not node.tenants:
            return pos, -1
        tenant = self._first(node.tenants)
        walk: _Node | None = node
        while walk is not None:
            walk.tenants[tenant] = now
            walk = walk.parent
        return pos, tenant

    def smallest(self) -> int:
        """The worker whose part of the tree holds the fewest characters (map order on ties)."""
        low = min(self.chars)
        return self._first({w: 0.0 for w, c in enumerate(self.chars) if c == low})

    def _leaf_of(self, node: _Node) -> list[int]:
        """Workers for which ``node`` is a leaf (they hold it and none of its children)."""
        below: set[int] = set()
        for child in node.children.values():
            below.update(child.tenants)
        return [t for t in node.tenants if t not in below]

    def evict(self, max_chars: int) -> None:
        """Drop least recently used leaves of every worker above ``max_chars`` until it fits."""
        if max(self.chars) <= max_chars:
            return
        heap: list[tuple[float, int, int, _Node]] = []
        seq = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            for t in self._leaf_of(node):
                if self.chars[t] > max_chars:
                    heap.append((node.tenants[t], seq, t, node))
                    seq += 1
        heapq.heapify(heap)
        while heap:
            _, _, t, node = heapq.heappop(heap)
            if self.chars[t] <= max_chars or t not in node.tenants or node is self.root:
                continue
            del node.tenants[t]
            self.chars[t] -= node.size
            parent = node.parent
            assert parent is not None
            if not node.children and not node.tenants:
                assert node.src is not None
                del parent.children[node.src.key(node.start)]
            if parent is not self.root and t in self._leaf_of(parent):
                heapq.heappush(heap, (parent.tenants[t], seq, t, parent))
                seq += 1


@dataclass(frozen=True, slots=True)
class CacheAwareParams:
    """``sglang-router`` 0.3.2 defaults (``router_args.py``)."""

    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    eviction_interval_s: float = 60.0
    max_tree_size: int = 2**26


def request_texts(workload: Workload) -> list[Text]:
    """Every request's text, as :class:`Text` (units of the workload's size; filler for unit-less ones)."""
    unit_tokens = workload.unit_tokens if workload.unit_tokens > 0 else FILLER_UNIT_TOKENS
    uc = unit_tokens * CHARS_PER_TOKEN
    return [
        Text(u, int(p) * CHARS_PER_TOKEN, uc, k)
        for k, (u, p) in enumerate(zip(workload.units, workload.prompt_tokens, strict=True))
    ]


class SglangCacheAware:
    """The ``cache_aware`` policy (module docstring). Needs the simulator context (``bind``)."""

    def __init__(self, params: CacheAwareParams | None = None, *, seed: int = 0) -> None:
        self.name = "sglang-cache-aware"
        self.params = params or CacheAwareParams()
        self._seed = seed
        self._texts: list[Text] = []
        self.tree: ApproxTree | None = None
        self._next_eviction = 0.0

    def bind(self, ctx: Any) -> None:
        """Called by the simulator before the first pick: the (clipped) workload and the pool size."""
        n = len(ctx.servers)
        order = np.random.default_rng([self._seed, 31]).permutation(n).tolist()
        self.tree = ApproxTree(n, order)
        self._texts = request_texts(ctx.workload)
        self._next_eviction = self.params.eviction_interval_s

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:  # noqa: ARG002 - Policy signature
        tree = self.tree
        if tree is None:
            raise RuntimeError("SglangCacheAware.pick before bind: run it through benchmarks.sim.simulate")
        p = self.params
        while now >= self._next_eviction:
            tree.evict(p.max_tree_size)
            self._next_eviction += p.eviction_interval_s
        text = self._texts[int(req.request_id)]
        load = m.inflight
        hi = float(load.max())
        lo = float(load.min())
        if hi - lo > p.balance_abs_threshold and hi > lo * p.balance_rel_threshold:
            chosen = int(np.argmin(load))
        else:
            matched, holder = tree.prefix_match(text, now)
            rate = matched / text.n if text.n else 0.0
            chosen = holder if rate > p.cache_threshold and holder >= 0 else tree.smallest()
        tree.insert(text, chosen, now)
        return chosen
