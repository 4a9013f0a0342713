"""DPO and KTO losses over multi-turn trajectories, on assistant tokens only.

A trajectory's log-probability is the sum of the log-probabilities of its target
tokens: exactly the tokens NAT's SFT loss trains (every assistant turn and the
end-of-turn token closing it; prompts, observations and tool results have label
``-100`` and contribute nothing). Each function works on per-sequence sums, so a
loss agrees with TRL's wherever the masks agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_nat.train.tokenization import IGNORE_INDEX


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row sum of next-token log-probabilities over target positions (labels != -100), in fp32 or wider.

    Only target positions are upcast (16-bit logits), as in :func:`lightning_nat.train.model.target_nll`.

    >>> logits = torch.zeros(2, 3, 4); labels = torch.tensor([[-100, 1, 2], [-100, -100, 3]])
    >>> torch.allclose(sequence_logps(logits, labels), torch.log(torch.tensor([1 / 16, 1 / 4])))
    True
    """
    shift = labels[:, 1:]
    mask = shift != IGNORE_INDEX
    picked = logits[:, :-1][mask]
    if picked.dtype in (torch.float16, torch.bfloat16):
        picked = picked.float()
    token_logps = -F.cross_entropy(picked, shift[mask], reduction="none")
    rows = mask.nonzero(as_tuple=True)[0]
    return torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=logits.device).index_add(0, rows, token_logps)


def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               beta: float) -> torch.Tensor:
    """Per-pair sigmoid DPO loss, ``-log sigmoid(beta * (chosen log-ratio - rejected log-ratio))``.

    >>> z = torch.zeros(1)
    >>> round(dpo_losses(z, z, z, z, beta=0.1).item(), 4)  # log 2 when the policy equals the reference
    0.6931
    """
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def kto_reference_point(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0: the batch mean of mismatched-pair log-ratios, clamped at 0, no gradient.

    >>> kto_reference_point(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])).item()
    0.0
    >>> kto_reference_point(torch.tensor([-1.0, -1.0]), torch.tensor([-2.0, -2.0])).item()
    1.0
    """
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_losses(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float,
               desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per-row KTO loss (KTO paper, eq. 7): ``w_D (1 - sigmoid(beta (r - z0)))`` or ``w_U (1 - sigmoid(beta (z0 - r)))``.

    ``r`` is the row's log-ratio against the reference and ``z0`` the batch's reference point.

    >>> z = torch.zeros(2)
    >>> kto_losses(z, z, torch.tensor([True, False]), torch.tensor(0.0), 0.1, 2.0, 1.0).tolist()
    [1.0, 0.5]
    """
    ratio = logps - ref_logps
    desirable = desirable.bool()
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, good, bad)
