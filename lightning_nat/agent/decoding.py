"""The local policy's decoding loop: rows stop on token ids and leave the batch at once.

``model.generate`` runs every row of a batch until the last one stops, checks stop strings
on decoded text each step and prefills every prompt whole. Here each row's past comes from
a cache where one exists (:mod:`lightning_nat.agent.kv_cache`: the prompt head all episodes share,
or the row's own cache from the previous call, so an episode's next turn prefills only its
new ids), the rest is prefilled in groups of similar length (little padding), the KV cache
grows in place one column per step, and a row that emits EOS or completes ``Observation:``
is removed from the batch (and from the cache) at that step, so the remaining rows run
alone. Stopping needs no decoding: :class:`StopMatcher` holds each vocabulary id's text,
computed once per tokenizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from lightning_nat.agent.kv_cache import EpisodeCache, PrefixCache, RowKV, SlabLayer, plain_layers
from lightning_nat.agent.shared_head import shared_head, supports_shared_head


class StopMatcher:
    """Whether a row's newest token completes the stop string, from token ids alone.

    Every vocabulary id's text is decoded once (after an anchor token, so that word-initial
    spaces survive as they do in a sequence). A row keeps the last ``len(stop) - 1``
    characters it produced; a token ends the row when that tail plus the token's text
    contains the stop string: the stop string written with any token split, overhangs
    included (what ``model.generate``'s ``stop_strings`` matches). Only ids whose text
    holds the stop string's last character can complete it, so other ids skip the check.
    """

    def __init__(self, tokenizer: Any, stop: str):
        self.stop = stop
        anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
        size = len(tokenizer)
        texts = tokenizer.batch_decode([anchor + [i] for i in range(size)], skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False)
        base = tokenizer.decode(anchor, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        self.texts = [t[len(base):] if t.startswith(base) else t for t in texts]
        self.may_end = [stop[-1] in t for t in self.texts]

    def step(self, tail: str, token: int) -> tuple[str, bool]:
        """The row's new tail and whether ``token`` completed the stop string.

        >>> class Tok:  # a character-level stand-in
        ...     def encode(self, s, add_special_tokens=False): return [ord(c) for c in s]
        ...     def __len__(self): return 128
        ...     def decode(self, ids, **kw): return "".join(map(chr, ids))
        ...     def batch_decode(self, rows, **kw): return [self.decode(r) for r in rows]
        >>> m, tail, hits = StopMatcher(Tok(), "Obs:"), "", []
        >>> for c in "x Obs: y":
        ...     tail, hit = m.step(tail, ord(c))
        ...     hits.append(hit)
        >>> hits.index(True)
        5
        """
        text = self.texts[token] if token < len(self.texts) else ""
        joined = tail + text
        hit = self.may_end[token] and self.stop in joined if token < len(self.may_end) else False
        return joined[-(len(self.stop) - 1):] if len(self.stop) > 1 else "", hit


def _groups(lengths: Sequence[int], slack: float = 1.25) -> list[list[int]]:
    """Rows (by index) in prefill groups of similar new length, so padding stays within ``slack`` of the real tokens.

    >>> _groups([90, 5, 100, 6, 95])
    [[1, 3], [0, 4, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            g = groups[-1]
            if lengths[i] * (len(g) + 1) <= slack * (sum(lengths[j] for j in g) + lengths[i]):
                g.append(i)
                continue
        groups.append([i])
    return groups


def leave_order(keep: Sequence[int], size: int) -> list[int]:
    """The batch's rows after those not in ``keep`` leave: new row i is old row ``order[i]``.

    Rows that stay keep their places; the places of leaving rows are filled by the last rows
    that stay (the batch's shortest: rows are put longest first), so moving the cache takes
    a copy of those rows only, not of the whole batch.

    >>> leave_order([0, 2, 3, 5], 6), leave_order([1, 2], 3), leave_order([0, 1], 4)
    ([0, 5, 2, 3], [2, 1], [0, 1])
    """
    staying = set(keep)
    holes = [j for j in range(len(keep)) if j not in staying]
    movers = [j for j in range(size - 1, len(keep) - 1, -1) if j in staying]
    order = list(range(len(keep)))
    for hole, mover in zip(holes, movers):
        order[hole] = mover
    return order


def _prefill(model: Any, news: Sequence[Sequence[int]], pasts: Sequence[tuple[int, RowKV]], pad_id: int,
             start: int = 0) -> tuple:
    """One forward over rows that each continue their own cached past: (last logits, cache, mask, next positions).

    A row is laid out as padding, its past from column ``start`` on (``start`` is the shared
    head's length when shared-head attention supplies the head), padding, its new ids (both
    left-padded to the group's widths), with position ids that skip the padding.
    """
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    batch, width_past, width_new = len(news), max(c - start for c, _ in pasts), max(len(n) for n in news)
    cache = DynamicCache(config=model.config)
    if width_past:
        some = next(kv for c, kv in pasts if c > start)
        layers = []
        for li in range(len(some.head or some.own)):
            k0 = some.columns(li, start, start + 1)[0]
            # Room for the new ids, so the forward writes them in place instead of concatenating.
            keys = k0.new_empty(batch, k0.shape[1], width_past + width_new, k0.shape[3])
            values = torch.empty_like(keys)
            for b, (c, kv) in enumerate(pasts):
                own = c - start
                keys[b, :, :width_past - own], values[b, :, :width_past - own] = 0, 0  # padding: finite, masked
                if own:
                    k, v = kv.columns(li, start, c)
                    keys[b, :, width_past - own:width_past], values[b, :, width_past - own:width_past] = k[0], v[0]
            layers.append(SlabLayer(keys, values, width_past))
        cache.layers = layers
    mask = torch.zeros(batch, width_past + width_new, dtype=torch.long, device=device)
    positions = torch.ones(batch, width_new, dtype=torch.long, device=device)
    input_ids = torch.full((batch, width_new), pad_id, dtype=torch.long, device=device)
    for b, ((c, _), new) in enumerate(zip(pasts, news)):
        mask[b, width_past - (c - start):width_past] = 1
        mask[b, width_past + width_new - len(new):] = 1
        positions[b, width_new - len(new):] = torch.arange(c, c + len(new))
        input_ids[b, width_new - len(new):] = torch.tensor(list(new), dtype=torch.long)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return logits, cache, mask, positions[:, -1:] + 1


def _run(cols: Any) -> Any:
    """Column indices as a slice when they are one run (most rows: no inner padding), so taking them is no gather.

    >>> import torch
    >>> _run(torch.tensor([3, 4, 5])), _run(torch.tensor([1, 3])).tolist()
    (slice(3, 6, None), [1, 3])
    """
    first, last = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
    return slice(first, last) if last - first == len(cols) else cols


def _slab(model: Any, groups: list[list[int]], done: list[tuple], max_new_tokens: int) -> tuple:
    """The prefilled groups as one decode batch: (logits, cache, mask, next positions, original row of each slot).

    Each row's real columns (its mask's ones: the group's padding, inner padding included,
    left out) are right-aligned, so the batch is as wide as its longest row, not as the widest
    group's layout; rows are put longest first.
    """
    import torch
    from transformers import DynamicCache

    real = {r: g_mask[i].nonzero().squeeze(1) for g, (_, _, g_mask, _) in zip(groups, done) for i, r in enumerate(g)}
    order = sorted(real, key=lambda r: -len(real[r]))
    slot = {r: s for s, r in enumerate(order)}
    batch, width = len(order), max(len(c) for c in real.values())
    first = done[0]
    logits = torch.empty(batch, first[0].shape[-1], dtype=first[0].dtype, device=first[0].device)
    mask = first[2].new_zeros(batch, width)
    next_pos = first[3].new_zeros(batch, 1)
    slabs = []
    for layer in first[1].layers:
        # Uninitialised: each row's padding is zeroed below, its real columns copied, later ones written by steps.
        shape = (batch, layer.keys.shape[1], width + max_new_tokens, layer.keys.shape[3])
        slabs.append((layer.keys.new_empty(shape), layer.values.new_empty(shape)))
    for g, (g_logits, g_cache, _, g_pos) in zip(groups, done):
        for i, r in enumerate(g):
            s, cols = slot[r], real[r]
            span, take = len(cols), _run(cols)
            logits[s], next_pos[s] = g_logits[i], g_pos[i]
            mask[s, width - span:] = 1
            for (keys, values), layer in zip(slabs, g_cache.layers):
                keys[s, :, :width - span], values[s, :, :width - span] = 0, 0  # padding: finite, masked
                keys[s, :, width - span:width] = layer.keys[i, :, take]
                values[s, :, width - span:width] = layer.values[i, :, take]
    cache = DynamicCache(config=model.config)
    cache.layers = [SlabLayer(k, v, width) for k, v in slabs]
    return logits, cache, mask, next_pos, order


def decode(model: Any, rows_ids: Sequence[Sequence[int]], stops: StopMatcher, max_new_tokens: int,
           temperature: float = 0.0, stop_ids: Sequence[int] = (), pad_id: int = 0,
           prefix: PrefixCache | None = None, episodes: EpisodeCache | None = None,
           reused: list[int] | None = None, shared: bool = True) -> list[list[int]]:
    """New token ids per row (EOS left out), each row ending at EOS, the stop string or ``max_new_tokens``.

    Greedy when ``temperature`` is 0, else sampling from the softmax at that temperature
    (no top-k/top-p, as the former ``generate`` call). A row's past comes from the longest
    cached prefix of its ids: the shared head (``prefix``) or its own cache from the previous
    call (``episodes``, which also receives every row's cache at the end); only the rest is
    prefilled, in groups of similar length. ``reused``, if given, gets each row's number of
    prompt ids taken from a cache. With ``shared`` (and a model whose attention allows it,
    :func:`~lightning_nat.agent.shared_head.supports_shared_head`), the head is kept once and
    attended by :mod:`~lightning_nat.agent.shared_head`: the batch's cache holds only each row's
    columns after it.
    """
    import torch

    batch = len(rows_ids)
    if max_new_tokens <= 0 or batch == 0:
        return [[] for _ in range(batch)]
    plain = plain_layers(model)
    head_len, head = prefix.get(model, rows_ids) if prefix is not None and plain else (0, [])
    # The columns before ``start`` (the head) are attended from their one copy, not put in the rows' cache.
    start = head_len if shared and head_len and supports_shared_head(model) else 0
    nothing = RowKV([], 0, [])
    own = episodes.take(rows_ids) if episodes is not None and plain else [(0, nothing)] * batch
    pasts = [o if o[0] > head_len else (head_len, RowKV(head, head_len, [])) for o in own]
    if reused is not None:
        reused[:] = [c for c, _ in pasts]
    news = [list(r[c:]) for r, (c, _) in zip(rows_ids, pasts)]
    groups = _groups([len(n) for n in news]) if plain else [list(range(batch))]
    with shared_head(model, head) if start else contextlib.nullcontext():
        out: list[list[int]] = [[] for _ in range(batch)]
        with torch.no_grad():
            done = [_prefill(model, [news[i] for i in g], [pasts[i] for i in g], pad_id, start) for g in groups]
        rows = list(range(batch))  # the original index of each row still in the batch
        if len(groups) == 1 and not plain:
            logits, cache, mask, next_pos = done[0]
        else:  # one decode batch: each row's real columns right-aligned in a buffer with room for the new tokens
            logits, cache, mask, next_pos, rows = _slab(model, groups, done, max_new_tokens)
        bias = None
        if start:  # the shared-head attention takes the model's mask as given when it is 4D: an additive
            # one kept here with room for the new tokens is then not rebuilt from the 2D mask at every step.
            bias = torch.zeros(len(rows), 1, 1, mask.shape[1] + max_new_tokens, dtype=model.dtype, device=mask.device)
            bias[:, 0, 0, :mask.shape[1]].masked_fill_(mask == 0, float("-inf"))
        tails = [""] * batch
        ends = set(int(i) for i in stop_ids)

        def keep_cache(js: Sequence[int], fed: int) -> None:
            # A leaving row's cache holds its prompt and the ``fed`` tokens generated before this step.
            if episodes is None or not plain:
                return
            for j in js:
                cols = mask[j].nonzero().squeeze(1)
                ids = list(rows_ids[rows[j]]) + out[rows[j]][:fed]
                if start + len(cols) != len(ids):
                    raise RuntimeError(f"row cache of {start} + {len(cols)} columns for {len(ids)} ids")
                take = _run(cols)  # copied below: the slab is not kept
                episodes.put(ids, RowKV(head if start else [], start,
                                        [(layer.keys[j:j + 1, :, take].clone(), layer.values[j:j + 1, :, take].clone())
                                         for layer in cache.layers]))

        with torch.no_grad():
            for step in range(max_new_tokens):
                logits = logits.float()
                if temperature > 0:
                    tokens = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1).squeeze(1)
                else:
                    tokens = logits.argmax(-1)
                keep = []
                for j, token in enumerate(tokens.tolist()):
                    r = rows[j]
                    if token in ends:
                        continue
                    out[r].append(token)
                    tails[r], hit = stops.step(tails[r], token)
                    if not hit:
                        keep.append(j)
                last = not keep or step == max_new_tokens - 1
                staying = set() if last else set(keep)
                keep_cache([j for j in range(len(rows)) if j not in staying], step)
                if last:
                    break
                if len(keep) < len(rows):  # stopped rows leave the batch and the cache now
                    order = leave_order(keep, len(rows))
                    index = torch.tensor(order, device=tokens.device)
                    cache.batch_select_indices(index)
                    mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                    bias = None if bias is None else bias[index]
                    rows = [rows[j] for j in order]
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                given = mask if bias is None else bias[..., :mask.shape[1]]
                logits = model(input_ids=tokens[:, None], attention_mask=given, position_ids=next_pos,
                               past_key_values=cache, use_cache=True).logits[:, -1, :]
                next_pos = next_pos + 1
        if episodes is not None:
            episodes.end_call()
        return out
