import json

import pytest

from lightning_nat.core.jsonl import write_jsonl
from lightning_nat.core.readers import ReadReport, load_questions, read_trajectories
from lightning_nat.core.trajectory import Trajectory, TrajectoryFormatError


def test_real_strategyqa_counts(strategyqa_files):
    questions = load_questions(strategyqa_files["questions"])
    assert len(questions) == 1290  # the README says 1,289; the file holds 1,290
    pos = read_trajectories(strategyqa_files["pos"], "nat", questions, "strategyqa")
    assert len(pos) == 1070 and all(t.reward for t in pos)
    assert all(t.question == questions[t.question_id]["question"] for t in pos)
    assert all(t.messages[0]["role"] == "assistant" for t in pos)
    # The real negative file holds 7 records with an empty conversation: strict mode names the first.
    with pytest.raises(TrajectoryFormatError, match=r"trajectories_negative\.json, record 282: empty conversation"):
        read_trajectories(strategyqa_files["neg"], "nat", questions, "strategyqa")
    report = ReadReport()
    neg = read_trajectories(strategyqa_files["neg"], "nat", questions, "strategyqa", on_error="skip", report=report)
    assert len(neg) == 1263 - 7 and not any(t.reward for t in neg)
    assert report.reasons() == {"empty conversation": 7}
    assert sum(1 for t in neg if not t.finished) == 13  # 20 without pred, 7 of them empty


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD_NAT = {"id": "q1", "conversations": [{"role": "assistant", "content": "Action: finish[yes]", "loss": True}],
            "info": {"reward": True, "gt": True, "pred": "yes"}}


@pytest.mark.parametrize("record, problem", [
    ({**GOOD_NAT, "info": {"gt": True}}, "missing reward (info.reward)"),
    ({**GOOD_NAT, "conversations": [{"role": "robot", "content": "x"}]},
     "message 0: unknown role 'robot' (expected system, user, assistant or tool)"),
    ({**GOOD_NAT, "conversations": []}, "empty conversation"),
    ({**GOOD_NAT, "conversations": [{"role": "user", "content": "Observation: x"}]}, "no assistant turn"),
    ({**GOOD_NAT, "id": "nope"}, "id 'nope' not found in the question file"),
])
def test_nat_format_errors_name_file_and_record(tmp_path, record, problem):
    path = _write(tmp_path, "trajs.json", json.dumps([GOOD_NAT, record]))
    with pytest.raises(TrajectoryFormatError) as err:
        read_trajectories(path, "nat", {"q1": {"question": "Q?", "answer": True}})
    assert str(err.value) == f"{path}, record 1: {problem}"
    report = ReadReport()
    kept = read_trajectories(path, "nat", {"q1": {"question": "Q?"}}, on_error="skip", report=report)
    assert len(kept) == 1 and report.skipped == [(str(path), "record 1", problem)]


def test_malformed_json(tmp_path):
    path = _write(tmp_path, "bad.json", '[{"id": "q1",]')
    with pytest.raises(TrajectoryFormatError, match=r"bad\.json: malformed JSON"):
        read_trajectories(path, "nat", {})
    jsonl = _write(tmp_path, "bad.jsonl", json.dumps({"messages": [{"role": "user", "content": "Q"},
                                                                  {"role": "assistant", "content": "A"}],
                                                      "reward": True}) + "\n{oops\n")
    with pytest.raises(TrajectoryFormatError, match=r"bad\.jsonl, line 2: malformed JSON"):
        read_trajectories(jsonl, "openai")
    report = ReadReport()
    assert len(read_trajectories(jsonl, "openai", on_error="skip", report=report)) == 1
    assert report.skipped[0][1] == "line 2"


@pytest.mark.parametrize("fmt, record, problem", [
    ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
     "missing reward"),
    ("openai", {"messages": [], "reward": True}, "empty conversation"),
    ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "A"}], "reward": True},
     # Indexed as written (the question at 0 is split off later): the tool result is message 1.
     "message 1: a tool turn needs the tool_call_id it answers"),
    ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "O"}], "reward": False},
     "no assistant turn"),
    ("openai", {"messages": [{"role": "user", "content": "Q", "tool_calls": []}, {"role": "user", "content": "Q",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
                "reward": True}, "message 1: only assistant turns make tool calls, not user"),
    # A `nat export` record: its tail is numbered after the record's messages (5 here), wherever the prompt ends.
    ("openai", {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                             {"role": "assistant", "content": "", "tool_calls": [
                                 {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                             {"role": "tool", "tool_call_id": "c1", "content": "r"},
                             {"role": "assistant", "content": "done"}],
                "nat": {"question": "Q", "prompt_turns": 2, "tail": [{"role": "tool", "content": "x"}]},
                "reward": True}, "message 5: a tool turn needs the tool_call_id it answers"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "alien", "value": "A"}], "reward": True},
     "message 1: unknown role 'alien'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
                  "reward": "yes"}, "reward must be true or false, got 'yes'"),
])
def test_chat_format_errors(tmp_path, fmt, record, problem):
    path = _write(tmp_path, f"t.{fmt}.jsonl", json.dumps(record) + "\n")
    with pytest.raises(TrajectoryFormatError) as err:
        read_trajectories(path, fmt)
    assert str(err.value) == f"{path}, line 1: {problem}"


def test_openai_and_sharegpt_read(tmp_path):
    rec = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 6*7?"},
                        {"role": "assistant", "content": "Thought: multiply.\nAction: calculate[6*7]"},
                        {"role": "user", "content": "Observation: 42"},
                        {"role": "assistant", "content": "Action: finish[42]"}],
           "reward": True, "score": 1.0, "prediction": "42", "answer": "42", "temperature": 0.7}
    t = read_trajectories(_write(tmp_path, "o.jsonl", json.dumps(rec) + "\n"), "openai", task="gsm8k")[0]
    assert (t.question, len(t.messages), t.task, t.meta["temperature"]) == ("What is 6*7?", 3, "gsm8k", 0.7)
    share = {"id": "s1", "question": "Q?", "conversations": [{"from": "gpt", "value": "Action: finish[no]"}],
             "reward": False, "score": 0.0}
    s = read_trajectories(_write(tmp_path, "s.jsonl", json.dumps(share) + "\n"), "sharegpt")[0]
    assert (s.id, s.question, s.messages[0]["role"], s.reward) == ("s1", "Q?", "assistant", False)


def test_canonical_jsonl_round_trip(tmp_path, strategyqa_files):
    questions = load_questions(strategyqa_files["questions"])
    pos = read_trajectories(strategyqa_files["pos"], "nat", questions, "strategyqa")[:20]
    path = tmp_path / "c.jsonl"
    assert write_jsonl(path, pos) == 20
    back = read_trajectories(path)
    assert back == pos
    assert read_trajectories(path, "jsonl") == pos
    path.write_text(path.read_text() + json.dumps({"id": "x", "question": "q", "messages": []}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"c\.jsonl, line 21: missing field\(s\) reward"):
        read_trajectories(path)


def test_question_file_errors(tmp_path):
    dup = _write(tmp_path, "q.jsonl", '{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}\n')
    with pytest.raises(TrajectoryFormatError, match=r"q\.jsonl, line 2: duplicate id '1'"):
        load_questions(dup)
    gsm = _write(tmp_path, "g.jsonl", '{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": "#### 2"}\n')
    assert list(load_questions(gsm)) == ["0", "1"]


def test_trajectory_rejects_bad_messages():
    with pytest.raises(TrajectoryFormatError, match="no assistant turn"):
        Trajectory("t", "", "q", [{"role": "user", "content": "Observation: x"}], True)
