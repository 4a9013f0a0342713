"""DeepSpeed (ZeRO-3 included) on CPU processes over ``gloo``: a check of a DeepSpeed setup before paying for GPUs.

Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA, though DeepSpeed runs ZeRO on CPU; this
subclass lifts that one refusal, so ``--trainer.strategy lightning_nat.train.cpu_deepspeed.CPUDeepSpeedStrategy``
exercises the real DeepSpeed code (fp32 only, no ``pin_memory``). It relies on the Lightning internals named in
``_RELIES_ON`` (checked at construction; ``tests/test_zero3.py`` checks the behaviour).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

_RELIES_ON = ("setup_environment", "setup_distributed", "_init_deepspeed_distributed", "_set_node_environment_variables")


def cpu_safe_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a DeepSpeed config with ``pin_memory`` (CUDA only) off; offload to ``cpu`` is kept.

    >>> cfg = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True}}}
    >>> cpu_safe_config(cfg)["zero_optimization"]["offload_param"]
    {'device': 'cpu', 'pin_memory': False}
    >>> cfg["zero_optimization"]["offload_param"]["pin_memory"]
    True
    """
    out = copy.deepcopy(config)
    zero = out.get("zero_optimization", {})
    for key in ("offload_param", "offload_optimizer"):
        if isinstance(zero.get(key), dict) and zero[key].get("pin_memory"):
            zero[key]["pin_memory"] = False
    return out


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """:class:`DeepSpeedStrategy` (every argument of it) on ``accelerator="cpu"`` processes over ``gloo``.

    A check of a DeepSpeed setup end to end before a GPU job, not a way to train.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(*args, **kwargs)
        for name in _RELIES_ON:
            if not hasattr(DeepSpeedStrategy, name):
                raise RuntimeError(f"CPUDeepSpeedStrategy relies on DeepSpeedStrategy.{name}, which this Lightning "
                                   "version no longer has; the CPU DeepSpeed check needs updating for it")
        if isinstance(self.config, dict):
            self.config = cpu_safe_config(self.config)
        # DeepSpeed picks its accelerator once per process; on a machine with a GPU it would pick CUDA.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")

    @property
    def root_device(self) -> torch.device:
        # Indexed by the local rank: DeepSpeed takes the device index as this process's rank on the node.
        return torch.device("cpu", self.local_rank)

    def setup_environment(self) -> None:
        if not isinstance(self.accelerator, CPUAccelerator):
            raise RuntimeError(f"CPUDeepSpeedStrategy runs on accelerator='cpu' only, got "
                               f"{type(self.accelerator).__name__}; use DeepSpeedStrategy on GPUs")
        # DeepSpeedStrategy.setup_environment only adds its CUDA check before DDP's (device setup, then
        # setup_distributed); skip to DDP's.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # CPU parallel devices carry no index; DeepSpeed's check wants them equal to the local ranks.
        assert self.parallel_devices is not None
        self.parallel_devices = [torch.device("cpu", i) for i in range(len(self.parallel_devices))]
        super().setup_distributed()
