"""The episode scheduler (run_pool) and the local policy's batched generation."""

import pytest

from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.results import EvalReport, TaskResult, task_result
from lightning_nat.core.tasks import TASKS, load_questions_for
from lightning_nat.core.tools import make_tools


class Scripted:
    """Answers from a script per question; records each call's batch and the questions in it."""

    def __init__(self, scripts):
        self.scripts = {q: list(s) for q, s in scripts.items()}
        self.calls = []

    def generate(self, prompts):
        asked = [next(q for q in self.scripts if any(q in m["content"] for m in p if m["role"] == "user"))
                 for p in prompts]
        self.calls.append(asked)
        return [self.scripts[q].pop(0) if self.scripts[q] else "Thought: hmm" for q in asked]


def test_pool_admits_the_next_question_as_soon_as_one_finishes():
    task = TASKS["gsm8k"]
    records = [{"id": str(i), "question": f"Question {i}?", "answer": "#### 1"} for i in range(5)]
    scripts = {r["question"]: ["Action: finish[1]"] for r in records}
    scripts["Question 0?"] = ["Action: calculate[1]", "Action: calculate[1]", "Action: finish[1]"]
    policy = Scripted(scripts)
    seen = []
    trajs = ReActAgent(task, policy, make_tools(task.tools), max_turns=4).run(
        records, batch_size=2, progress=lambda done, live: seen.append((done, live)))
    # Question 0 stays live for three turns while 1, 2, 3 and 4 pass through the other place.
    assert policy.calls == [["Question 0?", "Question 1?"], ["Question 0?", "Question 2?"],
                            ["Question 0?", "Question 3?"], ["Question 4?"]]
    assert [t.question_id for t in trajs] == ["0", "1", "2", "3", "4"] and all(t.reward for t in trajs)
    assert seen == [(1, 1), (2, 1), (4, 0), (5, 0)]


def test_lock_step_keeps_calling_the_policy_while_another_rank_is_live():
    task = TASKS["gsm8k"]
    policy = Scripted({"Q?": ["Action: finish[1]"], "(idle)": []})
    others = iter([True, True, False])  # another rank has work for two more steps

    def any_live(mine):
        return mine or next(others)

    trajs = ReActAgent(task, policy, {}, max_turns=3).run([{"id": "q", "question": "Q?", "answer": "1"}],
                                                          any_live=any_live)
    assert len(trajs) == 1 and policy.calls == [["Q?"], ["(idle)"], ["(idle)"]]


def test_report_round_trips_through_results_json(tmp_path):
    task = TASKS["gsm8k"]
    records = [{"id": "a", "question": "A?", "answer": "#### 1"}, {"id": "b", "question": "B?", "answer": "#### 2"}]
    runs = [ReActAgent(task, Scripted({"A?": ["Action: finish[1]"], "B?": ["garbled"]}), {}, max_turns=2,
                       on_parse_error="stop").run(records) for _ in range(2)]
    result = task_result(runs, prompt={"style": "x"})
    assert (result.metrics["accuracy"], result.finished, result.stopped_on_error, result.runs) == (0.5, 0.5, 0.5, 2)
    report = EvalReport(results={"gsm8k": result}, episodes={"gsm8k": runs[0] + runs[1]}, usage={"calls": 4},
                        meta={"tags": {"variant": "nat"}})
    back = EvalReport.read(report.write(tmp_path), episodes=True)
    assert back.results == report.results and back.usage == {"calls": 4} and back.tags == {"variant": "nat"}
    assert [t.to_dict() for t in back.episodes["gsm8k"]] == [t.to_dict() for t in runs[0] + runs[1]]
    with pytest.raises(ValueError, match="no 'results' object"):
        EvalReport.from_dict({"table": {}}, "x/results.json")
    assert TaskResult.from_dict({"em": 0.2, "f1": 0.3, "episodes": 3}).metrics == {"em": 0.2, "f1": 0.3}


def _prompts(shared_data, n):
    from lightning_nat.core.prompts import head_messages, make_spec

    spec = make_spec(TASKS["gsm8k"])
    records = load_questions_for(TASKS["gsm8k"], data_dir=str(shared_data), limit=n)
    prompts = [head_messages(spec, r["question"]) for r in records]
    # Later turns too: histories of different lengths in one batch.
    prompts[1] = prompts[1] + [{"role": "assistant", "content": "Thought: x\nAction: calculate[1+1]"},
                               {"role": "user", "content": "Observation: 2"}]
    return records, prompts


def _lively(policy):
    """The scratch model's init writes one token forever; wider weights make rows differ and stop at different steps."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return policy


def _plain_generate(policy, prompt, stop):
    """One prompt alone (no padding) through a plain ``model.generate`` call, cut at ``stop``."""
    import torch

    tok = policy.tokenizer
    ids = tok(policy.render(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = policy.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=policy.max_new_tokens,
                                    do_sample=False, stop_strings=[stop], tokenizer=tok, pad_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split(stop, 1)[0]


@pytest.mark.parametrize("stop", ["Observation:", "e", " th"])
def test_batched_policy_turns_equal_plain_generate_one_prompt_at_a_time(scratch_model, shared_data, stop):
    """Real prompts of different lengths in one left-padded batch: each turn is the one the prompt gets alone.

    With frequent stop strings ("e", " th") rows stop at different steps, and each stops where generate stops.
    """
    from lightning_nat.agent.policies import HFPolicy

    class StopAt(HFPolicy):
        pass

    StopAt.stop = stop  # shadows the policy's own (Observation: for ReAct)
    policy = _lively(StopAt(str(scratch_model), device="cpu", max_new_tokens=24))
    _, prompts = _prompts(shared_data, 6)
    turns = policy.generate(prompts)
    assert turns == [_plain_generate(policy, p, stop) for p in prompts]
    assert len(set(turns)) == len(turns)  # six different continuations
    if stop != "Observation:":
        assert len({len(t) for t in turns}) > 1 and not any(stop in t for t in turns)
    assert policy.usage["requests"] == 6 and policy.usage["calls"] == 1 and policy.usage["completion_tokens"] > 0


def test_greedy_episodes_do_not_depend_on_the_pool_size(scratch_model, shared_data):
    """Which episodes share a batch (and so how much padding each gets) does not change a greedy episode."""
    from lightning_nat.agent.policies import HFPolicy

    task = TASKS["gsm8k"]
    records = load_questions_for(task, data_dir=str(shared_data), limit=7)
    policy = _lively(HFPolicy(str(scratch_model), device="cpu", max_new_tokens=16))
    a = ReActAgent(task, policy, make_tools(task.tools), max_turns=4).run(records, batch_size=3)
    b = ReActAgent(task, policy, make_tools(task.tools), max_turns=4).run(records, batch_size=7)
    assert [t.messages for t in a] == [t.messages for t in b]
    assert sum(1 for t in a for m in t.messages if m["role"] == "assistant") > 2 * len(records)  # later turns too


def test_sampled_turns_repeat_with_the_seed(scratch_model, shared_data):
    import torch

    from lightning_nat.agent.policies import HFPolicy

    policy = HFPolicy(str(scratch_model), device="cpu", temperature=1.0, max_new_tokens=12)
    _, prompts = _prompts(shared_data, 3)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(policy.generate(prompts))
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_api_policy_keeps_requests_in_flight_without_waiting_for_a_step():
    import asyncio
    import contextlib

    class SlowAPI:
        """Question 0 answers slowly; the others at once. Records requests in flight."""

        def __init__(self):
            self.in_flight, self.most, self.order = 0, 0, []

        @contextlib.asynccontextmanager
        async def session(self, first_wave=1):
            async def complete(messages):
                question = next(m["content"] for m in messages if "Question" in m["content"])
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                await asyncio.sleep(0.3 if "Question 0?" in question else 0.01)
                self.in_flight -= 1
                self.order.append(question.split("Question ")[1][0])
                return "Action: finish[1]"

            yield complete

    api = SlowAPI()
    records = [{"id": str(i), "question": f"Question {i}?", "answer": "#### 1"} for i in range(6)]
    trajs = ReActAgent(TASKS["gsm8k"], api, {}, max_turns=2).run(records, batch_size=2)
    assert [t.question_id for t in trajs] == [str(i) for i in range(6)] and all(t.reward for t in trajs)
    assert api.most == 2 and api.order[-1] == "0"  # 1..5 went through the other place while 0 was in flight


def test_eval_progress_bar_shows_done_live_and_rate(monkeypatch):
    import io

    from rich.console import Console

    from lightning_nat.core import console as console_module

    buf = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=buf, force_terminal=True, width=150))
    with console_module.episode_progress() as progress:
        progress("gsm8k", 3, 10, 4)
        progress("gsm8k", 7, 10, 3)
    text = buf.getvalue()
    assert "7/10" in text and "3 live" in text and "episodes/s" in text
