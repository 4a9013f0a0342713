"""The episode engine and the local policy's decoding loop (issue 12)."""

import os

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

    spec = make_spec("gsm8k")
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


def test_greedy_decoding_loop_matches_batched_generate(scratch_model, shared_data):
    from lightning_nat.agent.policies import HFPolicy

    policy = _lively(HFPolicy(str(scratch_model), device="cpu", max_new_tokens=40))
    _, prompts = _prompts(shared_data, 6)
    fast = policy.generate(prompts)
    assert policy._prefix.ids  # the shared head came from its cache
    assert fast == policy.generate_hf(prompts)
    assert fast[2:] == policy.generate(prompts[2:])  # a later call reuses the head's cache
    assert len(set(fast)) == len(fast)  # six different continuations
    assert policy.usage["completion_tokens"] > 0 and policy.usage["calls"] == 3


@pytest.mark.parametrize("stop,n", [("e", 6), ("th", 6), (" o", 6), ("e", 20)])
def test_rows_leave_at_the_stop_string_as_generate_stops(scratch_model, shared_data, stop, n):
    """With frequent stop strings rows stop at different steps; the ids equal generate's up to each stop.

    With 20 rows the last rows move into the places of those that leave (kv_cache.SlabLayer) and
    the decode steps run the packed CPU linear kernel (agent.cpu_linear).
    """
    import torch

    from lightning_nat.agent.decoding import PrefixCache, StopMatcher, decode
    from lightning_nat.agent.policies import HFPolicy

    policy = _lively(HFPolicy(str(scratch_model), device="cpu", max_new_tokens=30))
    _, prompts = _prompts(shared_data, n)
    enc = policy._encode(prompts)
    tok = policy.tokenizer
    ids = tok([policy.render(p) for p in prompts], add_special_tokens=False)["input_ids"]
    with policy._linears.active(policy.model):
        ours = decode(policy.model, ids, StopMatcher(tok, stop), 30, 0.0, [tok.eos_token_id], tok.pad_token_id,
                      PrefixCache())
    with torch.no_grad():
        out = policy.model.generate(**enc, max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id, stop_strings=[stop], tokenizer=tok)
    theirs = [[i for i in row if i != tok.pad_token_id] for row in out[:, enc["input_ids"].shape[1]:].tolist()]
    assert ours == theirs
    assert len({len(r) for r in ours}) > 1  # the rows really stopped at different steps


def test_stop_string_ends_a_row_on_token_ids(scratch_model):
    from transformers import AutoTokenizer

    from lightning_nat.agent.decoding import StopMatcher

    tok = AutoTokenizer.from_pretrained(str(scratch_model))
    matcher = StopMatcher(tok, "Observation:")
    for text in ("Thought: x\nAction: calculate[2]\nObservation: 2", "so Observation:", "Observation:\n"):
        ids = tok.encode(text, add_special_tokens=False)
        tail, hits = "", []
        for i in ids:
            tail, hit = matcher.step(tail, i)
            hits.append(hit)
        # The first hit is on the token that writes the colon, however the tokenizer split the word.
        first = hits.index(True)
        assert tok.decode(ids[:first + 1]).rstrip().endswith("Observation:") or "Observation:" in tok.decode(
            ids[:first + 1]) and "Observation:" not in tok.decode(ids[:first])


def test_engine_episodes_equal_the_former_batched_loop(scratch_model, shared_data):
    from lightning_nat.agent.policies import HFPolicy

    task = TASKS["gsm8k"]
    records = load_questions_for(task, data_dir=str(shared_data), limit=6)
    engine = HFPolicy(str(scratch_model), device="cpu", max_new_tokens=24)
    former = HFPolicy(engine.model, engine.tokenizer, max_new_tokens=24, loop="generate")
    a = ReActAgent(task, engine, make_tools(task.tools), max_turns=3).run(records, batch_size=4)
    b = ReActAgent(task, former, make_tools(task.tools), max_turns=3).run(records, batch_size=6)
    assert [t.messages for t in a] == [t.messages for t in b]


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


def test_episode_cache_keeps_greedy_episodes_identical_to_batched_generate(scratch_model, shared_data):
    """Each episode's next turn prefills only its new ids; the episodes equal the former loop's, turn for turn."""
    from lightning_nat.agent.policies import HFPolicy

    task = TASKS["gsm8k"]
    records = load_questions_for(task, data_dir=str(shared_data), limit=7)
    engine = _lively(HFPolicy(str(scratch_model), device="cpu", max_new_tokens=16))
    former = HFPolicy(engine.model, engine.tokenizer, max_new_tokens=16, loop="generate")
    a = ReActAgent(task, engine, make_tools(task.tools), max_turns=4).run(records, batch_size=3)
    b = ReActAgent(task, former, make_tools(task.tools), max_turns=4).run(records, batch_size=7)
    assert [t.messages for t in a] == [t.messages for t in b]
    turns = sum(1 for t in a for m in t.messages if m["role"] == "assistant")
    assert turns > 2 * len(records)  # later turns happened, so there was history to reuse
    # More came from caches than the shared head alone would give: the episodes' own histories.
    assert engine.usage["cached_prompt_tokens"] > engine.usage["requests"] * len(engine._prefix.ids)


def test_episode_cache_falls_back_where_the_ids_diverge(scratch_model, shared_data):
    """A next prompt that re-tokenises the generated text differently reuses only the common ids, same output."""
    from lightning_nat.agent.decoding import StopMatcher, decode
    from lightning_nat.agent.kv_cache import EpisodeCache
    from lightning_nat.agent.policies import HFPolicy

    policy = _lively(HFPolicy(str(scratch_model), device="cpu"))
    tok = policy.tokenizer
    _, prompts = _prompts(shared_data, 4)
    ids = tok([policy.render(p) for p in prompts], add_special_tokens=False)["input_ids"]
    stops, eos = StopMatcher(tok, "Observation:"), [tok.eos_token_id]
    cache = EpisodeCache()
    first = decode(policy.model, ids, stops, 12, 0.0, eos, tok.pad_token_id, episodes=cache)
    observation = tok.encode(" Observation: 42\n", add_special_tokens=False)
    # Row 0 continues its whole history; row 1 drops its last generated ids (as a strip or re-merge
    # would); row 2 diverges inside its prompt; row 3's generated text is replaced by the observation.
    nexts = [ids[0] + first[0] + observation, ids[1] + first[1][:-3] + observation,
             ids[2][:-5] + observation, ids[3] + observation]
    reused: list[int] = []
    again = decode(policy.model, nexts, stops, 12, 0.0, eos, tok.pad_token_id, episodes=cache, reused=reused)
    fresh = decode(policy.model, nexts, stops, 12, 0.0, eos, tok.pad_token_id)
    assert again == fresh
    assert reused[0] == len(ids[0]) + len(first[0]) - 1  # all but the last generated id had been fed
    assert reused[1] == len(ids[1]) + len(first[1]) - 3 and reused[2] == len(ids[2]) - 5
    assert reused[3] == len(os.path.commonprefix([nexts[3], ids[3] + first[3]]))


def test_episode_cache_take_finds_the_longest_common_prefix():
    from lightning_nat.agent.kv_cache import EpisodeCache

    cache = EpisodeCache(min_tokens=2)
    cache.put([1, 2, 3, 4, 5], ["a"])
    cache.put([1, 2, 9, 9], ["b"])
    cache.end_call()
    assert cache.take([[1, 2, 3, 4, 5, 6], [1, 2, 9, 7], [1, 2, 3], [8, 8, 8]]) == [
        (5, ["a"]), (3, ["b"]), (2, ["a"]), (0, [])]
    assert cache.take([[1, 2, 3, 4, 5, 6]]) == [(0, [])]  # a call's caches serve the next call only


def test_leaving_rows_move_only_the_rows_that_fill_their_places():
    """The slab's in-place move equals the general gather, for the decoding loop's orders and any other."""
    import torch

    from lightning_nat.agent.decoding import leave_order
    from lightning_nat.agent.kv_cache import SlabLayer

    gen = torch.Generator().manual_seed(0)
    keys, values = torch.randn(7, 2, 9, 3, generator=gen), torch.randn(7, 2, 9, 3, generator=gen)
    for keep in ([0, 1, 2, 3, 4, 5, 6], [0, 2, 3, 6], [5, 6], [1], [0, 1, 2]):
        for order in (leave_order(keep, 7), keep[::-1]):
            layer = SlabLayer(keys.clone(), values.clone(), 6)
            layer.batch_select_indices(torch.tensor(order))
            assert torch.equal(layer.keys, keys[order, :, :6]) and torch.equal(layer.values, values[order, :, :6])
            k, v = layer.update(torch.ones(len(order), 2, 1, 3), torch.ones(len(order), 2, 1, 3))
            assert torch.equal(k[:, :, :6], keys[order, :, :6]) and bool((k[:, :, 6] == 1).all())
