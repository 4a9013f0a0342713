"""On CPU, the model's linear layers through oneDNN's packed-weight kernel while the engine decodes.

``torch.nn.functional.linear`` on CPU calls the BLAS torch was built with (MKL in the
official wheels). On the AMD EPYC machine this project runs on, MKL's single-precision
matrix products at the engine's shapes (16 to thousands of rows against 256-1,024 columns)
took 1.8-3.4x as long as oneDNN's kernel with the weight packed once into its blocked
layout (``bench/linear_kernels.py``, BENCHMARKS.md), and the decode steps' and prefills'
linear layers were about a third of the engine's time. Inside :class:`PackedLinears`
(the policy holds one, so weights are packed once per policy), each eligible ``nn.Linear``
of the model runs that kernel for calls of at least ``min_rows`` rows; smaller calls (a
pool's last rows), calls with gradients on, and layers the kernel cannot serve keep the
stock path.

The two kernels sum in different orders, so results differ in the last bits (as results of
one kernel at two batch sizes may); greedy episodes on the scratch model stay identical
to ``model.generate``'s (tests/test_cpu_linear.py, tests/test_engine.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def packed_kernel_available() -> bool:
    """Whether this torch has oneDNN's packed linear ops (CPU builds with mkldnn)."""
    import torch

    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def eligible(module: Any) -> bool:
    """A plain CPU ``nn.Linear`` in float32 or bfloat16 with no hooks and an ordinary (unsharded) weight.

    Subclasses (quantised layers), hooked modules (DeepSpeed ZeRO-3 gathers partitioned weights
    in hooks; adapters), and sharded or empty weights keep their own forward.

    >>> import torch
    >>> eligible(torch.nn.Linear(4, 3)), eligible(torch.nn.Linear(4, 3).double())
    (True, False)
    """
    import torch

    if type(module) is not torch.nn.Linear:
        return False
    weight = module.weight
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16) or weight.numel() == 0:
        return False
    if getattr(weight, "ds_id", None) is not None or type(weight) not in (torch.Tensor, torch.nn.Parameter):
        return False
    hooks = (module._forward_hooks, module._forward_pre_hooks)
    return not any(hooks) and (module.bias is None or module.bias.dtype == weight.dtype)


class PackedLinears:
    """Packed copies of a model's linear weights, put in place for the duration of :meth:`active`.

    A copy is made again when its weight's storage or version changes (the model trained on in
    between), so a stale copy is never used. The copies take as much memory as the weights.

    Args:
        min_rows: calls with fewer rows keep the stock kernel (oneDNN's fixed cost per call is
            higher: at 1 row it took 3x as long for a 256x256 layer).
    """

    def __init__(self, min_rows: int = 16):
        self.min_rows = min_rows
        self._packed: dict[int, tuple[int, int, Any]] = {}

    def _pack(self, module: Any) -> Any:
        import torch

        weight = module.weight
        key = (weight.data_ptr(), weight._version)
        held = self._packed.get(id(module))
        if held is None or held[:2] != key:
            held = (*key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
            self._packed[id(module)] = held
        return held[2]

    @contextlib.contextmanager
    def active(self, model: Any) -> Iterator[int]:
        """Inside, the model's eligible linear layers use the packed kernel; yields how many do."""
        import torch

        swapped = []
        if packed_kernel_available() and not torch.nn.modules.module._global_forward_hooks \
                and not torch.nn.modules.module._global_forward_pre_hooks:
            for module in model.modules():
                if eligible(module) and "forward" not in module.__dict__:
                    module.forward = self._forward(module, self._pack(module))
                    swapped.append(module)
        try:
            yield len(swapped)
        finally:
            for module in swapped:
                del module.forward

    def _forward(self, module: Any, packed: Any) -> Any:
        import torch
        from torch.nn.functional import linear as stock

        linear = torch.ops.mkldnn._linear_pointwise
        least, features = self.min_rows, module.in_features

        def forward(x: Any) -> Any:
            if x.numel() < least * features or torch.is_grad_enabled() or x.dtype != packed.dtype:
                return stock(x, module.weight, module.bias)
            return linear(x, packed, module.bias, "none", [], "")

        return forward
