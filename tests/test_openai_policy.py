import logging

from fake_openai import FakeOpenAI

from lightning_nat.agent.policies import OpenAIPolicy
from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.tasks import TASKS
from lightning_nat.core.tools import make_tools

SECRET = "sk-test-SECRET-4242"


def _math_reply(messages):
    # Calculates once, then finishes with the observed number.
    if messages[-1]["role"] == "user" and messages[-1]["content"].startswith("Observation:"):
        return "Thought: that is it.\nAction: finish[" + messages[-1]["content"].split()[-1] + "]"
    return "Thought: multiply.\nAction: calculate[6 * 7]\nObservation: 41 (invented)"


def test_retries_then_answers_and_keeps_the_key_secret(monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(_math_reply, faults=[429, 500, "slow"], slow_s=1.5, retry_after_ms=10) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, concurrency=4, max_retries=4, timeout=0.5)
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
    with FakeOpenAI(lambda m: "Action: finish[1]", faults=[500, 500, 500, "garbage"], retry_after_ms=10) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, max_retries=2, timeout=2)
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

    from lightning_nat.agent.policies import PolicyConfigError

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(lambda m: "x", faults=[401]) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url)
        with pytest.raises(PolicyConfigError, match="HTTP 401") as err:
            policy.generate([[{"role": "user", "content": "a"}]])
        assert SECRET not in str(err.value)


def test_retry_after_is_honoured(monkeypatch, caplog):
    # The client's own retry loop logs the wait it chose: the server's Retry-After, not its backoff.
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.INFO, logger="openai")
    faults = [{"status": 429, "headers": {"Retry-After": "0.3"}}, {"status": 503, "headers": {"retry-after-ms": "70"}}]
    with FakeOpenAI(lambda m: "Action: finish[1]", faults=faults) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, max_retries=3)
        assert policy.generate([[{"role": "user", "content": "a"}]]) == ["Action: finish[1]"]
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retrying request in")]
    assert [w.split()[3] for w in waits] == ["0.300000", "0.070000"]
    assert policy.usage["retries"] == 2 and len(server.requests) == 3


def test_bad_request_fails_fast_with_the_server_message(monkeypatch):
    import pytest

    from lightning_nat.agent.policies import PolicyConfigError

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    pinned = {"status": 400, "message": "Server is pinned to 'tiny-nat'; requested 'my-model'"}
    with FakeOpenAI(lambda m: "x", faults=[pinned] * 3, retry_after_ms=10) as server:
        policy = OpenAIPolicy("my-model", base_url=server.base_url, max_retries=5)
        with pytest.raises(PolicyConfigError, match="HTTP 400: Server is pinned to 'tiny-nat'; requested 'my-model'"):
            policy.generate([[{"role": "user", "content": str(i)}] for i in range(3)])
        assert len(server.requests) == 3  # one each: no retry of a 400


def test_one_rejected_request_after_successes_fails_only_its_episode(monkeypatch, caplog):
    # A server that has answered before and now rejects one request (say, a prompt over its context):
    # that episode fails with the server's reason, the others go on.
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(lambda m: "Action: finish[2]", retry_after_ms=10) as server:
        policy = OpenAIPolicy("teacher", base_url=server.base_url, concurrency=1)
        assert policy.generate([[{"role": "user", "content": "warm-up"}]]) == ["Action: finish[2]"]
        server.faults = [None, {"status": 422, "message": "prompt is longer than the context (5000 > 4096)"}]
        out = policy.generate([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]])
    assert out == ["Action: finish[2]", None] and policy.usage["rejected"] == 1
    assert "HTTP 422: prompt is longer than the context (5000 > 4096)" in caplog.text
    assert len(server.requests) == 3
