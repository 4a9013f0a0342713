"""Episodes per second of the episode engine against one question at a time and the former batched loop.

The arms, same model, same GSM8K test questions, same turn and token limits, in one run,
alternated (A, B, C, A, B, C, ...) so that a noisy machine hits every arm alike. Every arm's
episodes run through the engine's pool (:func:`lightning_nat.agent.engine.run_pool`); the first two
are reference arms that reproduce the former ways with it:

- ``one_at_a_time`` (reference): a pool of one with ``model.generate`` (how the reference evaluates);
- ``batched`` (reference): the former loop: fixed batches of ``--batch-size``, each a pool run to
  its end before the next starts (a finished episode's place stays empty), with ``model.generate``;
- ``engine``: the engine's pool of ``--pool-size`` kept full, with the policy's own decoding loop
  (token-id stops, rows leaving at once, the shared head's and each episode's own KV cache reused,
  prefill grouped by length);
- ``one_at_a_time_packed`` (not run by default): the first arm with the linear layers the engine
  uses on CPU (:mod:`lightning_nat.agent.cpu_linear`: oneDNN's packed kernel for calls of >= 16 rows,
  so its prefills; its one-row decode steps keep the stock kernel, faster at one row), to show
  what the engine gains beyond that kernel;
- ``engine_copied_head`` (not run by default): the engine with shared-head attention off, the
  prompt head's keys and values copied into every row as before it (``HFPolicy(...,
  shared_head_attention=False)``), to measure that lever alone;
- ``continuous_batching`` (not run by default): the engine's pool with transformers' continuous
  batching (``model.generate_batch``, paged attention) as the policy; it has no stop strings, so
  every turn runs to ``--max-new-tokens`` and is cut at ``Observation:`` afterwards.

Reported: episodes/s and generated tokens/s per arm (median over rounds), and the median of
the per-round ratios engine / one_at_a_time and engine / batched with their range.

    python bench/eval_throughput.py --questions 64 --pool-size 64 --rounds 3
    python bench/eval_throughput.py --device cuda --hidden-size 2048 --layers 16 --dtype bfloat16 --questions 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # shared_data: where the data is


class ContinuousBatching:
    """transformers' continuous batching as a policy: ``generate_batch`` on the rendered prompts, cut at the stop."""

    def __init__(self, model_dir: str, policy, max_new_tokens: int):
        from transformers import AutoModelForCausalLM, GenerationConfig

        # Its own copy of the weights: generate_batch switches the model to paged attention.
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=policy.model.dtype).to(policy.model.device)
        self.policy, self.tokenizer = policy, policy.tokenizer
        self.config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                       eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        self.usage = {"completion_tokens": 0}

    def generate(self, prompts):
        from lightning_nat.agent.react import STOP

        ids = self.tokenizer([self.policy.render(p) for p in prompts], add_special_tokens=False)["input_ids"]
        out = self.model.generate_batch(inputs=ids, generation_config=self.config, progress_bar=False)
        rows = [out[k].generated_tokens for k in sorted(out, key=lambda k: int(k.rsplit("_", 1)[-1]))]
        self.usage["completion_tokens"] += sum(len(r) for r in rows)
        return [t.split(STOP, 1)[0] for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]


def run_arm(name: str, agent_for, records: list[dict], args: argparse.Namespace) -> dict:
    """One arm's episodes, timed; the policy's usage gives the tokens generated."""
    agent = agent_for(name)
    before = dict(agent.policy.usage)
    start = time.perf_counter()
    if name == "one_at_a_time":
        trajs = agent.run(records, batch_size=1)
    elif name == "one_at_a_time_packed":
        from lightning_nat.agent.cpu_linear import PackedLinears

        with PackedLinears().active(agent.policy.model):
            trajs = agent.run(records, batch_size=1)
    elif name == "batched":  # the former loop: each batch runs to its end before the next starts
        trajs = []
        for s in range(0, len(records), args.batch_size):
            trajs += agent.run(records[s:s + args.batch_size], batch_size=args.batch_size)
    else:
        trajs = agent.run(records, batch_size=args.pool_size)
    secs = time.perf_counter() - start
    usage = agent.policy.usage
    tokens = usage["completion_tokens"] - before["completion_tokens"]
    return {"seconds": secs, "episodes": len(trajs), "episodes_per_s": len(trajs) / secs,
            "tokens_per_s": tokens / secs, "generated_tokens": tokens,
            "prompt_tokens": usage.get("prompt_tokens", 0) - before.get("prompt_tokens", 0),
            "cached_prompt_tokens": usage.get("cached_prompt_tokens", 0) - before.get("cached_prompt_tokens", 0),
            "model_turns": sum(1 for t in trajs for m in t.messages if m["role"] == "assistant"),
            "messages": [t.messages for t in trajs]}


def main() -> None:
    import torch
    from shared_data import require_shared_data  # tests/shared_data.py

    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.tasks import TASKS, load_questions_for
    from lightning_nat.core.tools import make_tools
    from lightning_nat.train.scratch import make_scratch_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a scratch Llama made here)")
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--pool-size", type=int, default=64, help="the engine's pool (episodes live at once)")
    ap.add_argument("--batch-size", type=int, default=16, help="the former loop's batch")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the three arms")
    ap.add_argument("--arms", default="one_at_a_time,batched,engine")
    ap.add_argument("--hidden-size", type=int, default=256, help="scratch model width")
    ap.add_argument("--layers", type=int, default=4, help="scratch model depth")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.rounds < 3:  # one A-then-B pass on a shared machine is noise, not a measurement
        ap.error(f"--rounds {args.rounds}: alternate the arms at least 3 times")
    arms = [a.strip() for a in args.arms.split(",")]
    load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: say how busy it was
    torch.manual_seed(0)
    task = TASKS["gsm8k"]
    data = str(require_shared_data())
    records = load_questions_for(task, data_dir=data, limit=args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_scratch_model(
            Path(tmp) / "m", [r["question"] for r in load_questions_for(task, data_dir=data)] + [task.instruction],
            vocab_size=1024, hidden_size=args.hidden_size, num_layers=args.layers,
            num_heads=max(4, args.hidden_size // 64)))
        policy = HFPolicy(model, max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype)
        former = HFPolicy(policy.model, policy.tokenizer, max_new_tokens=args.max_new_tokens, loop="generate")

        batching = ContinuousBatching(model, policy, args.max_new_tokens) if "continuous_batching" in arms else None
        copied = HFPolicy(policy.model, policy.tokenizer, max_new_tokens=args.max_new_tokens,
                          shared_head_attention=False)
        chosen = {"engine": policy, "engine_copied_head": copied, "continuous_batching": batching}

        def agent_for(name: str) -> ReActAgent:
            return ReActAgent(task, chosen.get(name) or former, make_tools(task.tools), max_turns=args.max_turns)

        rounds: list[dict[str, dict]] = []
        for r in range(args.rounds):
            rounds.append({})
            for name in arms:
                rounds[-1][name] = run_arm(name, agent_for, records, args)
                print(json.dumps({"round": r, "arm": name, "seconds": round(rounds[-1][name]["seconds"], 2),
                                  "episodes_per_s": round(rounds[-1][name]["episodes_per_s"], 4)}), file=sys.stderr)
            print(json.dumps({"round": r, **{n: round(v["episodes_per_s"], 3) for n, v in rounds[-1].items()}}),
                  file=sys.stderr)
    same = all(rd[a]["messages"] == rounds[0][arms[0]]["messages"] for rd in rounds for a in arms
               if a != "continuous_batching")
    result: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    "questions": args.questions, "pool_size": args.pool_size, "batch_size": args.batch_size,
                    "max_new_tokens": args.max_new_tokens, "max_turns": args.max_turns, "rounds": args.rounds,
                    "dtype": args.dtype, "hidden_size": args.hidden_size, "layers": args.layers,
                    "torch_threads": torch.get_num_threads(), "load_average_at_start": load,
                    "greedy_episodes_identical_across_arms": same}
    for name in arms:
        runs = [rd[name] for rd in rounds]
        result[name] = {"episodes_per_s": round(statistics.median(x["episodes_per_s"] for x in runs), 3),
                        "tokens_per_s": round(statistics.median(x["tokens_per_s"] for x in runs), 1),
                        "seconds": [round(x["seconds"], 2) for x in runs],
                        "generated_tokens": runs[0]["generated_tokens"], "model_turns": runs[0]["model_turns"],
                        "prompt_tokens": runs[0]["prompt_tokens"], "cached_prompt_tokens": runs[0]["cached_prompt_tokens"]}
    if "continuous_batching" in arms:  # it runs every turn to the token limit, then cuts: same episodes?
        result["continuous_batching"]["episodes_identical_to_first_arm"] = all(
            rd["continuous_batching"]["messages"] == rounds[0][arms[0]]["messages"] for rd in rounds)
    for top in ("engine", "continuous_batching"):
        for base in ("one_at_a_time", "one_at_a_time_packed", "batched", "engine_copied_head"):
            if top in arms and base in arms:  # pairwise: each round's ratio, arms run back to back
                ratios = [rd[top]["episodes_per_s"] / rd[base]["episodes_per_s"] for rd in rounds]
                result[f"{top}_over_{base}"] = {"median": round(statistics.median(ratios), 2),
                                                "min": round(min(ratios), 2), "max": round(max(ratios), 2)}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
