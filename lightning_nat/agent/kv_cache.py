"""Key/value caches the local policy keeps between calls, and the decode cache that grows in place.

Two kinds of reuse, both valid because attention is causal: the keys and values of a token
depend only on the ids before it and on its position, so the cache of any common prefix of
two id sequences serves both.

- :class:`PrefixCache`: the prompt head every episode shares (the task's instruction and
  examples), computed once for one row and shrunk to the longest head seen in common.
- :class:`EpisodeCache`: each row's cache at the end of the previous call, so an episode's
  next turn (its previous prompt + the text generated + the observation) prefills only what
  is new. The match is on token ids, never on text: where re-tokenising the history gives
  other ids at the boundary (a merge across the generated text's end), only the common ids'
  cache is used and the rest is prefilled again, so results are those of a full prefill.

:class:`SlabLayer` holds a decode batch's keys and values in a buffer with room for the
new tokens: a step writes one column in place instead of copying the whole cache (what
``DynamicLayer``'s concatenation costs every step).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers.cache_utils import DynamicLayer

# Per-layer (keys, values) of one row, each shaped (1, heads, length, head_dim).
Layers = list[tuple[Any, Any]]


def plain_layers(model: Any) -> bool:
    """Whether every layer of the model's cache is a full-attention ``DynamicLayer``.

    Only such caches can be cut, padded and merged column by column; a sliding-window or
    linear-attention layer keeps something else, so reuse is off for those models.
    """
    from transformers import DynamicCache

    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share.

    >>> common_length([1, 2, 3, 4], [1, 2, 5]), common_length([], [1]), common_length([7], [7])
    (2, 0, 1)
    """
    return len(os.path.commonprefix([list(a), list(b)]))


class PrefixCache:
    """The KV cache of the prompt head every row shares (the task's instruction and examples), computed once.

    Every episode's prompt starts with the same rendered head, so its keys and values are
    computed for one row the first time and reused for every row of every later call. When
    a later call shares less with the cached head (the first call had one row, whose whole
    prompt looked like a head), the cache is cut to the common part rather than recomputed.
    """

    def __init__(self, min_tokens: int = 16):
        self.min_tokens = min_tokens
        self.ids: list[int] = []
        self.layers: Layers = []

    def get(self, model: Any, rows: Sequence[Sequence[int]]) -> tuple[int, Layers]:
        """The shared prefix length used for ``rows`` and its per-layer (keys, values) for one row."""
        import torch
        from transformers import DynamicCache

        common = list(os.path.commonprefix([list(r) for r in rows]))
        common = common[:min(len(r) for r in rows) - 1]  # every row keeps at least one token to prefill
        if len(common) < self.min_tokens:
            return 0, []
        if self.ids:
            kept = common_length(self.ids, common)
            if kept >= self.min_tokens:
                if kept < len(self.ids):  # a causal cache cut at any point is the cache of the shorter head
                    self.ids = self.ids[:kept]
                    self.layers = [(k[:, :, :kept], v[:, :, :kept]) for k, v in self.layers]
                return len(self.ids), self.layers
        device = next(model.parameters()).device
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([common], device=device), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
        self.ids, self.layers = common, [(layer.keys, layer.values) for layer in cache.layers]
        return len(common), self.layers


class EpisodeCache:
    """Each row's KV cache from the previous call, found again by the ids of the next call's prompts.

    Only the last call's rows are kept: an episode's next turn comes in the very next call
    of the engine's pool, and a row not continued then (its episode ended) is dropped, so
    the memory held is one pool's caches.
    """

    def __init__(self, min_tokens: int = 16):
        self.min_tokens = min_tokens
        self._previous: list[tuple[list[int], Layers]] = []
        self._current: list[tuple[list[int], Layers]] = []

    def take(self, rows: Sequence[Sequence[int]]) -> list[tuple[int, Layers]]:
        """For each row, the longest cached prefix of its ids (length, layers); the previous call's caches go.

        A row always keeps at least one id to prefill (its logits start the decoding).
        """
        import numpy as np

        found: list[tuple[int, Layers]] = [(0, [])] * len(rows)
        entries, self._previous = self._previous, []
        if entries:
            width = max(len(ids) for ids, _ in entries)
            table = np.full((len(entries), width), -1, dtype=np.int64)
            for i, (ids, _) in enumerate(entries):
                table[i, :len(ids)] = ids
            for j, row in enumerate(rows):
                m = min(len(row) - 1, width)
                if m < self.min_tokens:
                    continue
                same = table[:, :m] == np.asarray(row[:m], dtype=np.int64)
                lengths = np.where(same.all(1), m, same.argmin(1))
                best = int(lengths.argmax())
                if lengths[best] >= self.min_tokens:
                    found[j] = (int(lengths[best]), entries[best][1])
        return found

    def put(self, ids: list[int], layers: Layers) -> None:
        """Keep one row's cache (of exactly ``ids``) for the next call."""
        self._current.append((ids, layers))

    def end_call(self) -> None:
        """The rows put during this call become the ones the next call can take."""
        self._previous, self._current = self._current, []


class RowKV:
    """One row's cached keys and values: the first ``head_len`` columns of a shared head, then the row's own.

    The shared head is not copied into the row: with shared-head attention a row's cache holds
    only its columns after the head, and ``head`` is a reference to the one copy (per layer
    (keys, values) of shape (1, kv_heads, >= head_len, dim)); ``own`` holds the rest. Without a
    head (``head_len`` 0), ``own`` is the whole row.
    """

    def __init__(self, head: Layers, head_len: int, own: Layers):
        self.head, self.head_len, self.own = head, head_len, own

    def columns(self, layer: int, start: int, end: int) -> tuple[Any, Any]:
        """Keys and values of the row's columns ``start:end`` in ``layer``, each (1, kv_heads, end - start, dim).

        >>> import torch
        >>> head = [(torch.arange(4.).view(1, 1, 4, 1),) * 2]  # a head cut to its first 3 columns
        >>> own = [(torch.arange(10., 13.).view(1, 1, 3, 1),) * 2]
        >>> RowKV(head, 3, own).columns(0, 1, 5)[0].flatten().tolist()
        [1.0, 2.0, 10.0, 11.0]
        """
        import torch

        parts = []
        if start < self.head_len:
            k, v = self.head[layer]
            stop = min(end, self.head_len)
            parts.append((k[:, :, start:stop], v[:, :, start:stop]))
        if end > self.head_len:
            k, v = self.own[layer]
            first = max(start - self.head_len, 0)
            parts.append((k[:, :, first:end - self.head_len], v[:, :, first:end - self.head_len]))
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts], -2), torch.cat([p[1] for p in parts], -2)


class SlabLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of a buffer with room to grow in place."""

    def __init__(self, keys: Any, values: Any, length: int):
        super().__init__()
        self.slab_k, self.slab_v = keys, values
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._view(length)

    def _view(self, length: int) -> None:
        self.keys, self.values = self.slab_k[:, :, :length], self.slab_v[:, :, :length]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.slab_k.shape[-2]:  # out of room: grow by at least the current size, so rarely
            extra = max(end - self.slab_k.shape[-2], self.slab_k.shape[-2])
            pad = self.slab_k.new_zeros(*self.slab_k.shape[:2], extra, self.slab_k.shape[-1])
            self.slab_k, self.slab_v = torch.cat([self.slab_k, pad], -2), torch.cat([self.slab_v, pad], -2)
        self.slab_k[:, :, start:end] = key_states
        self.slab_v[:, :, start:end] = value_states
        self._view(end)
        return self.keys, self.values

    def batch_select_indices(self, indices: Any) -> None:
        """Keep the rows ``indices`` (new row i is old row ``indices[i]``).

        When the rows that stay keep their places and only rows from past the new end fill the
        places of those that leave (what :func:`~lightning_nat.agent.decoding.leave_order` gives),
        only those rows are copied and the buffer is cut to the new batch as a view; any other
        order copies the whole buffer.
        """
        import torch

        length = self.keys.shape[-2]
        order = [int(i) for i in indices]
        batch = len(order)
        moved = [(new, old) for new, old in enumerate(order) if new != old]
        if len(set(order)) == batch and all(old >= batch for _, old in moved):
            if moved:
                dst = torch.tensor([new for new, _ in moved], device=self.slab_k.device)
                src = torch.tensor([old for _, old in moved], device=self.slab_k.device)
                self.slab_k[dst, :, :length] = self.slab_k[src, :, :length]
                self.slab_v[dst, :, :length] = self.slab_v[src, :, :length]
            self.slab_k, self.slab_v = self.slab_k[:batch], self.slab_v[:batch]
        else:
            self.slab_k, self.slab_v = self.slab_k[indices], self.slab_v[indices]
        self._view(length)
