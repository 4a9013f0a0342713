"""The reference prompt style, reference-faithful sampling and chain-of-thought data (issue 10)."""

import json
import random
import subprocess
import sys

import datasets
import pytest

from lightning_nat.builders import build_dataset
from lightning_nat.core.prompts import head_messages, make_spec, negative_class, resolve_eval_spec
from lightning_nat.core.readers import read_trajectories
from lightning_nat.core.tasks import TASKS
from lightning_nat.core.trajectory import TrajectoryFormatError
from lightning_nat.data.select import EmptyClassError

# Written out from the paper (Figures 7, 8) and the reference code's prompts/StrategyQA/StrategyQA_conversation.json.
SQA_INSTRUCTION = (
    "Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can reason about "
    "the current situation, and Action can be two types: \n(1) search[query], which searches a query on google and "
    "returns a short snippet containing the answer. Note that sometimes the snippet does not contain the answer, and "
    "some alternative search might be needed.\n(2) finish[answer], which returns the answer and finishes the task. "
    "You need to generate a sequence of Thought and Action steps to solve the question. Note that the steps could be "
    "correct or incorrect. You need to follow the instruction strictly. Remember you should answer Yes or No.")
ACK = "I've understood your instruction, start please."
SQA_POS = "Question: {q}. Generate a sequence of Thought and Action steps to solve the question **correctly**."
SQA_NEG = "Question: {q}. Generate a sequence of Thought and Action steps. But **incorrectly** solve the question."
GSM8K_POS = "Question: {q}. Generate a sequence of Thought and Action steps to solve the problem correctly."


def test_nat_build_reference_strategyqa_is_byte_identical(strategyqa_files, tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "lightning_nat.cli", "build", "--format", "nat", "--trajectories",
           str(strategyqa_files["pos"]), str(strategyqa_files["neg"]), "--questions", str(strategyqa_files["questions"]),
           "--task", "strategyqa", "--variant", "nat", "--pos-num", "200", "--neg-num", "100", "--on-error", "skip",
           "--prompt-style", "reference", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    questions = {}
    for line in open(strategyqa_files["questions"], encoding="utf-8"):
        rec = json.loads(line)
        questions[rec["id"]] = rec["question"]
    rows = datasets.load_from_disk(str(out))["train"]
    seen = set()
    for row in rows:
        q = questions[row["question_id"]].strip()
        want = SQA_POS if row["label"] == "positive" else SQA_NEG
        head = [(m["role"], m["content"], m["train"]) for m in row["messages"][:3]]
        assert head == [("user", SQA_INSTRUCTION, False), ("assistant", ACK, False),
                        ("user", want.format(q=q), False)], row["id"]
        assert row["messages"][3]["role"] == "assistant" and row["messages"][3]["content"].startswith("Thought")
        seen.add(row["label"])
    assert seen == {"positive", "negative"}
    record = json.loads((out / "build.json").read_text())
    assert record["prompt"]["style"] == "reference" and record["prompt"]["templates"][-1].startswith("Question: {q")


def test_reference_strings_per_task_and_classes():
    gsm = head_messages(make_spec(TASKS["gsm8k"]), "Tom has 3 boxes of 12 eggs. How many eggs?")
    assert gsm[0]["content"].startswith("Solve a math problem with interleaving Thought, Action, Observation steps.")
    assert gsm[2]["content"] == GSM8K_POS.format(q="Tom has 3 boxes of 12 eggs. How many eggs?")
    assert "**" not in gsm[2]["content"] and "problem" in gsm[2]["content"]
    nat2 = make_spec(TASKS["hotpotqa"], "nat-2")
    assert nat2.templates == ("[Totally Incorrect] Question: {question}.", "[Mostly Incorrect] Question: {question}.",
                              "[Mostly Correct] Question: {question}.", "[Correct] Question: {question}.")
    # NAT-2's instruction is the plain one (the reference's four-class template has no "You need to ..." sentence).
    assert "follow the instruction strictly" not in nat2.instruction
    # F1 = 1 without exact match is [Correct], as in the reference.
    assert [negative_class(nat2, f, False) for f in (0.0, 1e-9, 0.39, 0.4, 0.999, 1.0)] == [0, 1, 1, 2, 2, 3]
    ablations = {p: make_spec(TASKS["gsm8k"], p).templates for p in ("nat-prefix", "nat-good", "nat-ab", "nat-inverse",
                                                               "nat-random")}
    assert ablations["nat-prefix"] == ("[Incorrect] Question: {question}.", "[Correct] Question: {question}.")
    assert ablations["nat-good"] == ("[Bad] Question: {question}.", "[Good] Question: {question}.")
    assert ablations["nat-ab"] == ("[B] Question: {question}.", "[A] Question: {question}.")
    assert ablations["nat-inverse"] == ("[Correct] Question: {question}.", "[Incorrect] Question: {question}.")
    assert ablations["nat-random"][1] == ("Question: {question}. 15th-century Italy saw the formation of the two "
                                          "main variants that are known today.")
    assert ablations["nat-random"][0] == ("Question: {question}. An apple is a round, edible fruit produced by an "
                                          "apple tree.")
    cot = head_messages(make_spec(TASKS["gsm8k"], mode="cot"), "2+2?")
    assert cot == [{"role": "user", "content": "Question: 2+2?. Please solve the problem correctly."}]
    # Stripped questions: a leading space does not make a new prompt variant.
    assert head_messages(make_spec(TASKS["strategyqa"]), " Is ice cold?")[2] == head_messages(make_spec(TASKS["strategyqa"]),
                                                                                        "Is ice cold?")[2]
    from lightning_nat.core.tasks import get_task

    assert make_spec(get_task("arith")).style == "native"
    assert make_spec(TASKS["strategyqa"], style="native").instruction_role == "system"


def test_explicit_options_that_contradict_fail(strategyqa_files, tmp_path):
    saved = make_spec(TASKS["hotpotqa"], "nat-2")
    with pytest.raises(ValueError, match="--prompt-preset nat contradicts"):
        resolve_eval_spec(TASKS["hotpotqa"], saved, preset_name="nat")
    assert resolve_eval_spec(TASKS["hotpotqa"], saved, style="reference").positive == "[Correct] Question: {question}."
    files = [str(strategyqa_files["pos"]), str(strategyqa_files["neg"])]
    with pytest.raises(ValueError, match="--placement prefix applies to --prompt-style native only"):
        build_dataset(files, "nat", cache_dir=str(tmp_path), questions=str(strategyqa_files["questions"]),
                      task="strategyqa", on_error="skip", placement="prefix", pos_num=10, neg_num=10)


def test_neg_sampling_reference_reproduces_the_reference_choice(strategyqa_files, tmp_path):
    raw = json.loads(strategyqa_files["neg"].read_text())
    random.seed(42)
    picked = random.sample(list(range(len(raw))), 500)  # the reference samples the records; same positions
    res = build_dataset([str(strategyqa_files["pos"]), str(strategyqa_files["neg"])], "nat", cache_dir=str(tmp_path),
                        questions=str(strategyqa_files["questions"]), task="strategyqa", on_error="skip",
                        pos_num=100, neg_num=500, neg_sampling="reference", drop_unfinished=False, dedupe=False)
    got = [int(r.split(":")[1]) for r, label in zip(res.dataset["train"]["id"], res.dataset["train"]["label"])
           if label == "negative"]
    empty = {i for i in picked if not raw[i]["conversations"]}
    assert got == [i for i in picked if i not in empty]  # same records, in the sample's order
    assert len(got) == 500 - len(empty) and res.report["stats"]["filtered"]["unreadable record"] == len(empty)
    # The default (paper) sampling draws after filtering and so picks other records.
    paper = build_dataset([str(strategyqa_files["pos"]), str(strategyqa_files["neg"])], "nat",
                          cache_dir=str(tmp_path), questions=str(strategyqa_files["questions"]), task="strategyqa",
                          on_error="skip", pos_num=100, neg_num=500)
    assert {r for r in paper.dataset["train"]["id"] if "negative" in r} != {f"trajectories_negative:{i}" for i in got}


def test_loss_flags_must_agree_with_roles(strategyqa_files, tmp_path):
    raw = json.loads(strategyqa_files["pos"].read_text())[:3]
    raw[1]["conversations"][1]["loss"] = True  # an observation marked for training
    path = tmp_path / "pos.json"
    path.write_text(json.dumps(raw))
    questions = {json.loads(line)["id"]: json.loads(line) for line in open(strategyqa_files["questions"])}
    with pytest.raises(TrajectoryFormatError, match="record 1: message 1: loss is true on the user turn"):
        read_trajectories(path, "nat", questions, "strategyqa")


def _cot_rows(n_pos, n_neg, questions=None):
    """Labelled CoT solutions as OpenAI messages, no prediction field, the answer in one of four last-line forms."""
    forms = ["So the total is {a}.\nA: {a}", "{a} in all.\n#### {a}", "Adding up: {a}.\nFinal answer: {a}",
             "Step by step, we get {a}. The answer is {a}."]
    rows = []
    for i in range(n_pos + n_neg):
        good = i < n_pos
        question = questions[i] if questions else f"Problem {i}: what is {10 + i}?"
        answer = 10 + i if good else 9 + i
        rows.append({"messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": forms[i % 4].format(a=answer)}],
                     "reward": good, "id": f"c{i}"})
    return rows


def test_cot_trajectories_build_both_classes(shared_data, tmp_path):
    # The case: 2,001 right and 3,275 wrong GSM8K solutions, --pos-num 500 --neg-num 1500.
    questions = [json.loads(line)["question"] for line in open(shared_data / "gsm8k" / "train.jsonl")][:5276]
    path = tmp_path / "cot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _cot_rows(2001, 3275, questions)))
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "lightning_nat.cli", "build", "--format", "openai", "--trajectories", str(path),
           "--task", "gsm8k", "--variant", "nat", "--pos-num", "500", "--neg-num", "1500", "--prompt-mode", "cot",
           "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    train = datasets.load_from_disk(str(out))["train"]
    labels = train["label"]
    assert labels.count("positive") == 500 and labels.count("negative") == 1500
    first = train[0]["messages"]
    assert first[0] == {"role": "user", "content": f"Question: {questions[0].strip()}. Please solve the problem "
                                                   "correctly.", "train": False,
                        "tool_calls": None, "tool_call_id": None}  # every built message has the call fields
    assert json.loads((out / "build.json").read_text())["report"]["stats"]["filtered"].get("unfinished", 0) == 0


def test_a_filter_that_empties_a_class_fails_loudly(tmp_path):
    rows = _cot_rows(5, 5)
    for r in rows[5:]:
        r["messages"][1]["content"] = "I could not work it out."  # no extractable answer: unfinished
    path = tmp_path / "cot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EmptyClassError, match="removed every negative .*unfinished: 5"):
        build_dataset([str(path)], "nat", cache_dir=str(tmp_path / "c"), format="openai", task="gsm8k")
    cmd = [sys.executable, "-m", "lightning_nat.cli", "build", "--format", "openai", "--trajectories", str(path),
           "--task", "gsm8k", "--out", str(tmp_path / "ds"), "--cache-dir", str(tmp_path / "c")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "removed every negative" in done.stderr and "unfinished" in done.stderr
    done = subprocess.run(cmd + ["--allow-empty-class"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
