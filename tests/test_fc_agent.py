"""One function-calling step: schemas from functions, turns parsed into calls, tools run, errors counted."""

import pytest
from tool_templates import FAMILIES
from transformers import AutoTokenizer

from lightning_nat.agent.function_calling import StepCounts, from_openai_reply, parse_turn, schemas_of, step
from lightning_nat.agent.policies import LocalPolicy
from lightning_nat.core.trajectory import Trajectory


def get_weather(city: str) -> dict:
    """Current weather of a city.

    Args:
        city: the city's name
    """
    if city == "Atlantis":
        raise LookupError("no such city")
    return {"temp": 21}


# What a model could write in each family: a good call, a call to an unknown tool, bad JSON, a raising tool, an answer.
SCRIPTS = {
    "hermes": ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
               '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
               '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}\n</tool_call>',
               '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Atlantis"}}\n</tool_call>',
               "It is 21 C in Paris."],
    "llama31": ['{"name": "get_weather", "parameters": {"city": "Paris"}}',
                '{"name": "get_time", "parameters": {}}',
                '{"name": "get_weather", "parameters": {city: Paris}',
                '{"name": "get_weather", "parameters": {"city": "Atlantis"}}',
                "It is 21 C in Paris."],
}


@pytest.mark.parametrize("family", ["hermes", "llama31"])
def test_an_episode_through_function_calls(scratch_model, family):
    tok = AutoTokenizer.from_pretrained(scratch_model)
    tok.chat_template = FAMILIES[family]
    tools = schemas_of([get_weather])
    policy = LocalPolicy(tok)
    policy.use_tools(tools)
    assert policy.family == family and policy.stop == {"hermes": "<|im_end|>", "llama31": "<|eot_id|>"}[family]
    assert tools[0]["function"]["parameters"]["properties"]["city"]["description"] == "the city's name"
    messages = [{"role": "system", "content": "You are a weather agent."},
                {"role": "user", "content": "Weather in Paris?"}]
    counts = StepCounts()
    done = False
    for turn, text in enumerate(SCRIPTS[family]):
        prompt = policy.render(messages)
        assert "Current weather of a city." in prompt  # the schema reaches the model every turn
        content, calls, errors = parse_turn(text, family, turn)
        done = step(messages, content, calls, errors, [get_weather], counts)
    assert done and messages[-1] == {"role": "assistant", "content": "It is 21 C in Paris."}
    assert (counts.calls, counts.parse_errors, counts.tool_errors) == (3, 1, 2)
    results = [m["content"] for m in messages if m["role"] == "tool"]
    assert results[0] == '{"temp": 21}' and results[1].startswith("Error: unknown tool 'get_time'")
    assert results[2] == "Error: get_weather failed: LookupError: no such city"
    # The episode is a valid trajectory with structured calls, ready for nat build.
    traj = Trajectory("e0", "", "Weather in Paris?", messages[2:], reward=True, tools=tools)
    assert traj.messages[0]["tool_calls"] == [{"id": "call_0_0", "name": "get_weather", "arguments": {"city": "Paris"}}]


def test_api_replies_with_bad_arguments_are_parse_errors():
    content, calls, errors = from_openai_reply({"role": "assistant", "content": "x", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{nope"}}]})
    assert content == "x" and calls == [] and "not valid JSON" in errors[0]


def test_a_call_id_used_twice_is_a_parse_error_not_a_crash():
    """An API reply whose two calls share an id, or reuse an earlier call's: the repeat is not run (issue 29, 9)."""
    messages, counts = [], StepCounts()
    reply = {"content": None, "tool_calls": [
        {"id": "same", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "same", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    assert not step(messages, *from_openai_reply(reply), [get_weather], counts)
    assert [c["arguments"] for c in messages[0]["tool_calls"]] == [{"city": "Paris"}] and len(messages) == 2
    reply["tool_calls"] = reply["tool_calls"][1:]
    assert not step(messages, *from_openai_reply(reply), [get_weather], counts)
    assert messages[-1] == {"role": "user", "content": "Error: tool call 0 repeats the id 'same' of an earlier call"}
    assert (counts.calls, counts.parse_errors) == (1, 2)
    Trajectory("e", "", "q", messages, reward=False)  # the episode is still a valid trajectory


def test_builtin_calculator_schema_is_its_help_line_and_args_only():
    # transformers' get_json_schema copies the whole docstring: notes or a doctest there would be offered to the model.
    from lightning_nat.core.tools import calculate, tool_help

    (schema,) = schemas_of([calculate])
    fn = schema["function"]
    assert fn["description"] == "Evaluates an arithmetic expression such as (12 + 7) * 3 / 4 and returns the number."
    assert tool_help("calculate").lower().endswith(fn["description"].lower())
    assert fn["parameters"]["properties"] == {
        "expression": {"type": "string", "description": "the arithmetic to evaluate, e.g. '(12 + 7) * 3 / 4'"}}
