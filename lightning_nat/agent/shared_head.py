"""Shared-head (cascade) attention: the prompt head every row shares is kept once, not copied into each row.

Every episode's prompt starts with the same rendered head (the task's instruction and
examples). Copied into every row's cache, the head is most of what each decode step reads
(64 rows x ~300 head positions per layer), all of it identical. Here the batch's cache holds
only each row's own columns after the head, and attention is computed in two parts over one
softmax: every row's queries against the single copy of the head's keys (one matmul per key
head, no mask: the head is a common prefix at positions ``0..h-1``, visible to every later
token), and each row's queries against its own columns with the usual mask. Both parts share
one running maximum, so their exponentials add up to exactly the softmax over the row's whole
past, as if the head were in the row.

In a decode step (one query per row) each row's own part reads only from its first visible
column on, rows taken in chunks (:func:`step_plan`): the batch is as wide as its longest row,
and the shorter rows' leading padding was most of what a step read.

The attention function is registered with transformers' ``AttentionInterface`` under
:data:`NAME` and looks the head's keys and values up by ``module.layer_idx`` in a context that
:func:`shared_head` sets around the decoding loop; with no head set it is ``sdpa``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

NAME = "nat_shared_head"
# Per-layer (keys, values) of the shared head, each (1, kv_heads, h, head_dim); None outside a decoding call.
_HEAD: contextvars.ContextVar[Any] = contextvars.ContextVar("nat_shared_head", default=None)
# Inside shared_head(): the last decode step's (mask, plan), so the layers after the first reuse it.
_PLAN: contextvars.ContextVar[Any] = contextvars.ContextVar("nat_shared_head_plan", default=None)
# What the function cannot fold in (softcapping, sinks, windows, biases): refused rather than computed wrong.
_UNSUPPORTED = ("softcap", "sliding_window", "s_aux", "position_bias")


def attend_with_head(query: Any, keys: Any, values: Any, head_keys: Any, head_values: Any, mask: Any = None,
                     scale: float | None = None) -> Any:
    """Attention of ``query`` over the shared head followed by each row's own ``keys``/``values``.

    ``query`` is (batch, heads, q, dim); ``keys``/``values`` (batch, kv_heads, s, dim), the
    rows' own columns; ``head_keys``/``head_values`` (1, kv_heads, h, dim), one copy for all
    rows; ``mask`` over the own columns, (batch, 1, q, s) boolean (True: visible) or additive
    float, or None (causal when q > 1, the queries being the last q columns). Returns
    (batch, heads, q, dim), equal to attention over the concatenated keys.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> q, k, v = (torch.randn(3, 4, 2, 8, generator=g) for _ in range(3))
    >>> hk, hv = torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)
    >>> k, v = k[:, :2], v[:, :2]  # two key heads for four query heads (grouped queries)
    >>> m = torch.tensor([[True, True], [False, True], [True, True]])[:, None, None, :] & torch.tril(
    ...     torch.ones(2, 2, dtype=torch.bool))
    >>> full_k = torch.cat([hk.expand(3, -1, -1, -1), k], 2).repeat_interleave(2, 1)
    >>> full_v = torch.cat([hv.expand(3, -1, -1, -1), v], 2).repeat_interleave(2, 1)
    >>> full_m = torch.cat([torch.ones(3, 1, 2, 5, dtype=torch.bool), m], -1)
    >>> want = torch.nn.functional.scaled_dot_product_attention(q, full_k, full_v, attn_mask=full_m)
    >>> bool((attend_with_head(q, k, v, hk, hv, m) - want).abs().max() < 1e-5)
    True
    """
    import torch

    batch, heads, q_len, dim = query.shape
    kv_heads = head_keys.shape[1]
    groups = heads // kv_heads
    scale = dim ** -0.5 if scale is None else scale
    # Query heads kv*groups .. kv*groups+groups-1 read key head kv: group them on one axis.
    grouped = query.reshape(batch, kv_heads, groups * q_len, dim)
    # (a) the head, one copy: all rows' queries of a key head in one matmul.
    flat = grouped.transpose(0, 1).reshape(kv_heads, batch * groups * q_len, dim)
    s_head = torch.matmul(flat, head_keys[0].transpose(-1, -2)).float().mul_(scale)  # (kv, B*g*q, h)
    # (b) each row's own columns, masked.
    s_own = torch.matmul(grouped, keys.transpose(-1, -2)).float().mul_(scale)  # (B, kv, g*q, s)
    s_own = s_own.view(batch, kv_heads, groups, q_len, -1)
    if mask is None and q_len > 1:
        own = keys.shape[-2]
        mask = torch.ones(q_len, own, dtype=torch.bool, device=query.device).tril(own - q_len)[None, None]
    if mask is not None:
        mask = mask[:, :, None]  # broadcast over the query groups
        if mask.dtype == torch.bool:
            s_own = s_own.masked_fill(~mask, float("-inf"))
        else:
            s_own = s_own + mask.float()
    s_own = s_own.view(batch, kv_heads, groups * q_len, -1)
    # One maximum for both parts (the head's is always finite), so the exponentials share a scale.
    top = s_head.amax(-1).view(kv_heads, batch, groups * q_len).transpose(0, 1)
    if s_own.shape[-1]:
        top = torch.maximum(top, s_own.amax(-1))
    e_own = torch.exp(s_own - top[..., None])
    e_head = torch.exp(s_head - top.transpose(0, 1).reshape(kv_heads, -1)[..., None])
    total = e_own.sum(-1) + e_head.sum(-1).view(kv_heads, batch, groups * q_len).transpose(0, 1)
    out = torch.matmul(e_own.to(values.dtype), values).float()  # (B, kv, g*q, dim)
    out += torch.matmul(e_head.to(values.dtype), head_values[0]).float().view(
        kv_heads, batch, groups * q_len, dim).transpose(0, 1)
    out /= total[..., None]
    return out.to(query.dtype).view(batch, heads, q_len, dim)


def step_plan(mask: Any, dtype: Any = None, rows_per_chunk: int = 16) -> tuple[Any, Any, list[tuple[int, int, int]]]:
    """For one decode step's mask (batch, 1, 1, s): its additive form (in ``dtype``), which rows see any column, the chunks.

    The decode batch is as wide as its longest row, so a short row's leading columns are
    padding, and reading them is most of what a step costs (it is memory-bound). Rows go in
    chunks of ``rows_per_chunk`` neighbours (the loop puts rows longest first), each chunk
    read from its earliest visible column on: ``(first row, end row, first column)``. The
    same mask object serves every layer of a step, so the plan is made once per step.

    >>> import torch
    >>> m = torch.tensor([[True] * 4, [False, True, True, True], [False, False, True, True]])[:, None, None, :]
    >>> bias, visible, spans = step_plan(m, torch.float32, rows_per_chunk=2)
    >>> spans, visible.flatten().tolist(), bias[2].flatten().tolist()
    ([(0, 2, 0), (2, 3, 2)], [True, True, True], [-inf, -inf, 0.0, 0.0])
    """
    import torch

    held = _PLAN.get()
    if held is not None and held[0] is mask:
        return held[1]
    batch, width = mask.shape[0], mask.shape[-1]
    seen = (mask if mask.dtype == torch.bool else mask > float("-inf")).reshape(batch, width)
    any_seen = seen.any(-1)
    first = torch.where(any_seen, seen.to(torch.uint8).argmax(-1), width - 1).tolist()
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    else:
        bias = mask.to(dtype or mask.dtype)
    spans = [(lo, min(lo + rows_per_chunk, batch), min(first[lo:lo + rows_per_chunk]))
             for lo in range(0, batch, rows_per_chunk)]
    plan = (bias, any_seen.view(batch, 1, 1), spans)
    if held is not None:
        _PLAN.set((mask, plan))
    return plan


def attend_with_head_fused(query: Any, keys: Any, values: Any, head_keys: Any, head_values: Any, mask: Any = None,
                           scale: float | None = None) -> Any:
    """:func:`attend_with_head` on CPU with torch's fused attention kernel for each part, merged by log-sum-exp.

    Each part is one call of the CPU flash-attention kernel, which returns the log-sum-exp of
    its scores beside its output: the head part with every row's queries as one long sequence
    against the head (no mask), the own part per row with the mask. The two outputs are then
    weighted by ``exp(lse_part - lse_total)``. A row whose own part is fully masked (a padding
    query) gets the kernel's 0 output and log-sum-exp 0, so its own part is given weight 0.

    >>> import torch
    >>> g = torch.Generator().manual_seed(1)
    >>> q, k, v = torch.randn(3, 4, 2, 8, generator=g), *(torch.randn(3, 2, 2, 8, generator=g) for _ in range(2))
    >>> hk, hv = torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)
    >>> m = torch.tensor([[True, True], [False, False], [True, True]])[:, None, None, :] & torch.tril(
    ...     torch.ones(2, 2, dtype=torch.bool))
    >>> bool((attend_with_head_fused(q, k, v, hk, hv, m) - attend_with_head(q, k, v, hk, hv, m)).abs().max() < 1e-5)
    True
    """
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    batch, heads, q_len, dim = query.shape
    kv_heads = head_keys.shape[1]
    groups = heads // kv_heads
    scale = dim ** -0.5 if scale is None else scale
    # The head: every row's queries of a key head as one sequence of batch*groups*q queries.
    flat = query.reshape(batch, kv_heads, groups * q_len, dim).transpose(0, 1).reshape(1, kv_heads, -1, dim)
    out_head, lse_head = flash(flat, head_keys, head_values, 0.0, False, scale=scale)
    out_head = out_head.view(kv_heads, batch, groups, q_len, dim).transpose(0, 1).reshape(batch, heads, q_len, dim)
    lse_head = lse_head.view(kv_heads, batch, groups, q_len).transpose(0, 1).reshape(batch, heads, q_len)
    if keys.shape[-2] == 0:
        return out_head
    if q_len == 1 and mask is not None:
        # A decode step: rows in chunks, each reading only from its earliest visible column on; a key head's
        # query heads go as that head's queries (one visible set per row), so keys are never repeated.
        bias, visible, spans = step_plan(mask, query.dtype)
        grouped = query.view(batch, kv_heads, groups, dim)
        outs, lses = [], []
        for lo, hi, first in spans:
            o, l = flash(grouped[lo:hi], keys[lo:hi, :, first:], values[lo:hi, :, first:], 0.0, False,
                         attn_mask=bias[lo:hi, :, :, first:], scale=scale)
            outs.append(o)
            lses.append(l)
        out_own = (torch.cat(outs) if len(outs) > 1 else outs[0]).reshape(batch, heads, 1, dim)
        lse_own = (torch.cat(lses) if len(lses) > 1 else lses[0]).reshape(batch, heads, 1)
        return _merge(out_head, lse_head, out_own, lse_own, visible).to(query.dtype)
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    visible = None
    if mask is None and q_len > 1:
        own = keys.shape[-2]
        mask = torch.ones(q_len, own, dtype=torch.bool, device=query.device).tril(own - q_len)[None, None]
    if mask is not None:
        if mask.dtype == torch.bool:
            visible = mask.any(-1)  # (batch, 1, q)
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, float("-inf"))
        else:
            visible = (mask > float("-inf")).any(-1)
    out_own, lse_own = flash(query, keys, values, 0.0, False, attn_mask=mask, scale=scale)
    return _merge(out_head, lse_head, out_own, lse_own, visible).to(query.dtype)


def _merge(out_head: Any, lse_head: Any, out_own: Any, lse_own: Any, visible: Any) -> Any:
    """The two parts' outputs weighted by their share of the softmax, ``exp(lse_part - lse_total)``.

    ``visible`` (broadcast to ``lse_own``; None: every query sees an own column): where a query
    sees none, the kernel's log-sum-exp is 0, not -inf, so it is set to -inf (weight 0).
    """
    import torch

    if visible is not None:
        lse_own = lse_own.masked_fill(~visible, float("-inf"))
    total = torch.logaddexp(lse_head, lse_own)
    return out_head * torch.exp(lse_head - total)[..., None] + out_own * torch.exp(lse_own - total)[..., None]


def shared_head_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                          scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """The ``AttentionInterface`` function: :func:`attend_with_head` with the head set by :func:`shared_head`, else sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    head = _HEAD.get()
    if head is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    refused = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if refused or dropout:
        raise ValueError(f"shared-head attention cannot apply {refused or 'dropout'}; turn shared_head_attention off")
    head_keys, head_values = head[module.layer_idx]
    # The fused CPU kernel was the fastest in bench/attention_micro.py (BENCHMARKS.md); elsewhere the matmul parts.
    attend = attend_with_head_fused if query.device.type == "cpu" else attend_with_head
    out = attend(query, key, value, head_keys, head_values, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(NAME, shared_head_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # the boolean masks sdpa gets


def supports_shared_head(model: Any) -> bool:
    """Whether the model's attention can be swapped for the shared-head one: sdpa or eager, every layer indexed.

    Flash attention (GPU) keeps its own path: the loop then copies the head into each row as before.
    """
    if not hasattr(model, "set_attn_implementation"):  # a wrapper (e.g. an adapter model) around the transformer
        return False
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", "eager", NAME):
        return False
    if getattr(model.config, "attn_logit_softcapping", None) is not None:
        return False
    layers = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
    return bool(layers) and all(isinstance(getattr(m, "layer_idx", None), int) for m in layers)


@contextlib.contextmanager
def shared_head(model: Any, layers: Any) -> Iterator[None]:
    """Inside, the model's attention reads the head's per-layer (keys, values) ``layers`` before each row's own cache."""
    _register()
    before = model.config._attn_implementation
    token = _HEAD.set(layers)
    plan = _PLAN.set((None, None))
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
        _HEAD.reset(token)
        _PLAN.reset(plan)
