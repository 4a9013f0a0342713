"""Regression tests for issue 29, round 2 of "nothing wrong with exit 0", replayed where a user meets each attack.

Every test runs ``nat`` as a subprocess in a temporary folder and failed on the code before its fix.
"""

from __future__ import annotations

import json
import os

import datasets
import pytest
from test_reliability import _snapshot, nat, one_error_line

SYSTEM = "You are WeatherBot. Use get_weather, then answer in one sentence."


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _chat(q, reward, question_field=True, user=None, **extra):
    rec = {"id": f"{q}-{reward}", "reward": reward, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": user or q},
        {"role": "assistant", "content": f"Thought: look it up.\nAction: finish[{'yes' if reward else 'no'}]"},
        {"role": "user", "content": "Observation: Episode finished"}], **extra}
    if question_field:
        rec["question"] = q
    return rec


def _rows(folder):
    return [dict(r) for r in datasets.load_from_disk(str(folder))["train"]]


def test_the_question_is_asked_once(tmp_path):
    """Item 1: with a question field and the full chat, the marked prompt replaces the user's question turn."""
    recs = [_chat(f"Is it raining in town {i}?", i % 2 == 0) for i in range(4)]
    recs[1]["messages"][1]["content"] = "  Is it raining   in town 1? "  # whitespace does not matter
    _write_jsonl(tmp_path / "logs.jsonl", recs)
    for task in ([], ["--task", "strategyqa"]):
        out = tmp_path / f"ds{len(task)}"
        proc = nat("build", "--format", "openai", "--trajectories", "logs.jsonl", *task, "--out", out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        for row in _rows(out):
            users = [m["content"] for m in row["messages"] if m["role"] == "user"]
            asking = [u for u in users if "raining" in u]
            assert len(asking) == 1, users  # once, in the marked prompt
            assert "correctly" in asking[0] or "incorrectly" in asking[0]
    # A question turn holding more than the question is replaced and counted; one that does not ask it is refused.
    recs[0]["messages"][1]["content"] = "Example: Is it hot? -> yes.\nIs it raining in town 0?"
    _write_jsonl(tmp_path / "logs.jsonl", recs)
    proc = nat("build", "--format", "openai", "--trajectories", "logs.jsonl", "--out", "ds9", cwd=tmp_path)
    assert proc.returncode == 0 and "1 kept trajectories had a question turn holding more" in " ".join(proc.stdout.split())
    recs[2]["messages"][1]["content"] = "Hello!"
    _write_jsonl(tmp_path / "logs.jsonl", recs)
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "logs.jsonl", "--out", "ds8",
                              cwd=tmp_path))
    assert "logs.jsonl, line 3: the first user turn does not ask the 'question' field's question" in line


def _fc_record(i, reward):
    call = {"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    return {"id": f"fc{i}", "reward": reward, "tools": [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Weather in Oslo, day {i}?"},
                     {"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": "rain"},
                     {"role": "assistant", "content": "It rains." if reward else "It is sunny."}]}


def test_function_calling_answers_are_finished(tmp_path):
    """Item 2: a function-calling trajectory that ends with a plain answer is finished, not dropped as unfinished."""
    _write_jsonl(tmp_path / "fc.jsonl", [_fc_record(i, i % 2 == 0) for i in range(6)])
    proc = nat("build", "--format", "openai", "--trajectories", "fc.jsonl", "--out", "ds", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "unfinished" not in proc.stdout
    assert sorted(r["label"] for r in _rows(tmp_path / "ds")) == ["negative"] * 3 + ["positive"] * 3


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.pop(3), "tool call(s) 'c0' of an earlier turn were never answered"),
    (lambda m: m.insert(4, dict(m[3])), "tool call 'c0' is answered twice"),
    (lambda m: m[2]["tool_calls"].append({"id": "c9", "type": "function", "function": {
        "name": "get_weather", "arguments": "{}"}}), "tool call(s) 'c9' of an earlier turn were never answered"),
])
def test_broken_call_sequences_are_located(tmp_path, change, problem):
    """Item 6: a call never answered, a parallel call with one reply missing, a call answered twice."""
    rec = _fc_record(0, True)
    change(rec["messages"])
    _write_jsonl(tmp_path / "fc.jsonl", [rec, _fc_record(1, False)])
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "fc.jsonl", "--out", "ds",
                              cwd=tmp_path))
    assert "fc.jsonl, line 1: message" in line and problem in line
    proc = nat("build", "--format", "openai", "--trajectories", "fc.jsonl", "--on-error", "skip", "--allow-empty-class",
               "--out", "ds", cwd=tmp_path)
    assert proc.returncode == 0 and "skipped 1 bad record(s)" in proc.stdout


def test_dpo_pairs_of_identical_text_are_dropped_and_counted(tmp_path):
    """Item 6: one text labelled both ways makes no DPO pair."""
    same = _chat("Is it raining?", True, question_id="q")
    twin = {**_chat("Is it raining?", False, question_id="q"), "messages": same["messages"], "id": "twin"}
    other = {**_chat("Is it raining?", False, question_id="q"), "id": "other"}
    _write_jsonl(tmp_path / "t.jsonl", [same, twin, other])
    proc = nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--variant", "dpo", "--no-dedupe", "--out",
               "ds", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["rejected_id"] for r in _rows(tmp_path / "ds")] == ["other"]
    assert "pairs identical" in proc.stdout


@pytest.mark.parametrize("field, value", [("tools", '["os:system"]'), ("answer", '{gold: "os:system"}'),
                                          ("metric", "subprocess:getoutput")])
def test_a_task_file_cannot_run_installed_code_without_trust(tmp_path, field, value):
    """Item 7: a task YAML naming an installed module is refused unless the user says they trust it."""
    decl = {"instruction": "Do it.", "tools": "[finish]", "metric": "exact", field: value}
    (tmp_path / "evil.yaml").write_text("".join(f"{k}: {v}\n" for k, v in decl.items()))
    _write_jsonl(tmp_path / "t.jsonl", [_chat("q?", True)])
    args = ["build", "--format", "openai", "--trajectories", "t.jsonl", "--task", "evil.yaml", "--out", "ds"]
    line = one_error_line(nat(*args, cwd=tmp_path))
    assert "evil.yaml: field" in line and "is an installed module's" in line and "--trust-task-imports" in line
    assert not (tmp_path / "ds").exists()
    if field != "metric":  # a trusted file loads (subprocess.getoutput is not a valid metric signature anyway)
        assert nat(*args, "--trust-task-imports", cwd=tmp_path).returncode == 0


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Item 15: a few lines of anchors would expand to billions of nodes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]"
                                                          for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines + ["instruction: x", "metric: exact", "tools: [finish]"]))
    _write_jsonl(tmp_path / "t.jsonl", [_chat("q?", True)])
    proc = nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--task", "bomb.yaml", "--out", "ds",
               cwd=tmp_path, timeout=60)
    assert "bomb.yaml: field '(file)': not valid YAML (an alias (*a0) at line 2" in one_error_line(proc)


def test_echoed_secrets_never_reach_a_file(tmp_path):
    """Item 8: model text that echoes a known secret is masked in every row, preview and record written."""
    canaries = {"OPENAI_API_KEY": "sk-canary-0123456789", "MY_SERVICE_TOKEN": "tok-canary-9876543210"}
    recs = [_chat(f"q{i}?", i % 2 == 0) for i in range(4)]
    recs[0]["messages"][2]["content"] = f"Thought: the key is {canaries['OPENAI_API_KEY']}.\nAction: finish[yes]"
    recs[1]["messages"][2]["content"] = f"Thought: {canaries['MY_SERVICE_TOKEN']}\nAction: finish[no]"
    _write_jsonl(tmp_path / "t.jsonl", recs)
    env = dict(canaries)
    assert nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path,
               env=env).returncode == 0
    assert nat("export", "ds", "--to", "openai", "--out", "x", cwd=tmp_path, env=env).returncode == 0
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "t.jsonl")
    assert written and all(v.encode() not in written for v in canaries.values())
    assert b"the key is ***." in written


@pytest.mark.parametrize("field, value, problem", [
    ("meta", "abc", "meta must be an object, got 'abc'"),
    ("id", {}, "id must be a non-empty string or a number, got {}"),
    ("question", 5, "question must be a non-empty string, got 5"),
    ("messages", "abc", "messages must be a list"),
])
def test_wrong_typed_fields_are_located_and_skippable(tmp_path, field, value, problem):
    """Item 11: wrong-typed record fields are one located line, and --on-error skip skips them."""
    recs = [_chat(f"q{i}?", i % 2 == 0) for i in range(4)]
    recs[2][field] = value
    _write_jsonl(tmp_path / "t.jsonl", recs)
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path))
    assert f"t.jsonl, line 3: {problem}" in line
    proc = nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--on-error", "skip", "--out", "ds",
               cwd=tmp_path)
    assert proc.returncode == 0 and "skipped 1 bad record(s)" in proc.stdout and len(_rows(tmp_path / "ds")) == 3


def test_deeply_nested_json_is_a_located_error(tmp_path):
    recs = [_chat("q0?", True), _chat("q1?", False)]
    (tmp_path / "t.jsonl").write_text(json.dumps(recs[0]) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n"
                                      + json.dumps(recs[1]) + "\n")
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path))
    assert "t.jsonl, line 2: JSON nested too deeply to read" in line


@pytest.mark.parametrize("flag, value, message", [("--pos-num", "-5", "--pos-num: must be at least 0"),
                                                  ("--neg-num", "-3", "--neg-num: must be at least 0"),
                                                  ("--pairs-per-question", "0", "--pairs-per-question: must be at least 1"),
                                                  ("--dev-num", "-1", "--dev-num: must be at least 0")])
def test_numbers_out_of_range_are_refused(tmp_path, flag, value, message):
    """Item 12: --pos-num -5 kept 1,065 positives; --neg-num -3 was a random.sample error."""
    _write_jsonl(tmp_path / "t.jsonl", [_chat("q?", True)])
    proc = nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--variant", "dpo", flag, value, "--out",
               "ds", cwd=tmp_path)
    assert proc.returncode == 2 and message in " ".join(proc.stderr.split())


def test_a_folder_holding_a_file_named_build_json_is_not_a_build(tmp_path):
    """Item 13: the user's folder is recognised by the package's signature, not by a file name."""
    _write_jsonl(tmp_path / "t.jsonl", [_chat("q0?", True), _chat("q1?", False)])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "build.json").write_text('{"mine": 1}')
    (mine / "notes.txt").write_text("keep me")
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", mine, cwd=tmp_path))
    assert "is not an earlier `nat build` output" in line and "--overwrite to replace it, deleting" in line
    assert _snapshot(mine) == {"build.json": b'{"mine": 1}', "notes.txt": b"keep me"}
    # An earlier build that now holds a file of the user's is not replaced either.
    assert nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path).returncode == 0
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path))
    assert "holds files it did not write (notes.txt)" in line and (tmp_path / "ds" / "notes.txt").exists()


def test_unknown_task_names_are_one_clear_line(tmp_path):
    """Item 16: no leaking `missing key` wrapper; a path-like name is looked for as a file."""
    _write_jsonl(tmp_path / "t.jsonl", [_chat("q?", True)])
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--task", "nosuchtask",
                              "--out", "ds", cwd=tmp_path))
    assert line.startswith("error: unknown task 'nosuchtask'; known tasks: ") and "missing key" not in line
    line = one_error_line(nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--task", "../../x",
                              "--out", "ds", cwd=tmp_path))
    assert line == "error: no such task file: ../../x"


PLAIN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_template_that_drops_tool_calls_is_refused_even_when_the_system_prompt_names_the_tool(tmp_path,
                                                                                                scratch_model):
    """Item 3: the check compares where each call was rendered, not whether its name appears somewhere."""
    _write_jsonl(tmp_path / "fc.jsonl", [_fc_record(i, i % 2 == 0) for i in range(2)])
    assert "get_weather" in SYSTEM  # the system prompt names the tool: a name search would pass
    assert nat("build", "--format", "openai", "--trajectories", "fc.jsonl", "--out", "ds", cwd=tmp_path).returncode == 0
    (tmp_path / "plain.jinja").write_text(PLAIN_TEMPLATE)
    line = one_error_line(nat("inspect", "ds", "--tokenizer", scratch_model, "--chat-template", "plain.jinja",
                              cwd=tmp_path))
    assert "cannot render tool calls" in line
    assert "message 2: the call to 'get_weather' is missing where the template rendered that message" in line


def _fit_yaml(tmp_path, model, data, **model_args):
    import yaml

    cfg = {"model": {"model_name_or_path": str(model), "learning_rate": 1e-3, **model_args},
           "data": {"dataset_dir": str(data), "micro_batch_size": 2, "global_batch_size": 2, "max_length": 512},
           "trainer": {"accelerator": "cpu", "max_steps": 2, "default_root_dir": str(tmp_path / "run"),
                       "enable_progress_bar": False}}
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_kto_build_is_not_trained_as_sft(tmp_path, scratch_model):
    """Item 5: SFT on a KTO build would train the failures as successes (all under the positive prompt)."""
    _write_jsonl(tmp_path / "t.jsonl", [_chat(f"q{i}?", i % 2 == 0) for i in range(6)])
    assert nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--variant", "kto", "--out", "kto",
               cwd=tmp_path).returncode == 0
    line = one_error_line(nat("fit", "--config", _fit_yaml(tmp_path, scratch_model, tmp_path / "kto"), cwd=tmp_path))
    assert "this dataset is a KTO build" in line and "model.objective: kto" in line


def test_fit_numbers_and_missing_paths_are_one_line(tmp_path, scratch_model):
    """Items 12 and issue 32: --model.warmup_ratio 5 was accepted; fit before build said 'Directory ... not found'."""
    _write_jsonl(tmp_path / "t.jsonl", [_chat(f"q{i}?", i % 2 == 0) for i in range(4)])
    assert nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path).returncode == 0
    cfg = _fit_yaml(tmp_path, scratch_model, tmp_path / "ds")
    assert "model.warmup_ratio 5.0: must be a finite number in [0, 1]" in one_error_line(
        nat("fit", "--config", cfg, "--model.warmup_ratio", "5", cwd=tmp_path))
    line = one_error_line(nat("fit", "--config", cfg, "--data.dataset_dir", "runs/data/nothing", cwd=tmp_path))
    assert "data.dataset_dir runs/data/nothing: no such dataset folder; build it first with nat build" in line
    (tmp_path / "runs").mkdir()
    line = one_error_line(nat("fit", "--config", cfg, "--model.model_name_or_path", "runs/nothing", cwd=tmp_path))
    assert "model.model_name_or_path runs/nothing: no such model folder" in line


def test_build_overwrite_waits_for_a_fit_reading_the_rows(tmp_path):
    """Item 14: a running nat fit holds a shared lock on its dataset; nat build --overwrite is refused meanwhile."""
    import subprocess
    import sys

    _write_jsonl(tmp_path / "t.jsonl", [_chat(f"q{i}?", i % 2 == 0) for i in range(4)])
    assert nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lightning_nat.core.outputs import reading\n"
                               "with reading('ds', 'nat fit'):\n    print('held', flush=True)\n    time.sleep(60)\n"],
                              cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_error_line(nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds",
                                  "--overwrite", cwd=tmp_path))
        assert "ds: in use by a `nat fit` reading it" in line
    finally:
        holder.kill()
    assert nat("build", "--format", "openai", "--trajectories", "t.jsonl", "--out", "ds", cwd=tmp_path).returncode == 0


def test_make_trainer_progress_bar_counts_what_it_runs(tiny_dataset, scratch_model):
    """Issue 32: a step budget alone showed `Epoch 0/-2 ... 16/4` (max_epochs -1; optimizer steps against micro-batches)."""
    from lightning_nat.train.datamodule import NATDataModule
    from lightning_nat.train.model import NATModule
    from lightning_nat.train.trainer import make_trainer

    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), micro_batch_size=2,
                       global_batch_size=8, max_length=512)
    trainer = make_trainer(dm, max_steps=3, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(NATModule(str(scratch_model), learning_rate=1e-3), dm)
    bar = trainer.progress_bar_callback
    assert trainer.global_step == 3 and trainer.max_epochs >= 1
    assert bar.total_train_batches >= 3 * 4  # the epoch holds the 12 micro-batches run (was 3 optimizer steps)


def test_runs_print_no_lightning_tips_or_deprecation_noise(tmp_path, scratch_model, tiny_dataset, shared_data):
    """Issue 32: every run printed Lightning's litlogger tip and a `past_key_values` FutureWarning."""
    fit = nat("fit", "--config", _fit_yaml(tmp_path, scratch_model, tiny_dataset), cwd=tmp_path)
    ev = nat("eval", "--model", scratch_model, "--tasks", "gsm8k", "--data-dir", shared_data, "--limit", "2",
             "--max-new-tokens", "4", "--max-turns", "1", "--out", "ev", cwd=tmp_path)
    for proc in (fit, ev):
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = proc.stdout + proc.stderr
        assert "Tip:" not in out and "FutureWarning" not in out and "past_key_values" not in out, out[-2000:]


@pytest.mark.parametrize("command", [["solve", "1 + 1"], ["eval", "--tasks", "gsm8k", "--limit", "1", "--out", "ev"]])
def test_the_agent_commands_name_a_missing_or_wrong_model_folder(tmp_path, command, shared_data):
    """The check nat fit makes, made where eval and solve load a model (not transformers' repo-id message)."""
    (tmp_path / "empty").mkdir()
    command = [*command, "--data-dir", str(shared_data)] if command[0] == "eval" else command
    extra = ["--task", "arith"] if command[0] == "solve" else []
    line = one_error_line(nat(*command[:1], "--model", "./nothere", *extra, *command[1:], cwd=tmp_path))
    assert line.startswith("error: --model ./nothere: no such model folder"), line
    line = one_error_line(nat(*command[:1], "--model", "empty", *extra, *command[1:], cwd=tmp_path))
    assert line.startswith("error: --model empty: not a model folder (no config.json)"), line
    assert not (tmp_path / "ev").exists()


def test_fit_without_deepspeed_names_the_extra(tmp_path):
    """A DeepSpeed config without the package is one line naming the extra (it was jsonargparse's union error)."""
    from test_reliability import REPO

    (tmp_path / "fake" / "deepspeed").mkdir(parents=True)
    (tmp_path / "fake" / "deepspeed" / "__init__.py").write_text("raise ImportError('No module named deepspeed')\n")
    env = {"PYTHONPATH": os.pathsep.join(map(str, [tmp_path / "fake", REPO, REPO / "tests"]))}
    for args in (["--config", REPO / "launch/configs/gsm8k-13b-5k-nat.yaml"],
                 ["--config", REPO / "launch/configs/tiny-cpu.yaml", "--trainer.strategy=deepspeed_stage_3"]):
        line = one_error_line(nat("fit", *args, cwd=tmp_path, env=env))
        assert line == ("error: this run's trainer.strategy is DeepSpeed, which is not installed: pip install "
                        "'lightning_nat[deepspeed]' (from a clone: pip install -e '.[deepspeed]')"), line
