"""The episode engine: one pool scheduler behind every caller that runs agent episodes.

``nat eval``, ``nat collect``, ``nat solve``, the ``ReActEval`` callback, the demo and the
benchmark all run episodes through :func:`run_pool`. It keeps up to ``pool_size``
episodes live; each step asks the policy to continue every live episode at once, applies
the agent's rules to each answer (parse, run the tool, score) and, as soon as an episode
ends, admits the next waiting question into its place. A batch therefore never waits
for its slowest member, and the policy sees full batches until the questions run out.

A policy that serves one request at a time (the OpenAI-compatible one, which has a
``session``) gets the same pool without steps: each place's next request is sent as soon
as its episode needs it, so ``--concurrency`` requests stay in flight.

The engine is policy-agnostic (anything with ``generate(prompts) -> texts``) and
task-agnostic: the episode rules (prompt, tools, metric) belong to the agent it is given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lightning_nat.core.trajectory import Trajectory

if TYPE_CHECKING:  # the agent imports this module lazily; no cycle at run time
    from lightning_nat.agent.react import ReActAgent

# (episodes done, episodes live) after each step; the CLI's progress bar listens.
Progress = Callable[[int, int], None]


def run_pool(agent: ReActAgent, records: Sequence[dict], pool_size: int = 16,
             on_episode: Callable[[Trajectory], None] | None = None, progress: Progress | None = None,
             any_live: Callable[[bool], bool] | None = None) -> list[Trajectory]:
    """Every record's episode, in input order, with at most ``pool_size`` episodes live at once.

    Args:
        agent: the episode rules (prompt, tools, parser, scorer, turn limit) and the policy.
        records: ``{"id", "question", "answer", ...}`` questions.
        pool_size: episodes continued together per policy call.
        on_episode: called with each trajectory as soon as its episode ends.
        progress: called with (done, live) after every step.
        any_live: lock-step across ranks (ZeRO-3 / FSDP): given whether this rank still has a
            live episode, returns whether any rank has. While any rank does, every rank calls the
            policy once per step (a rank with nothing left sends a stand-in prompt), so sharded
            forward passes stay paired.
    """
    if pool_size < 1:
        raise ValueError(f"pool size must be at least 1, got {pool_size}")
    if hasattr(agent.policy, "session") and any_live is None:
        import asyncio

        return asyncio.run(_run_pool_async(agent, records, pool_size, on_episode, progress))
    waiting = deque(enumerate(records))
    live: list[tuple[int, object]] = []
    out: list[Trajectory | None] = [None] * len(records)
    done = 0
    limit = agent.turn_limit()
    while True:
        while waiting and len(live) < pool_size:
            index, record = waiting.popleft()
            live.append((index, agent.new_episode(record)))
        go = any_live(bool(live)) if any_live is not None else bool(live)
        if not go:
            break
        prompts = [agent.episode_prompt(ep) for _, ep in live]
        # A rank with nothing left keeps its ranks paired with a stand-in prompt.
        outputs = agent.policy.generate(prompts or [agent.prompt("(idle)", dict(records[0]) if records else None)])
        if len(outputs) != len(prompts) and prompts:
            raise RuntimeError(f"the policy returned {len(outputs)} completions for {len(prompts)} prompts")
        still = []
        for (index, ep), text in zip(live, outputs):
            agent.advance(ep, text, limit)
            if ep.done:  # type: ignore[attr-defined]
                traj = agent.trajectory(ep)
                out[index] = traj
                done += 1
                if on_episode:
                    on_episode(traj)
            else:
                still.append((index, ep))
        live = still
        if progress:
            progress(done, len(live))
    return [t for t in out if t is not None]


async def _run_pool_async(agent: ReActAgent, records: Sequence[dict], pool_size: int,
                          on_episode: Callable[[Trajectory], None] | None, progress: Progress | None) -> list[Trajectory]:
    """The same pool for a policy that completes one request at a time (an API): nothing waits for a step.

    Each of ``pool_size`` places holds one live episode whose next request is in flight
    (the policy bounds how many at once); when an episode ends, its place takes the next
    question at once.
    """
    import asyncio

    waiting = deque(enumerate(records))
    out: list[Trajectory | None] = [None] * len(records)
    state = {"done": 0, "live": 0}
    limit = agent.turn_limit()
    async with agent.policy.session(first_wave=min(pool_size, len(records))) as complete:

        async def place() -> None:
            while waiting:
                index, record = waiting.popleft()
                ep = agent.new_episode(record)
                state["live"] += 1
                while not ep.done:
                    agent.advance(ep, await complete(agent.episode_prompt(ep)), limit)
                traj = agent.trajectory(ep)
                out[index] = traj
                state["done"] += 1
                state["live"] -= 1
                if on_episode:
                    on_episode(traj)
                if progress:
                    progress(state["done"], state["live"])

        await asyncio.gather(*[place() for _ in range(min(pool_size, len(records)))])
    return [t for t in out if t is not None]
