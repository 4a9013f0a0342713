import logging

from fake_openai import FakeOpenAI

from lightning_nat.agent import ReActAgent
from lightning_nat.policies import OpenAIPolicy
from lightning_nat.tasks import TASKS
from lightning_nat.tools import make_tools

SECRET = "sk-test-SECRET-4242"


def _math_reply(messages):
    # Calculates once, then finishes with the observed number.
    if messages[-1]["role"] == "user" and messages[-1]["content"].startswith("Observation:"):
        return "Thought: that is it.\nAction: finish[" + messages[-1]["content"].split()[-1] + "]"
    return "Thought: multiply.\nAction: calculate[6 * 7]\nObservation: 41 (invented)"


def test_retries_then_answers_and_keeps_the_key_secret(monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(_math_reply, faults=[429, 500, "slow"], slow_s=1.5) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, concurrency=4, max_retries=4, timeout=0.5,
                              backoff=0.01)
        task = TASKS["gsm8k"]
        agent = ReActAgent(task, policy, make_tools(task.tools))
        trajs = agent.run([{"id": "q", "question": "What is 6 times 7?", "answer": "#### 42"}])
    t = trajs[0]
    assert t.reward and t.prediction == "42" and t.messages[1]["content"] == "Observation: 42"
    assert policy.usage["retries"] == 3 and policy.usage["requests"] == 2 and policy.usage["failures"] == 0
    assert policy.usage["prompt_tokens"] == 20
    assert all(h == f"Bearer {SECRET}" for h in server.auth_headers)  # the key is used...
    assert server.requests[0]["stop"] == ["Observation:"]
    text = caplog.text + "".join(capsys.readouterr()) + repr(policy) + t.to_dict().__repr__()
    assert SECRET not in text  # ...and never shown


def test_exhausted_retries_fail_and_garbage_is_a_malformed_step(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(lambda m: "Action: finish[1]", faults=[500, 500, 500, "garbage"]) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, max_retries=2, timeout=2, backoff=0.01)
        out = policy.generate([[{"role": "user", "content": "a"}]])
        assert out == [None] and policy.usage["failures"] == 1  # failed for good: not a completion
        assert policy.generate([[{"role": "user", "content": "b"}]]) == [""]  # garbage body: a malformed step
        assert policy.usage["malformed"] == 1
        assert policy.generate([[{"role": "user", "content": "c"}]]) == ["Action: finish[1]"]


def test_concurrent_batch_keeps_order(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(lambda m: "Action: finish[" + m[-1]["content"] + "]") as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, concurrency=3)
        prompts = [[{"role": "user", "content": str(i)}] for i in range(10)]
        assert policy.generate(prompts) == [f"Action: finish[{i}]" for i in range(10)]


def test_auth_error_stops_with_a_clear_message(monkeypatch):
    import pytest

    from lightning_nat.policies import PolicyConfigError

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(lambda m: "x", faults=[401]) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, backoff=0.01)
        with pytest.raises(PolicyConfigError, match="HTTP 401") as err:
            policy.generate([[{"role": "user", "content": "a"}]])
        assert SECRET not in str(err.value)
