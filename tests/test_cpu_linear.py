"""The engine's packed CPU linear layers (lightning_nat.agent.cpu_linear): same results, put back afterwards."""

import os

import pytest
import torch

from lightning_nat.agent.cpu_linear import PackedLinears, packed_kernel_available

needs_kernel = pytest.mark.skipif(not packed_kernel_available() and not os.environ.get("CI"),
                                  reason="this torch has no oneDNN packed linear (CI's pinned wheel has)")


class Counting:
    """Counts the packed kernel's calls (stands in for torch.ops.mkldnn._linear_pointwise)."""

    def __init__(self):
        self.real, self.calls = torch.ops.mkldnn._linear_pointwise, 0

    def __call__(self, *args):
        self.calls += 1
        return self.real(*args)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.SiLU(), torch.nn.Linear(64, 8, bias=False))


@needs_kernel
def test_packed_layers_give_the_stock_results_and_are_put_back(monkeypatch):
    counting = Counting()
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
    net, linears = _net(), PackedLinears(min_rows=16)
    x, few = torch.randn(40, 32), torch.randn(3, 32)
    with torch.no_grad():
        want, want_few = net(x), net(few)
        with linears.active(net) as swapped:
            assert swapped == 2 and all("forward" in m.__dict__ for m in (net[0], net[2]))
            got = net(x)
            assert counting.calls == 2
            got_few = net(few)  # under min_rows: the stock kernel, bit for bit
            assert counting.calls == 2
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5) and torch.equal(got_few, want_few)
    assert not any("forward" in m.__dict__ for m in net)  # the module's own forward again
    with linears.active(net):  # gradients on: the stock path, so training through it is unchanged
        loss = net(x).sum()
    loss.backward()
    assert net[0].weight.grad is not None and counting.calls == 2


@needs_kernel
def test_a_changed_weight_is_packed_again():
    net, linears = _net(), PackedLinears(min_rows=1)
    x = torch.randn(20, 32)
    with torch.no_grad():
        with linears.active(net):
            before = net(x)
        net[2].weight.mul_(2)  # trained in between: same storage, new version
        with linears.active(net):
            after = net(x)
    assert torch.allclose(after, 2 * before, atol=1e-5, rtol=1e-5)


def test_hooked_quantised_or_double_layers_keep_their_own_forward():
    class Quantised(torch.nn.Linear):
        pass

    hooked = torch.nn.Linear(4, 4)
    hooked.register_forward_pre_hook(lambda module, args: None)  # e.g. ZeRO-3 gathering its weight
    net = torch.nn.Sequential(hooked, Quantised(4, 4), torch.nn.Linear(4, 4).double())
    with PackedLinears().active(net) as swapped:
        assert swapped == 0 and not any("forward" in m.__dict__ for m in net)


def test_ci_torch_has_the_packed_kernel():
    if os.environ.get("CI"):  # the speed BENCHMARKS.md reports rests on it
        assert packed_kernel_available()


@needs_kernel
def test_greedy_rows_of_a_wide_pool_equal_generate_with_packed_linears(scratch_model, shared_data, monkeypatch):
    """20 rows: the decode steps (not only the prefill) run the packed kernel; every row equals generate's."""
    from test_engine import _lively, _prompts

    from lightning_nat.agent.policies import HFPolicy

    counting = Counting()
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
    policy = _lively(HFPolicy(str(scratch_model), device="cpu", max_new_tokens=30))
    _, prompts = _prompts(shared_data, 20)
    fast = policy.generate(prompts)
    layers = sum(isinstance(m, torch.nn.Linear) for m in policy.model.modules())
    assert counting.calls > 10 * layers  # decode steps of >= 16 rows went through it
    assert fast == policy.generate_hf(prompts) and len(set(fast)) == len(fast)
    assert not any("forward" in m.__dict__ for m in policy.model.modules())


@needs_kernel
def test_packed_linear_false_keeps_the_stock_kernel(scratch_model, shared_data, monkeypatch):
    """The README's off switch: HFPolicy(..., packed_linear=False) never calls the packed kernel."""
    from test_engine import _prompts

    from lightning_nat.agent.policies import HFPolicy

    counting = Counting()
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
    policy = HFPolicy(str(scratch_model), device="cpu", max_new_tokens=8, packed_linear=False)
    _, prompts = _prompts(shared_data, 20)
    assert len(policy.generate(prompts)) == 20 and counting.calls == 0
