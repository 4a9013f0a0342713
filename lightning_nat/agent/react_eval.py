"""ReAct evaluation of the model being trained, at epoch ends or every N steps (Figures 3, 4 and 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.seed import isolate_rng

from lightning_nat.agent.config import MAX_NEW_TOKENS, MAX_TURNS, POOL_SIZE
from lightning_nat.agent.policies import HFPolicy
from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.artifacts import REACT_EVAL_EPISODES_DIR, REACT_EVAL_FILE, append_row
from lightning_nat.core.jsonl import write_jsonl
from lightning_nat.core.prompts import resolve_eval_spec
from lightning_nat.core.results import task_result
from lightning_nat.core.tasks import get_task, load_questions_for
from lightning_nat.core.tools import make_search, make_tools
from lightning_nat.core.trajectory import Trajectory
from lightning_nat.train.perplexity import run_info

# Questions per task at each evaluation: a sample, since it runs inside training (nat eval's --limit: all).
LIMIT = 32


def _gather(trainer: L.Trainer, obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank."""
    if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


class ReActEval(L.Callback):
    """Runs the batched ReAct agent with the in-memory model on ``limit`` questions per task.

    Logs ``react/<task>/<metric>`` and the episode-end rates, appends a row to ``<log_dir>/react_eval.jsonl``
    and writes the episodes to ``<log_dir>/react_eval/step<N>.jsonl``. Questions are split across ranks; with
    sharded weights the ranks step in lock-step (``synced_gpus``, and ``any_live``), so ZeRO-3 does not hang.

    Args:
        tasks: task names or task YAML paths.
        data_dir: folder laid out like ``../shared/data`` (not needed by tasks that declare their own data file).
        limit: questions per task.
        every_n_steps: also evaluate every N optimizer steps (0: only at epoch ends).
        batch_size: the pool on each rank (episodes live at once).
        max_turns: model turns per episode.
        max_new_tokens: tokens per turn.
        search_corpus: JSONL corpus for the BM25 search tool (search tasks).
    """

    def __init__(self, tasks: list[str], data_dir: str | None = None, limit: int = LIMIT, every_n_steps: int = 0,
                 batch_size: int = POOL_SIZE, max_turns: int = MAX_TURNS, max_new_tokens: int = MAX_NEW_TOKENS,
                 search_corpus: str | None = None):
        for name, value, low in (("limit", limit, 1), ("every_n_steps", every_n_steps, 0), ("batch_size", batch_size, 1),
                                 ("max_turns", max_turns, 1), ("max_new_tokens", max_new_tokens, 1)):
            if value < low:
                raise ValueError(f"ReActEval {name} must be at least {low}, got {value}")
        self.tasks, self.data_dir, self.limit = tasks, data_dir, limit
        self.every_n_steps, self.batch_size = every_n_steps, batch_size
        self.max_turns, self.max_new_tokens, self.search_corpus = max_turns, max_new_tokens, search_corpus
        self._last_step = -1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step  # evaluate() skips a step already evaluated
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict[str, float]]:
        if trainer.global_step == self._last_step:
            return {}
        self._last_step = trainer.global_step
        lockstep = isinstance(trainer.strategy, (DeepSpeedStrategy, FSDPStrategy)) and trainer.world_size > 1
        # Sharded weights: every rank generates in lock-step (synced_gpus), and steps the pool until no rank has a
        # live episode (any_live).
        policy = HFPolicy(pl_module.model, trainer.datamodule.tokenizer, temperature=0.0,
                          max_new_tokens=self.max_new_tokens, synced_gpus=lockstep)
        any_live = (lambda live: trainer.strategy.reduce_boolean_decision(live, all=False)) if lockstep else None
        search = make_search("bm25", corpus_path=self.search_corpus) if self.search_corpus else None
        rank, world = trainer.global_rank, trainer.world_size
        results: dict[str, dict[str, float]] = {}
        all_episodes = []
        with isolate_rng():  # the training stream's random state is left as it was
            for name in self.tasks:
                task = get_task(name)
                records = load_questions_for(task, data_dir=self.data_dir, limit=self.limit)
                mine = records[rank::world]
                # Prompt with the positive class of the prompt the training data was rendered with.
                spec = resolve_eval_spec(task, getattr(trainer.datamodule, "prompt_spec", None),
                                         where="the training data's build.json")
                agent = ReActAgent(task, policy, make_tools(task.tools, search), max_turns=self.max_turns,
                                   prompt_spec=spec)
                trajs = agent.run(mine, batch_size=self.batch_size, any_live=any_live)
                gathered = [t for part in _gather(trainer, [t.to_dict() for t in trajs]) for t in part]
                episodes = [Trajectory.from_dict(t) for t in gathered]
                results[task.name] = task_result([episodes]).to_dict()
                all_episodes += episodes
        logged = ("accuracy", "em", "f1", "score", "finished", "turn_limit", "stopped_on_error", "failed", "parse_error_rate")
        pl_module.log_dict({f"react/{name}/{key}": float(values[key]) for name, values in results.items()
                            for key in logged if key in values}, sync_dist=False, rank_zero_only=True)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
        if rank == 0:
            write_jsonl(log_dir / REACT_EVAL_EPISODES_DIR / f"step{trainer.global_step}.jsonl", all_episodes)
            append_row(log_dir / REACT_EVAL_FILE, {"step": trainer.global_step, "epoch": trainer.current_epoch,
                                                   "results": results, **run_info(trainer)})
        return results
