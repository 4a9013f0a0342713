"""`nat export` output loads in the tools users run: datasets' JSON loader, LLaMA-Factory's layout, TRL."""

import json
import subprocess
import sys

import datasets
import pytest

from lightning_nat.train.tokenization import IGNORE_INDEX, tokenize_conversation


def _export(folder, layout, out):
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "export", str(folder), "--to", layout, "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _llamafactory_accepts(messages, role_tag, user_tags, assistant_tags, system_tag="system"):
    """LLaMA-Factory's sharegpt rule: an optional system turn first, then user/assistant alternating, even count."""
    if messages and messages[0][role_tag] == system_tag:
        messages = messages[1:]
    tags = (user_tags, assistant_tags)
    return len(messages) % 2 == 0 and all(m[role_tag] in tags[i % 2] for i, m in enumerate(messages))


@pytest.fixture(scope="module")
def native_dataset(strategyqa_files, tmp_path_factory):
    """The tiny data set in the native prompt style: a system instruction, every assistant turn trained.

    (The reference style's acknowledgement is an untrained assistant turn, which the sharegpt and
    alpaca layouts cannot express; see the refusal test below.)
    """
    from lightning_nat.builders import build_dataset, save_build

    out = tmp_path_factory.mktemp("data") / "sqa-nat"
    res = build_dataset([str(strategyqa_files["pos"]), str(strategyqa_files["neg"])], "nat",
                        cache_dir=str(tmp_path_factory.mktemp("cache")), questions=str(strategyqa_files["questions"]),
                        task="strategyqa", on_error="skip", pos_num=24, neg_num=16, dev_num=8, prompt_style="native")
    save_build(res, out)
    return out


@pytest.mark.parametrize("layout", ["openai", "sharegpt", "alpaca"])
def test_export_loads_with_the_json_loader_in_llamafactory_layouts(layout, native_dataset, tmp_path):
    tiny_dataset = native_dataset
    out = tmp_path / layout
    printed = _export(tiny_dataset, layout, out)
    built = datasets.load_from_disk(str(tiny_dataset))
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"sqa-nat", "sqa-nat_dev"}
    for split, key in (("train", "sqa-nat"), ("dev", "sqa-nat_dev")):
        entry = info[key]
        loaded = datasets.load_dataset("json", data_files=str(out / entry["file_name"]), split="train",
                              cache_dir=str(tmp_path / "hf-cache"))
        assert len(loaded) == len(built[split])
        for row, src in zip(loaded, built[split]):
            assistant = [m["content"] for m in src["messages"] if m["role"] == "assistant"]
            if layout == "alpaca":
                assert [a for _, a in row["history"]] + [row["output"]] == assistant
                assert row["system"] == src["messages"][0]["content"]
                continue
            field = entry["columns"]["messages"]
            tags = entry["tags"]
            msgs = row[field]
            assert _llamafactory_accepts(msgs, tags["role_tag"], (tags["user_tag"],), (tags["assistant_tag"],))
            assert msgs[-1][tags["role_tag"]] == tags["assistant_tag"]
            assert [m[tags["content_tag"]] for m in msgs if m[tags["role_tag"]] == tags["assistant_tag"]] == assistant
    if layout == "alpaca":
        assert "axolotl" not in printed
    else:
        assert "type: chat_template" in printed and "roles_to_train: [assistant]" in printed


@pytest.mark.parametrize("layout", ["sharegpt", "alpaca"])
def test_untrained_assistant_turns_are_refused_not_trained(layout, tiny_dataset, tmp_path):
    # The reference style's acknowledgement turn carries no loss; these layouts would train it.
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "export", str(tiny_dataset), "--to", layout,
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "has train=False" in proc.stderr and "--to openai" in proc.stderr
    assert "--prompt-style native" in proc.stderr


def test_export_refuses_a_foreign_folder(tiny_dataset, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "export", str(tiny_dataset), "--to", "openai",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "not an earlier `nat export` output" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def _nat(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _rows(folder, split="train"):
    return [dict(r) for r in datasets.load_from_disk(str(folder))[split]]


@pytest.mark.parametrize("variant,style,layout", [("nat", "reference", "openai"), ("nat", "native", "openai"),
                                                  ("nat-2", "reference", "openai"), ("nat", "native", "sharegpt"),
                                                  ("kto", "reference", "openai"), ("kto", "native", "sharegpt")])
def test_export_then_build_gives_the_same_rows(strategyqa_files, tmp_path, variant, style, layout):
    """The documented round trip: `nat export` of a build, then `nat build` of the export, rebuilds its rows."""
    src = ["--questions", strategyqa_files["questions"], "--task", "strategyqa", "--variant", variant,
           "--prompt-style", style]
    _nat("build", "--format", "nat", "--trajectories", strategyqa_files["pos"], strategyqa_files["neg"], *src,
         "--pos-num", "20", "--neg-num", "20", "--on-error", "skip", "--out", "a", cwd=tmp_path)
    _nat("export", "a", "--to", layout, "--out", "e", cwd=tmp_path)
    fmt = "sharegpt" if layout == "sharegpt" else "openai"
    _nat("build", "--format", fmt, "--trajectories", "e/train.jsonl", *src[2:], "--out", "b", cwd=tmp_path)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    last, row = json.loads((tmp_path / "e" / "train.jsonl").read_text().splitlines()[-1]), _rows(tmp_path / "a")[-1]
    assert (last["id"], last["question_id"], last["reward"], last["score"]) == \
        (row["id"], row["question_id"], row["reward"], row["score"])
    assert last["label"] == (row["label"] == "positive" if (variant, layout) == ("kto", "openai") else row["label"])


def test_dpo_and_kto_exports_are_trls_preference_layouts(strategyqa_files, tmp_path):
    src = ["--format", "nat", "--trajectories", strategyqa_files["pos"], strategyqa_files["neg"], "--questions",
           strategyqa_files["questions"], "--task", "strategyqa", "--pos-num", "300", "--neg-num", "300", "--on-error",
           "skip"]
    _nat("build", *src, "--variant", "dpo", "--out", "dpo", cwd=tmp_path)
    _nat("build", *src, "--variant", "kto", "--out", "kto", cwd=tmp_path)
    out = _nat("export", "dpo", "--to", "openai", "--out", "dpo-x", cwd=tmp_path).stdout
    assert "DPOTrainer" in out
    built = _rows(tmp_path / "dpo")
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "dpo-x" / "train.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert len(loaded) == len(built) > 0
    for rec, row in zip(loaded, built):
        n = len(rec["prompt"])
        assert [m["content"] for m in rec["prompt"]] == [m["content"] for m in row["messages"][:n]]
        assert rec["chosen"][-1]["role"] == rec["rejected"][-1]["role"] == "assistant"
        assert [m["content"] for m in rec["chosen"]] == [m["content"] for m in row["messages"][n:]][:len(rec["chosen"])]
        assert [m["content"] for m in rec["rejected"]] == [m["content"] for m in row["rejected"][n:]][:len(rec["rejected"])]
        assert rec["chosen"] != rec["rejected"] and (rec["chosen_id"], rec["rejected_id"]) == (row["chosen_id"],
                                                                                             row["rejected_id"])
    _nat("export", "kto", "--to", "openai", "--out", "kto-x", cwd=tmp_path)
    kto = [json.loads(x) for x in (tmp_path / "kto-x" / "train.jsonl").read_text().splitlines()]
    rows = _rows(tmp_path / "kto")
    assert [r["label"] for r in kto] == [row["label"] == "positive" for row in rows]
    assert {True, False} == {r["label"] for r in kto}
    for bad in ("sharegpt", "alpaca"):  # LLaMA-Factory's ranking layout takes one final response, not a trajectory
        proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "export", "dpo", "--to", bad, "--out", "y"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 1 and "a dpo build cannot be written as" in proc.stderr
        assert not (tmp_path / "y").exists()


def test_generation_template_mask_equals_ours(scratch_model, native_dataset):
    # What TRL's assistant_only_loss uses ({% generation %} blocks) marks exactly our target tokens, where every
    # assistant turn is trained (the native style; the reference style's acknowledgement is not).
    tiny_dataset = native_dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(scratch_model)
    for row in datasets.load_from_disk(str(tiny_dataset))["train"].select(range(8)):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        ours = tokenize_conversation(tok, row["messages"])
        theirs = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        assert theirs["input_ids"] == ours.input_ids
        assert theirs["assistant_masks"] == [int(lab != IGNORE_INDEX) for lab in ours.labels]


@pytest.mark.slow
def test_trl_sft_trainer_trains_on_the_openai_export(scratch_model, native_dataset, tmp_path):
    trl = pytest.importorskip("trl")
    tiny_dataset = native_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "openai"
    _export(tiny_dataset, "openai", out)
    train = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train",
                                  cache_dir=str(tmp_path / "hf-cache"))
    tok = AutoTokenizer.from_pretrained(scratch_model)
    model = AutoModelForCausalLM.from_pretrained(scratch_model)
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=2,
                         assistant_only_loss=True, max_length=4096, report_to=[], save_strategy="no",
                         logging_steps=1, use_cpu=True, seed=0, learning_rate=1e-3)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    first = trainer.train_dataset[0]
    # TRL's mask on the exported file is our mask on the built row.
    built = datasets.load_from_disk(str(tiny_dataset))["train"]
    src = next(r for r in built if [m["content"] for m in r["messages"]][:2] ==
               [m["content"] for m in train[0]["messages"]][:2])
    ours = tokenize_conversation(tok, src["messages"][: max(i for i, m in enumerate(src["messages"])
                                                           if m["role"] == "assistant") + 1])
    assert first["input_ids"] == ours.input_ids
    assert first["labels"] == ours.labels
    result = trainer.train()
    assert trainer.state.global_step == 2 and result.training_loss > 0
