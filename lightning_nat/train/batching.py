"""The batch arithmetic of a run: how many micro-batches make one optimizer step on each device.

``nat fit`` (before the trainer exists), the data modules (from the running trainer), :func:`make_trainer`,
the benchmarks, the demo and the tests all ask :func:`accumulation_steps`; nothing else divides.
"""

from __future__ import annotations

from typing import Any


def accumulation_steps(global_batch_size: int, micro_batch_size: int, devices: int = 1, num_nodes: int = 1) -> int:
    """Micro-batches per optimizer step per device: ``global / (micro x devices x nodes)``, which must divide.

    >>> accumulation_steps(64, 2, devices=4), accumulation_steps(64, 4, devices=8, num_nodes=2)
    (8, 1)
    >>> accumulation_steps(64, 3)
    Traceback (most recent call last):
    ...
    ValueError: global_batch_size=64 is not a multiple of micro_batch_size x devices = 3 (3 x 1 device(s) x 1 node(s))
    """
    for name, value in (("global_batch_size", global_batch_size), ("micro_batch_size", micro_batch_size),
                        ("devices", devices), ("num_nodes", num_nodes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive whole number")
    per_pass = micro_batch_size * devices * num_nodes
    if global_batch_size % per_pass:
        raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of micro_batch_size x devices = "
                         f"{per_pass} ({micro_batch_size} x {devices} device(s) x {num_nodes} node(s))")
    return global_batch_size // per_pass


def device_count(devices: Any, accelerator: Any = None) -> int:
    """How many devices a Lightning ``devices`` setting means on this machine (``"auto"``/``-1``: all there are).

    >>> device_count(4), device_count([0, 2]), device_count("3"), device_count("0,1,"), device_count("auto", "cpu")
    (4, 2, 3, 2, 1)
    """
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    import torch

    if accelerator in ("cpu",) or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()
