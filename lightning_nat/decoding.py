"""The local policy's decoding loop: rows stop on token ids and leave the batch at once.

``model.generate`` runs every row of a batch until the last one stops and checks stop
strings on decoded text each step. Here the batch is prefilled once (left-padded), the KV
cache grows one token per step, and a row that emits EOS or completes ``Observation:``
is removed from the batch (and from the cache) at that step, so the remaining rows run
alone. Stopping needs no decoding: :class:`StopMatcher` holds each vocabulary id's text,
computed once per tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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


class PrefixCache:
    """The KV cache of the prompt head every row shares (the task's instruction and examples), computed once.

    Every episode's prompt starts with the same rendered head, so its keys and values are
    computed for one row the first time and reused for every row of every later batch.
    """

    def __init__(self, min_tokens: int = 16):
        self.min_tokens = min_tokens
        self.ids: list[int] = []
        self.layers: list[tuple[Any, Any]] = []

    def get(self, model: Any, rows: Sequence[Sequence[int]]) -> tuple[int, list[tuple[Any, Any]]]:
        """The shared prefix length used for ``rows`` and its per-layer (keys, values) for one row."""
        import os

        import torch
        from transformers import DynamicCache

        common = list(os.path.commonprefix([list(r) for r in rows]))
        common = common[:min(len(r) for r in rows) - 1]  # every row keeps at least one token to prefill
        if len(common) < self.min_tokens:
            return 0, []
        if self.ids and common[:len(self.ids)] == self.ids:
            return len(self.ids), self.layers
        device = next(model.parameters()).device
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([common], device=device), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
        self.ids, self.layers = common, [(layer.keys, layer.values) for layer in cache.layers]
        return len(common), self.layers


def decode(model: Any, rows_ids: Sequence[Sequence[int]], stops: StopMatcher, max_new_tokens: int,
           temperature: float = 0.0, stop_ids: Sequence[int] = (), pad_id: int = 0,
           prefix: PrefixCache | None = None) -> list[list[int]]:
    """New token ids per row (EOS left out), each row ending at EOS, the stop string or ``max_new_tokens``.

    Greedy when ``temperature`` is 0, else sampling from the softmax at that temperature
    (no top-k/top-p, as the former ``generate`` call). With ``prefix``, the rows' shared head
    comes from its cache and only the rest is prefilled; a row is laid out as head, padding,
    own tokens, with position ids that skip the padding, so no row is shifted by it.
    """
    import torch
    from transformers import DynamicCache

    batch = len(rows_ids)
    out: list[list[int]] = [[] for _ in range(batch)]
    if max_new_tokens <= 0 or batch == 0:
        return out
    device = next(model.parameters()).device
    shared, layers = prefix.get(model, rows_ids) if prefix is not None else (0, [])
    rest = [list(r[shared:]) for r in rows_ids]
    width = max(len(r) for r in rest)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rest], device=device)
    own = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)
    mask = torch.cat([own.new_ones((batch, shared)), own], dim=1)
    positions = (shared + own.cumsum(-1) - 1).masked_fill(own == 0, 1)
    cache = DynamicCache(config=model.config)
    for i, (keys, values) in enumerate(layers):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), i)
    rows = list(range(batch))  # the original index of each row still in the batch
    tails = [""] * batch
    ends = set(int(i) for i in stop_ids)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
        next_pos = positions[:, -1:] + 1
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
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(rows):  # stopped rows leave the batch and the cache now
                index = torch.tensor(keep, device=tokens.device)
                cache.batch_select_indices(index)
                mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                rows = [rows[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                           past_key_values=cache, use_cache=True).logits[:, -1, :]
            next_pos = next_pos + 1
    return out
