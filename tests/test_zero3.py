"""DeepSpeed ZeRO-3 proven on two CPU processes (CPUDeepSpeedStrategy over gloo), through `nat fit` and `fabric run`.

Every distributed run is a subprocess in its own process group, killed as a group afterwards and
bounded by a timeout, so a hang fails the test instead of eating CI and no rank is left behind.
The tiny scratch model trains with ``stage3_param_persistence_threshold: 0`` so that ZeRO-3 really
partitions every weight (the shipped 1e6 would keep a model this small whole on each rank).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from zero3_probe import free_port, nat_fit, read_rows, run_group, step_losses, step_lrs

pytest.importorskip("deepspeed")

LAUNCH = Path(__file__).resolve().parent.parent / "launch"
CPU_Z3 = "lightning_nat.train.cpu_deepspeed.CPUDeepSpeedStrategy"
WORLD, MICRO, GLOBAL = 2, 2, 8  # accumulation 2 on 2 ranks, 4 on 1: the same global batch of 8
REACT = {"tasks": ["gsm8k"], "limit": 4, "batch_size": 2, "max_turns": 2, "max_new_tokens": 16}

pytestmark = [pytest.mark.slow]


def _partitioned_zero3(tmp: Path) -> Path:
    cfg = json.loads((LAUNCH / "deepspeed" / "zero3.json").read_text())
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp / "zero3-partitioned.json"
    path.write_text(json.dumps(cfg))
    return path


def _config(root: Path, name: str, scratch_model: Path, tiny_dataset: Path, strategy, devices: int, probe_kw=None,
            callbacks=(), model_kw=None, **trainer_kw) -> dict:
    trainer = {"accelerator": "cpu", "devices": devices, "strategy": strategy, "max_epochs": 1, "log_every_n_steps": 1,
               "default_root_dir": str(root / name), "enable_progress_bar": False,
               "callbacks": [{"class_path": "zero3_probe.Probe", "init_args": {"out": str(root / name / "probe"),
                                                                               **(probe_kw or {})}}, *callbacks]}
    trainer.update(trainer_kw)
    return {"model": {"model_name_or_path": str(scratch_model), "learning_rate": 1e-3, "warmup_ratio": 0.0,
                      **(model_kw or {})},
            "data": {"dataset_dir": str(tiny_dataset), "micro_batch_size": MICRO, "global_batch_size": GLOBAL,
                     "max_length": 2048},
            "checkpoint": {"every_n_train_steps": 1},
            "trainer": trainer}


def _z3(config_path: Path) -> dict:
    return {"class_path": CPU_Z3, "init_args": {"config": str(config_path)}}


def _ok(proc, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-6000:]}"


@pytest.fixture(scope="module")
def runs(scratch_model, tiny_dataset, shared_data, tmp_path_factory):
    """One single-process reference run and the same run under ZeRO-3 on 2 CPU processes (with ReActEval)."""
    root = tmp_path_factory.mktemp("zero3")
    z3 = _partitioned_zero3(root)
    react = {"class_path": "lightning_nat.callbacks.ReActEval", "init_args": {"data_dir": str(shared_data), **REACT}}
    _ok(nat_fit(_config(root, "single", scratch_model, tiny_dataset, "auto", 1), root), "single-process nat fit")
    _ok(nat_fit(_config(root, "zero3", scratch_model, tiny_dataset, _z3(z3), WORLD, callbacks=[react]), root),
        "ZeRO-3 nat fit")
    return {"root": root, "z3_config": z3, "single": root / "single", "zero3": root / "zero3"}


@pytest.mark.timeout(900)
def test_loss_scaling_matches_single_process(runs, scratch_model):
    """One optimizer step, accumulation 2 x 2 ranks under ZeRO-3 = accumulation 4 on one process."""
    single, zero3 = read_rows(runs["single"] / "probe", 1), read_rows(runs["zero3"] / "probe", WORLD)
    # The same micro-batches make each step (data layout across ranks and accumulation).
    for step in range(5):
        mine = sorted(r["ids"] for r in single[0] if r["step"] == step)
        theirs = sorted(r["ids"] for rank in zero3 for r in rank if r["step"] == step)
        assert mine == theirs and len(mine) == 4, step
    assert step_losses(zero3) == pytest.approx(step_losses(single), rel=1e-6)
    assert step_lrs(zero3) == pytest.approx(step_lrs(single), rel=1e-9)
    # Gradients scale with the loss (AdamW's update would not show a wrong factor): they must match.
    g1, g3 = torch.load(runs["single"] / "probe" / "grads1.pt"), torch.load(runs["zero3"] / "probe" / "grads1.pt")
    assert set(g1) == set(g3) and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g3[name], g1[name], rtol=1e-5, atol=1e-7, msg=name)
    for f in ("weights1.pt", "weights_end.pt"):
        w1, w3 = torch.load(runs["single"] / "probe" / f), torch.load(runs["zero3"] / "probe" / f)
        for name in w1:
            torch.testing.assert_close(w3[name], w1[name], rtol=1e-5, atol=1e-5, msg=f"{f} {name}")
    # DeepSpeed stays a lazy import: the single-process CPU run trained without loading it.
    assert torch.load(runs["single"] / "probe" / "deepspeed_imported.pt") is False
    assert torch.load(runs["zero3"] / "probe" / "deepspeed_imported.pt") is True
    start = AutoModelForCausalLM.from_pretrained(scratch_model).state_dict()
    w1 = torch.load(runs["zero3"] / "probe" / "weights1.pt")
    assert any(not torch.equal(w1[n], start[n]) for n in w1), "the first step changed nothing: nothing was compared"


def _export(run_dir: Path) -> Path:
    found = list(run_dir.glob("nat/version_*/hf/config.json"))
    assert len(found) == 1, found
    return found[0].parent


@pytest.mark.timeout(900)
def test_zero3_export_equals_gathered_weights_and_reloads(runs):
    hf = _export(runs["zero3"])
    reloaded = AutoModelForCausalLM.from_pretrained(hf)
    gathered = torch.load(runs["zero3"] / "probe" / "weights_end.pt")
    sd = reloaded.state_dict()
    assert set(gathered) <= set(sd)
    for name, tensor in gathered.items():
        assert tensor.numel() > 0 and torch.equal(sd[name], tensor), name
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok.apply_chat_template([{"role": "user", "content": "Is ice cold?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert reloaded.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]


@pytest.mark.timeout(900)
def test_callbacks_under_zero3_equal_single_process_evaluation(runs, shared_data, tiny_dataset):
    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.results import run_figures as summarize
    from lightning_nat.core.tasks import get_task, load_questions_for
    from lightning_nat.core.tools import make_tools
    from lightning_nat.train.datamodule import NATDataModule

    hf = _export(runs["zero3"])
    log_dir = hf.parent
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)

    # DevPerplexity at the epoch-end validation, reduced over both ranks.
    rows = [json.loads(line) for line in open(log_dir / "perplexity.jsonl")]
    last = [r for r in rows if r["source"] == "validation"][-1]
    assert last["step"] == 5
    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(hf), max_length=2048)
    dm.setup("fit")
    nll = n = 0.0
    with torch.no_grad():
        for row in dm.dev_rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"][1:])
            nll += torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1], labels, reduction="sum").item()
            n += int((labels != -100).sum())
    assert last["target_tokens"] == int(n) > 0
    assert last["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)

    # ReActEval: the same episodes as a single-process greedy run of the same weights, batched as each rank was.
    results = [json.loads(line) for line in open(log_dir / "react_eval.jsonl")]
    assert len(results) == 1 and results[0]["step"] == 5
    task = get_task("gsm8k")
    records = load_questions_for(task, data_dir=str(shared_data), limit=REACT["limit"])
    policy = HFPolicy(model, tok, temperature=0.0, max_new_tokens=REACT["max_new_tokens"], device="cpu")
    agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=REACT["max_turns"])
    mine = [t for r in range(WORLD) for t in agent.run(records[r::WORLD], batch_size=REACT["batch_size"])]
    theirs = [json.loads(line) for line in open(log_dir / "react_eval" / "step5.jsonl")]
    assert len(theirs) == len(mine) == REACT["limit"]
    for a, b in zip(mine, theirs):
        assert a.to_dict()["messages"] == b["messages"]
    assert results[0]["results"]["gsm8k"] == pytest.approx(summarize(mine))


@pytest.mark.timeout(900)
def test_lora_under_zero3_merges_and_exports(runs, scratch_model, tiny_dataset):
    root = runs["root"]
    cfg = _config(root, "lora", scratch_model, tiny_dataset, _z3(runs["z3_config"]), WORLD, model_kw={"lora_r": 4},
                  max_epochs=None, max_steps=2)
    _ok(nat_fit(cfg, root), "ZeRO-3 LoRA nat fit")
    hf = _export(root / "lora")
    merged = AutoModelForCausalLM.from_pretrained(hf).state_dict()
    assert not any("lora" in k for k in merged)
    base = AutoModelForCausalLM.from_pretrained(scratch_model).state_dict()
    assert set(merged) == set(base)
    # The adapters were trained (lr 1e-3, 2 steps) and folded in: adapted weights moved, the rest did not.
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed


@pytest.mark.timeout(900)
def test_kill_9_then_resume_through_fabric_run_matches_uninterrupted(runs, scratch_model, tiny_dataset):
    """`kill -9` of both ranks after step 2; `fabric run launch/fit.py ... --ckpt_path last` finishes the epoch."""
    root = runs["root"]
    z3 = _z3(runs["z3_config"])
    killed = nat_fit(_config(root, "resume", scratch_model, tiny_dataset, z3, WORLD, probe_kw={"kill_at_step": 2}), root)
    assert killed.returncode == -9, killed.stdout[-3000:]
    assert _group_gone(killed.pid), "a rank outlived kill -9 of its group"
    assert (root / "resume" / "checkpoints" / "last.ckpt" / "checkpoint").is_dir()  # a DeepSpeed folder
    # Rank 0 killed the group as the first micro-batch of step 3 began: two whole steps were recorded.
    assert [r["step"] for r in read_rows(root / "resume" / "probe", WORLD)[0]] == [0, 0, 1, 1]
    cfg_path = root / "resume.yaml"
    cfg_path.write_text(json.dumps(_config(root, "resume", scratch_model, tiny_dataset, z3, WORLD)))
    fabric = Path(sys.executable).with_name("fabric")
    resumed = run_group([str(fabric), "run", "--accelerator", "cpu", "--devices", str(WORLD), "--main-port",
                         str(free_port()), str(LAUNCH / "fit.py"), "--config", str(cfg_path), "--ckpt_path", "last"],
                        root, timeout=400)
    _ok(resumed, "fabric run ... --ckpt_path last")
    straight, after = read_rows(runs["zero3"] / "probe", WORLD), read_rows(root / "resume" / "probe", WORLD)
    for rank in range(WORLD):
        rows = after[rank]
        assert [r["step"] for r in rows] == [r["step"] for r in straight[rank]]
        assert [r["ids"] for r in rows] == [r["ids"] for r in straight[rank]], f"data position differs on rank {rank}"
        assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in straight[rank]], rel=1e-9)
        assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in straight[rank]], rel=1e-5)
    w_straight = torch.load(runs["zero3"] / "probe" / "weights_end.pt")
    w_resumed = torch.load(root / "resume" / "probe" / "weights_end.pt")
    for name in w_straight:
        torch.testing.assert_close(w_resumed[name], w_straight[name], rtol=1e-5, atol=1e-6, msg=name)


def _group_gone(pgid: int, wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.timeout(900)
def test_fabric_run_launches_ddp_on_two_processes(runs, scratch_model, tiny_dataset):
    """The design card's launch: Lightning's own launcher around `nat fit` (here DDP on 2 CPU processes)."""
    root = runs["root"]
    cfg = _config(root, "fabric-ddp", scratch_model, tiny_dataset, "ddp", WORLD, max_epochs=None, max_steps=2)
    cfg_path = root / "fabric-ddp.yaml"
    cfg_path.write_text(json.dumps(cfg))
    fabric = Path(sys.executable).with_name("fabric")
    proc = run_group([str(fabric), "run", "--accelerator", "cpu", "--devices", str(WORLD), "--main-port", str(free_port()),
                      str(LAUNCH / "fit.py"), "--config", str(cfg_path)], root, timeout=400)
    _ok(proc, "fabric run launch/fit.py (ddp)")
    assert "MEMBER: 2/2" in proc.stdout
    rows = read_rows(root / "fabric-ddp" / "probe", WORLD)
    assert [r["step"] for r in rows[1]] == [0, 0, 1, 1]
    AutoModelForCausalLM.from_pretrained(_export(root / "fabric-ddp"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["zero3.json", "zero3_offload.json"])
def test_shipped_deepspeed_configs_train_a_step_on_cpu(name, runs, scratch_model, tiny_dataset):
    """The JSONs in launch/deepspeed as shipped. On CPU, pin_memory (CUDA host pinning) is turned off; the
    offload config's optimizer runs as DeepSpeedCPUAdam (its C++ op is compiled on first use)."""
    root = runs["root"]
    run = f"shipped-{name.removesuffix('.json')}"
    cfg = _config(root, run, scratch_model, tiny_dataset, _z3(LAUNCH / "deepspeed" / name), WORLD,
                  max_epochs=None, max_steps=1)
    _ok(nat_fit(cfg, root, timeout=600), f"nat fit with launch/deepspeed/{name}")
    w = torch.load(root / run / "probe" / "weights1.pt")
    start = AutoModelForCausalLM.from_pretrained(scratch_model).state_dict()
    assert any(not torch.equal(w[n], start[n]) for n in w)
    exported = AutoModelForCausalLM.from_pretrained(_export(root / run)).state_dict()
    assert all(torch.equal(exported[n], w[n]) for n in w)


def test_cpu_strategy_config_and_refusal():
    from lightning.pytorch.accelerators import CUDAAccelerator

    from lightning_nat.train.cpu_deepspeed import CPUDeepSpeedStrategy

    strategy = CPUDeepSpeedStrategy(config=str(LAUNCH / "deepspeed" / "zero3_offload.json"))
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert strategy._process_group_backend == "gloo"
    strategy.accelerator = CUDAAccelerator()
    with pytest.raises(RuntimeError, match="accelerator='cpu' only"):
        strategy.setup_environment()


def test_nat_fit_leaves_the_process_group_before_exit(tmp_path):
    """A rank closes its group itself (Lightning leaves it open; once a gloo rank aborted in interpreter shutdown)."""
    import torch.distributed as dist

    from lightning_nat.train.fit import _leave_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    _leave_process_group()
    assert not dist.is_initialized()
    _leave_process_group()  # and with no group, nothing to do


@pytest.mark.timeout(1200)
def test_packing_under_ddp_and_zero3_matches_one_unpacked_process(runs, scratch_model, tiny_dataset):
    """data.packing on 2 processes (DDP, then ZeRO-3): the step losses, the first step's gradients and the weights
    after it are those of one unpacked process over the same micro-batches (4 conversations each, random order)."""
    from lightning_nat.train.datamodule import NATDataModule, micro_batches, pack_rows

    root = runs["root"]
    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), max_length=2048)
    dm.setup("fit")
    lengths = dm.train_rows["length"][:]
    # A data order whose first two steps hold a micro-batch that packs (two conversations share a row).
    seed = next(s for s in range(100) if any(len(pack_rows([lengths[i] for i in b])) < 4
                                             for b in micro_batches(lengths, 4, s, 0, "random")[:4]))
    data = {"micro_batch_size": 4, "order": "random", "seed": seed}
    results = {}
    for name, strategy, devices, packing in (("packing-single", "auto", 1, False), ("packing-ddp", "ddp", WORLD, True),
                                             ("packing-zero3", _z3(runs["z3_config"]), WORLD, True)):
        cfg = _config(root, name, scratch_model, tiny_dataset, strategy, devices, max_epochs=None, max_steps=2)
        cfg["data"].update(data, packing=packing)
        _ok(nat_fit(cfg, root), f"{name} nat fit")
        results[name] = read_rows(root / name / "probe", devices)
    single = results.pop("packing-single")
    for name, rows in results.items():
        assert step_losses(rows) == pytest.approx(step_losses(single), rel=1e-5), name
        for f, tol in (("grads1.pt", 1e-7), ("weights1.pt", 1e-6)):
            ref, got = torch.load(root / "packing-single" / "probe" / f), torch.load(root / name / "probe" / f)
            assert set(ref) == set(got) and len(ref) > 10
            for key in ref:
                torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=tol, msg=f"{name} {f} {key}")
