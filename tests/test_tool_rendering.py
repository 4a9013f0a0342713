"""Function-calling conversations render through the tokenizer's own template; calls trained, results not."""

import json

import pytest
from test_function_calls import weather_record
from tool_templates import FAMILIES
from transformers import AutoTokenizer

from lightning_nat.core.prompts import native_spec
from lightning_nat.core.readers import from_openai_record
from lightning_nat.data.build import instruction_of, label_and_class, to_conversation
from lightning_nat.train.tokenization import IGNORE_INDEX, ConversationError, assistant_spans, tokenize_conversation


def weather_row(parallel: bool = False) -> dict:
    traj = from_openai_record(weather_record(0, True, parallel), "", "w0")
    spec = native_spec(None, instruction=instruction_of(traj, None))  # a task-less build: its own system turn
    label, cls = label_and_class(traj, "nat", spec)
    return to_conversation(traj, spec, cls, label)


def tokenizer_with(scratch_model, family: str | None):
    tok = AutoTokenizer.from_pretrained(scratch_model)
    if family:
        tok.chat_template = FAMILIES[family]
    return tok


def trained_text(tok, enc) -> str:
    """The target tokens, decoded run by run (a gap between runs shows as ' || ')."""
    runs, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels):
        if lab == IGNORE_INDEX:
            if cur:
                runs.append(tok.decode(cur))
                cur = []
        else:
            cur.append(i)
    if cur:
        runs.append(tok.decode(cur))
    return " || ".join(runs)


@pytest.mark.parametrize("family, end", [("hermes", "<|im_end|>"), ("llama31", "<|eot_id|>")])
def test_calls_are_trained_results_and_schemas_are_not(scratch_model, family, end):
    tok = tokenizer_with(scratch_model, family)
    row = weather_row()
    tools = json.loads(row["tools"])
    full, spans = assistant_spans(tok, row["messages"], tools)
    assert len(spans) == 2  # the call turn and the answer turn
    call_turn, answer_turn = (full[a:b] for a, b in spans)
    # Each span ends where the template ends the turn (the newline ChatML writes after <|im_end|> included).
    assert "get_weather" in call_turn and '"city": "Paris"' in call_turn and call_turn.rstrip("\n").endswith(end)
    assert answer_turn.rstrip("\n") == "It is 21 C in Paris." + end
    # The schema and the tool result are in the text the model sees, and outside every trained span.
    for untrained in ("Current weather of a city.", '{"temp": 21}', "What is the weather in Paris?"):
        pos = full.index(untrained)
        assert not any(a < pos + len(untrained) and pos < b for a, b in spans), untrained
    enc = tokenize_conversation(tok, row["messages"], tools=tools)
    text = trained_text(tok, enc)
    assert "get_weather" in text and "Paris" in text and "temp" not in text and "Current weather" not in text


def test_parallel_calls_render_in_one_turn_with_hermes(scratch_model):
    tok = tokenizer_with(scratch_model, "hermes")
    row = weather_row(parallel=True)
    full, spans = assistant_spans(tok, row["messages"], json.loads(row["tools"]))
    call_turn = full[spans[0][0]:spans[0][1]]
    assert call_turn.count("<tool_call>") == 2 and "Rome" in call_turn and '{"temp": 25}' not in call_turn


def test_a_template_without_tool_support_is_an_error_naming_the_fix(scratch_model):
    tok = tokenizer_with(scratch_model, None)  # the scratch ChatML template knows nothing of tools
    row = weather_row()
    with pytest.raises(ConversationError) as err:
        tokenize_conversation(tok, row["messages"], tools=json.loads(row["tools"]))
    assert str(scratch_model) in str(err.value) and "--chat-template FILE" in str(err.value)
    assert "get_weather" in str(err.value)
    # The Llama-3.1 family refuses parallel calls: the same clear error, never a render without one call.
    tok = tokenizer_with(scratch_model, "llama31")
    row = weather_row(parallel=True)
    with pytest.raises(ConversationError, match="cannot render tool calls.*only one tool call per turn"):
        tokenize_conversation(tok, row["messages"], tools=json.loads(row["tools"]))


def test_react_rows_render_as_before(scratch_model, tiny_dataset):
    """Rows without calls take the unchanged path (no tools= passed): same ids as rendering role/content alone."""
    import datasets

    tok = tokenizer_with(scratch_model, None)
    row = datasets.load_from_disk(str(tiny_dataset))["train"][0]
    plain = [{"role": m["role"], "content": m["content"], "train": m["train"]} for m in row["messages"]]
    assert tokenize_conversation(tok, row["messages"]).input_ids == tokenize_conversation(tok, plain).input_ids


def test_nat_inspect_shows_calls_trained_and_results_untrained(scratch_model, tmp_path):
    """The issue's weather case through `nat inspect`: the call inside the trained marks, the tool result outside."""
    import subprocess
    import sys

    from test_function_calls import nat, write_jsonl
    from tool_templates import HERMES

    src = write_jsonl(tmp_path / "w.jsonl", [weather_record(i, i % 2 == 0) for i in range(2)])
    assert nat(["build", "--format", "openai", "--trajectories", str(src), "--out", "built"], tmp_path).returncode == 0
    (tmp_path / "hermes.jinja").write_text(HERMES)
    base = [sys.executable, "-m", "lightning_nat.cli", "inspect", "built", "--tokenizer", str(scratch_model)]
    shown = {}
    for row in (0, 1):
        proc = subprocess.run(base + ["--row", str(row), "--chat-template", "hermes.jinja"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        shown[row] = proc.stdout
    out = shown[0]
    trained = "".join(part.split("⟧")[0] for part in out.split("⟦")[1:])
    assert "get_weather" in trained and "Paris" in trained and "It is 21 C in Paris." in trained
    assert '{"temp": 21}' in out and "temp" not in trained and "Current weather" not in trained
    assert "label: positive" in out and "marker: 'Please solve it correctly.'" in out and "tool calls: 1" in out
    assert "label: negative" in shown[1] and "marker: 'Please solve it incorrectly.'" in shown[1]
    counts = dict(kv.split(": ") for kv in out.splitlines()[1].split("  "))
    assert 0 < int(counts["trained tokens"]) < int(counts["tokens"])
    # Without a tool-capable template: the clear error, exit 1.
    proc = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "--chat-template FILE" in proc.stderr


def test_nat_inspect_shows_a_react_row(scratch_model, tiny_dataset):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "inspect", str(tiny_dataset), "--row", "0",
                           "--tokenizer", str(scratch_model)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trained = "".join(part.split("⟧")[0] for part in proc.stdout.split("⟦")[1:])
    assert "Action:" in trained and "Observation:" not in trained and "tool calls: 0" in proc.stdout
    header = proc.stdout.splitlines()[0]
    assert "label: positive" in header and "marker: 'Question: ..." in header
    assert header.endswith("solve the question **correctly**.'")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hermes", "llama31"])
def test_nat_fit_trains_function_calling_rows_and_exports_the_template(scratch_model, tmp_path, family):
    """`nat fit` on tool-call rows with --data.chat_template; the exported tokenizer renders tools the same way."""
    import os
    import subprocess
    import sys

    from test_function_calls import nat, write_jsonl

    src = write_jsonl(tmp_path / "w.jsonl", [weather_record(i, i % 2 == 0) for i in range(4)])
    assert nat(["build", "--format", "openai", "--trajectories", str(src), "--placement", "system", "--out", "built"],
               tmp_path).returncode == 0
    (tmp_path / "t.jinja").write_text(FAMILIES[family])
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(json.dumps({
        "model": {"model_name_or_path": str(scratch_model), "learning_rate": 1e-3},
        "data": {"dataset_dir": "built", "micro_batch_size": 2, "global_batch_size": 4, "max_length": 2048,
                 "cache_dir": "cache", "chat_template": "t.jinja"},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "default_root_dir": "run",
                    "enable_progress_bar": False, "limit_val_batches": 0},
    }))
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "fit", "--config", str(cfg)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (hf,) = tmp_path.glob("run/**/hf")
    exported = AutoTokenizer.from_pretrained(hf)
    assert exported.chat_template == FAMILIES[family]
    assert json.loads((hf / "nat_prompt.json").read_text())["placement"] == "system"
    # Two optimizer steps on the function-calling rows moved the weights.
    from safetensors.torch import load_file

    before, after = load_file(scratch_model / "model.safetensors"), load_file(hf / "model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)
