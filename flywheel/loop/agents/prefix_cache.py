"""Per-row KV caches a policy keeps between its calls, so that each live episode's context is
run through the model once and every later turn feeds only the tokens appended since.

    python -m pytest -q tests/loop/agents/test_prefix_cache.py

The collector hands the policy each live episode's whole context every turn, and a context
only grows: the model's turn, then the tool results and the next assistant header. So
``PrefixCache`` keeps the transformers ``DynamicCache`` of the last call, a slot mask (which
cache slots hold one of the row's tokens: padding and the tokens fed after a row stopped do
not) and the token ids each row's slots hold. ``take`` matches each new context to a cached
row whose ids are a proper prefix of it and gathers those rows' slots into a fresh batch;
the rows of episodes that ended are dropped, and a context that extends no cached row (a new
episode, a rewritten conversation) gets no cached slots: a full prefill of its tokens.

Slots may move: a cached key already carries its rotary position (it is stored after RoPE),
so where it sits along the cache does not matter, only the mask and the position ids given
with the next tokens (the count of the row's real tokens before each). ``take`` therefore
squeezes the holes out, right-aligning every row's real slots, and the cache stays as wide
as the longest row. Only full-attention caches are kept (``new_cache`` gives them
``SlabLayer``s): a sliding-window or linear-attention layer holds state that cannot be
gathered this way.

``SlabLayer`` appends a token's keys and values in place into spare room reserved for the
call's new tokens, where ``DynamicLayer`` concatenates, copying the whole cache at every
token: on a CPU that copy cost as much as the attention itself for a batch of 64 episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class SlabLayer(DynamicLayer):
    """A full-attention cache layer whose ``keys``/``values`` are views of a larger slab: an
    update writes into the spare slots, and only one that does not fit (or follows a
    ``refill``) copies, into a new slab with ``reserve`` spare slots after it."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = reserve
        self.slabs: tuple[torch.Tensor, torch.Tensor] | None = None

    def refill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold exactly ``keys`` and ``values`` (batch, heads, slots, dim)."""
        self.device, self.is_initialized = keys.device, True
        self.keys, self.values, self.slabs = keys, values, None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *_: Any, **__: Any):
        if not self.is_initialized:
            self.refill(key_states[:, :, :0], value_states[:, :, :0])
        held, new = self.keys.shape[-2], key_states.shape[-2]
        if not self._fits(held + new):
            shape = (*key_states.shape[:2], held + new + self.reserve, key_states.shape[-1])
            slabs = [t.new_empty(shape) for t in (self.keys, self.values)]
            slabs[0][:, :, :held], slabs[1][:, :, :held] = self.keys, self.values
            self.slabs = (slabs[0], slabs[1])
        keys, values = self.slabs
        keys[:, :, held : held + new], values[:, :, held : held + new] = key_states, value_states
        self.keys, self.values = keys[:, :, : held + new], values[:, :, : held + new]
        return self.keys, self.values

    def _fits(self, size: int) -> bool:
        """Whether the slab is there, has room for ``size`` slots, and still begins with the
        held states (anything that replaced ``keys`` since did not write into it)."""
        if self.slabs is None or self.slabs[0].shape[-2] < size:
            return False
        slab = self.slabs[0]
        return self.keys.data_ptr() == slab.data_ptr() and self.keys.shape[0] == slab.shape[0]


@dataclass
class Taken:
    """The cache rows for one call: ``cache`` (None: nothing cached), its slot mask
    (batch, slots; 1 where a slot holds a token of the row) and how many leading tokens of
    each context the cache holds."""

    cache: Any
    mask: Any
    held: list[int]


def new_cache(config: Any, reserve: int) -> Any:
    """An empty ``DynamicCache`` for a model of ``config``; its layers are ``SlabLayer``s
    (``reserve`` spare slots per update) when they would all be plain ``DynamicLayer``s."""
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [SlabLayer(reserve) for _ in cache.layers]
    return cache


def keepable(cache: Any) -> bool:
    """Whether ``cache``'s rows can be gathered between calls (all its layers are slabs)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(isinstance(layer, SlabLayer) for layer in layers)


def match(cached: list[list[int]], contexts: list[list[int]]) -> list[int | None]:
    """For each context, the index of a cached row it extends (its ids a proper prefix of the
    context's), or None. Contexts usually come in the cached rows' order with some rows gone,
    so the search starts after the last match: about one comparison per context."""
    found: list[int | None] = []
    start = 0
    for ids in contexts:
        hit = None
        for k in chain(range(start, len(cached)), range(start)):
            held = cached[k]
            n = len(held)
            if n < len(ids) and ids[n - 1] == held[-1] and ids[:n] == held:
                hit = k
                break
        found.append(hit)
        start = start if hit is None else hit + 1
    return found


class PrefixCache:
    """The rows of the last call: ``take`` the ones the next call extends, ``keep`` what it
    left behind."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.cache: Any = None
        self.mask: Any = None
        self.ids: list[list[int]] = []

    def keep(self, cache: Any, mask: Any, ids: list[list[int]]) -> None:
        """Remember ``cache`` (its slot ``mask``, the ids each row's slots hold) for the next
        call, or nothing when its layers cannot be gathered (``keepable``)."""
        if not keepable(cache):
            self.clear()
            return
        if [int(n) for n in mask.sum(dim=1).tolist()] != [len(r) for r in ids]:
            raise ValueError("a cached row's slot mask does not count its token ids")
        self.cache, self.mask, self.ids = cache, mask, ids

    def take(self, contexts: list[list[int]], device: Any) -> Taken:
        """The cached rows ``contexts`` extend, gathered in their order and right-aligned; the
        cache itself is consumed (the next ``keep`` replaces it)."""
        sources = match(self.ids, contexts) if self.cache is not None else []
        cache, mask = self.cache, self.mask
        self.clear()
        if not any(s is not None for s in sources):
            empty = torch.zeros(len(contexts), 0, dtype=torch.long, device=device)
            return Taken(None, empty, [0] * len(contexts))
        held = [0 if s is None else int(mask[s].sum()) for s in sources]
        width = max(held)
        # a stable sort of the 0/1 mask puts each row's real slots last, in their order
        order = torch.sort(mask, dim=1, stable=True)
        rows = torch.tensor([0 if s is None else s for s in sources], device=mask.device)
        slots = order.indices[rows, -width:]
        matched = torch.tensor([s is not None for s in sources], device=mask.device)
        new_mask = order.values[rows, -width:] * matched[:, None]
        for layer in cache.layers:
            layer.refill(_gather(layer.keys, rows, slots), _gather(layer.values, rows, slots))
        return Taken(cache, new_mask, held)


def _gather(states: Any, rows: Any, slots: Any) -> Any:
    """``states`` (batch, heads, slots, dim) at batch ``rows`` and, per row, ``slots``."""
    states = states.index_select(0, rows)
    index = slots[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[3])
    return states.gather(2, index)
