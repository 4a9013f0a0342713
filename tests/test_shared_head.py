"""Shared-head (cascade) attention: the head kept once gives what the head copied into every row gives (issue 12)."""

import pytest
import torch

from lightning_nat.agent.shared_head import attend_with_head, attend_with_head_fused, shared_head, shared_head_attention


def _plain(q, k, v, hk, hv, mask):
    """Reference: SDPA over the head copied in front of every row's own columns, key heads repeated."""
    batch, groups = q.shape[0], q.shape[1] // k.shape[1]
    full_k = torch.cat([hk.expand(batch, -1, -1, -1), k], 2).repeat_interleave(groups, 1)
    full_v = torch.cat([hv.expand(batch, -1, -1, -1), v], 2).repeat_interleave(groups, 1)
    q_len, h = q.shape[2], hk.shape[2]
    if mask is None:
        own = k.shape[2]
        mask = torch.ones(q_len, own, dtype=torch.bool).tril(own - q_len)[None, None].expand(batch, 1, -1, -1)
    if mask.dtype != torch.bool:
        mask = mask > float("-inf")
    full_mask = torch.cat([torch.ones(batch, 1, q_len, h, dtype=torch.bool), mask.expand(batch, 1, -1, -1)], -1)
    return torch.nn.functional.scaled_dot_product_attention(q, full_k, full_v, attn_mask=full_mask)


@pytest.mark.parametrize("attend", [attend_with_head, attend_with_head_fused])
@pytest.mark.parametrize("heads,kv_heads,q_len,mask_kind", [
    (4, 4, 1, "bool"), (4, 2, 1, "bool"), (4, 4, 7, "bool"), (6, 2, 5, "float"), (4, 4, 6, "none"),
    (4, 1, 1, "bool")])
def test_shared_head_attention_equals_plain_attention(attend, heads, kv_heads, q_len, mask_kind):
    g = torch.Generator().manual_seed(heads * 100 + q_len)
    batch, own, h, dim = 5, 9, 11, 16
    q = torch.randn(batch, heads, q_len, dim, generator=g)
    k, v = (torch.randn(batch, kv_heads, own, dim, generator=g) for _ in range(2))
    hk, hv = (torch.randn(1, kv_heads, h, dim, generator=g) for _ in range(2))
    mask = None
    if mask_kind != "none":
        # Left padding of 0..4 columns per row, then causal over the last q_len columns.
        mask = torch.ones(batch, 1, q_len, own, dtype=torch.bool)
        for b in range(batch):
            mask[b, ..., :b] = False
        mask &= torch.ones(q_len, own, dtype=torch.bool).tril(own - q_len)
        if mask_kind == "float":
            mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    got, want = attend(q, k, v, hk, hv, mask), _plain(q, k, v, hk, hv, mask)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5
    # The test can fail: leaving the head out of the reference changes the outputs by far more.
    assert (got - _plain(q, k, v, hk[:, :, :1], hv[:, :, :1], mask)).abs().max().item() > 1e-2


def test_a_fully_masked_own_part_attends_to_the_head_only():
    """A padding query sees no own column; its output is the head's attention alone, not NaN."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 2, 1, 8, generator=g), torch.randn(2, 2, 4, 8, generator=g), torch.randn(2, 2, 4, 8,
                                                                                                       generator=g)
    hk, hv = torch.randn(1, 2, 3, 8, generator=g), torch.randn(1, 2, 3, 8, generator=g)
    mask = torch.tensor([[False] * 4, [True] * 4])[:, None, None, :]
    head_only = torch.nn.functional.scaled_dot_product_attention(q[:1], hk, hv)
    for attend in (attend_with_head, attend_with_head_fused):
        out = attend(q, k, v, hk, hv, mask)
        assert not out.isnan().any() and (out[:1] - head_only).abs().max().item() < 1e-5


def test_attention_refuses_what_it_cannot_fold_in():
    class Layer:
        layer_idx = 0

    q = torch.zeros(1, 1, 1, 4)
    with _head_context([(q, q)]):
        with pytest.raises(ValueError, match="softcap"):
            shared_head_attention(Layer(), q, q, q, None, softcap=30.0)


def _head_context(layers):
    from lightning_nat.agent import shared_head as module

    class Context:
        def __enter__(self):
            self.token = module._HEAD.set(layers)

        def __exit__(self, *exc):
            module._HEAD.reset(self.token)

    return Context()


def _model(scratch_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(scratch_model)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # wider weights than the scratch init, so that logits differ between positions
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model, AutoTokenizer.from_pretrained(str(scratch_model))


def test_scratch_model_logits_with_the_head_kept_once_equal_a_full_forward(scratch_model):
    """Prefill then one decode step over rows after a shared head, with and without the head in the cache."""
    from transformers import DynamicCache

    model, _ = _model(scratch_model)
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    head = torch.randint(5, vocab, (20,), generator=g).tolist()
    own = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (6, 3, 8)]
    width = max(len(o) for o in own)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for b, o in enumerate(own):
        ids[b, width - len(o):], mask[b, width - len(o):] = torch.tensor(o), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + len(head)
    with torch.no_grad():
        # Reference: every row carries the head (left-padded in front of it), the usual path.
        full_ids = torch.cat([torch.tensor(head).expand(3, -1), ids], 1)
        full_mask = torch.cat([torch.ones(3, len(head), dtype=torch.long), mask], 1)
        full_pos = torch.cat([torch.arange(len(head)).expand(3, -1), positions], 1)
        ref_cache = DynamicCache(config=model.config)
        want = model(input_ids=full_ids, attention_mask=full_mask, position_ids=full_pos, past_key_values=ref_cache,
                     use_cache=True).logits[:, len(head):]
        # Shared head: its cache computed once for one row; the rows' cache holds only their own columns.
        head_cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([head]), past_key_values=head_cache, use_cache=True)
        layers = [(layer.keys, layer.values) for layer in head_cache.layers]
        cache = DynamicCache(config=model.config)
        with shared_head(model, layers):
            got = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True).logits
            assert cache.get_seq_length() == width  # the head is not in the rows' cache
            step = torch.tensor([[7], [8], [9]])
            mask2, pos2 = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1), positions[:, -1:] + 1
            got_step = model(input_ids=step, attention_mask=mask2, position_ids=pos2, past_key_values=cache,
                             use_cache=True).logits
        want_step = model(input_ids=step, attention_mask=torch.cat([full_mask, mask2[:, -1:]], 1), position_ids=pos2,
                          past_key_values=ref_cache, use_cache=True).logits
        assert model.config._attn_implementation == "sdpa"  # restored on leaving
        # Without the head the same call gives other logits: the comparison can fail.
        alone = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() < 1e-5
    assert (got_step - want_step).abs().max().item() < 1e-5
    assert (alone[real] - want[real]).abs().max().item() > 1e-2


def test_decode_with_the_head_kept_once_equals_the_head_copied(scratch_model, shared_data, monkeypatch):
    """Two calls of the decoding loop (the second continuing each row's cache): same ids either way, head shared."""
    from lightning_nat.agent import shared_head as module
    from lightning_nat.agent.decoding import StopMatcher, decode
    from lightning_nat.agent.kv_cache import EpisodeCache, PrefixCache
    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.core.prompts import head_messages, make_spec
    from lightning_nat.core.tasks import TASKS, load_questions_for

    model, tok = _model(scratch_model)
    policy = HFPolicy(model, tok)
    spec = make_spec("gsm8k")
    records = load_questions_for(TASKS["gsm8k"], data_dir=str(shared_data), limit=5)
    ids = tok([policy.render(head_messages(spec, r["question"])) for r in records], add_special_tokens=False)[
        "input_ids"]
    stops, eos = StopMatcher(tok, "Observation:"), [tok.eos_token_id]
    calls = []
    real = module.attend_with_head_fused
    monkeypatch.setattr(module, "attend_with_head_fused", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = {}
    for shared in (True, False):
        prefix, episodes = PrefixCache(), EpisodeCache()
        first = decode(model, ids, stops, 10, 0.0, eos, tok.pad_token_id, prefix, episodes, shared=shared)
        nexts = [row + out + tok.encode(" Observation: 4\n", add_special_tokens=False) for row, out in zip(ids, first)]
        reused: list[int] = []
        second = decode(model, nexts, stops, 10, 0.0, eos, tok.pad_token_id, prefix, episodes, reused, shared=shared)
        runs[shared] = (first, second, reused, len(prefix.ids), list(episodes._previous))
        if shared:
            assert calls, "the shared-head attention was not used"
            calls.clear()
        else:
            assert not calls
    assert runs[True][:4] == runs[False][:4]
    head_len = runs[True][3]
    assert head_len > 16 and min(runs[True][2]) > head_len  # the second call continued the rows' own caches
    # With the head shared, a kept row's cache holds only its columns after the head.
    for row_ids, kv in runs[True][4]:
        assert kv.head_len == head_len and kv.own[0][0].shape[2] == len(row_ids) - head_len
    for row_ids, kv in runs[False][4]:
        assert kv.head_len == 0 and kv.own[0][0].shape[2] == len(row_ids)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_a_decode_step_in_chunks_equals_plain_attention(heads, kv_heads):
    """A decode step over 40 rows (3 chunks) with left padding of every width, unsorted, one row all padding."""
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    batch, own, h, dim = 40, 30, 7, 16
    q = torch.randn(batch, heads, 1, dim, generator=g)
    k, v = (torch.randn(batch, kv_heads, own, dim, generator=g) for _ in range(2))
    hk, hv = (torch.randn(1, kv_heads, h, dim, generator=g) for _ in range(2))
    pads = torch.randperm(own, generator=g).tolist() + torch.randint(0, own, (batch - own,), generator=g).tolist()
    pads[5] = own  # a padding row: sees the head only
    mask = torch.ones(batch, 1, 1, own, dtype=torch.bool)
    for b, p in enumerate(pads):
        mask[b, ..., :p] = False
        k[b, :, :p] = 1e4  # padding keys that would take over a row's softmax if the mask let them in
    got = attend_with_head_fused(q, k, v, hk, hv, mask)
    assert not got.isnan().any()
    assert (got - _plain(q, k, v, hk, hv, mask)).abs().max().item() < 1e-5


def test_the_step_plan_is_made_again_for_a_new_mask():
    """Inside the context the plan is kept per mask object: the next step's mask never gets the last one's chunks."""
    from lightning_nat.agent.shared_head import step_plan

    first = torch.ones(3, 1, 1, 4, dtype=torch.bool)
    second = first.clone()
    second[2, ..., :3] = False
    with _plan_context():
        plan = step_plan(first, torch.float32, rows_per_chunk=2)
        assert step_plan(first, torch.float32, rows_per_chunk=2) is plan
        assert step_plan(second, torch.float32, rows_per_chunk=2)[2] == [(0, 2, 0), (2, 3, 3)]
    assert plan[2] == [(0, 2, 0), (2, 3, 0)]


def _plan_context():
    import contextlib

    from lightning_nat.agent import shared_head as module

    @contextlib.contextmanager
    def context():
        token = module._PLAN.set((None, None))
        try:
            yield
        finally:
            module._PLAN.reset(token)

    return context()
