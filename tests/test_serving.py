"""What `nat fit` exports is served as users serve it, and `nat fit` leaves its inputs alone."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fitted(scratch_model, tiny_dataset, tmp_path_factory):
    """One `nat fit` run (two optimizer steps) on a copy of the built dataset, as a user runs it."""
    root = tmp_path_factory.mktemp("fit")
    data = root / "data"
    shutil.copytree(tiny_dataset, data)
    before = _tree(data)
    cfg = root / "tiny.yaml"
    cfg.write_text(json.dumps({
        "model": {"model_name_or_path": str(scratch_model), "learning_rate": 1e-3},
        "data": {"dataset_dir": str(data), "micro_batch_size": 2, "global_batch_size": 4, "max_length": 1024,
                 "cache_dir": str(root / "cache")},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "default_root_dir": str(root / "run"),
                    "enable_progress_bar": False, "limit_val_batches": 1},
    }))
    nat = Path(sys.executable).with_name("nat")
    proc = subprocess.run([str(nat), "fit", "--config", str(cfg)], capture_output=True, text=True, timeout=600,
                          cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (hf,) = root.glob("run/**/hf")
    return {"hf": hf, "data": data, "before": before, "after": _tree(data), "cache": root / "cache"}


@pytest.mark.slow
def test_fit_writes_nothing_into_the_dataset_folder(fitted):
    assert fitted["after"] == fitted["before"]
    assert not list(fitted["data"].rglob("cache-*.arrow"))
    assert list((fitted["cache"] / "tokenized").glob("*.arrow"))  # the tokenized rows went to the cache instead


@pytest.mark.slow
def test_exported_generation_config_samples_and_stops_on_the_trained_eos(fitted, scratch_model):
    from transformers import AutoTokenizer, GenerationConfig

    raw = json.loads((fitted["hf"] / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(scratch_model)
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("</s>")
    assert raw["do_sample"] is True
    assert raw["eos_token_id"][0] == im_end == tok.eos_token_id  # the token ChatML closes assistant turns with
    assert raw["pad_token_id"] == tok.pad_token_id
    assert not {"temperature", "top_p", "top_k"} & set(raw)  # the request decides
    assert GenerationConfig.from_pretrained(fitted["hf"]).do_sample is True
    assert eos != im_end


class ServedModel:
    """What `transformers serve` does with a request: the model's generation config, the request's temperature.

    Temperature 0 means greedy; any other temperature is passed on, and whether it samples is
    left to ``generation_config.json`` (without ``do_sample`` the server decodes greedily).
    """

    def __init__(self, folder: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder)
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> str:
        import torch

        enc = self.tok.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
        kwargs = {"max_new_tokens": min(int(body.get("max_tokens") or 16), 16)}
        t = body.get("temperature")
        kwargs.update(do_sample=False) if not t else kwargs.update(temperature=float(t))
        with self.lock, torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        return self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _collect(server: FakeOpenAI, questions: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "collect", "--task", "gsm8k", "--data",
                           str(questions), "--policy", "openai", "--model", "tiny-nat", "--base-url", server.base_url,
                           "--temperatures", "0.2", "0.7", "--max-turns", "2", "--max-new-tokens", "16",
                           "--concurrency", "1", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OPENAI_API_KEY": "unused"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trajs = [json.loads(line) for line in out.read_text().splitlines()]
    return {(t["question_id"], t["meta"]["temperature"]): t for t in trajs}


@pytest.mark.slow
def test_collect_against_a_served_export_samples_at_each_temperature(fitted, shared_data, tmp_path):
    questions = tmp_path / "q.jsonl"
    records = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:3]]
    questions.write_text("".join(json.dumps({"id": f"q{i}", **r}) + "\n" for i, r in enumerate(records)))
    with FakeOpenAI(ServedModel(fitted["hf"]), with_body=True) as server:
        trajs = _collect(server, questions, tmp_path / "sampled.jsonl")
    assert set(trajs) == {(f"q{i}", t) for i in range(3) for t in (0.2, 0.7)}
    # Each request carried its pass's temperature, and each trajectory records the one it was sampled at.
    for (qid, t), traj in trajs.items():
        question = records[int(qid[1:])]["question"]
        sent = {r["temperature"] for r in server.requests if question in r["messages"][0]["content"]
                or any(question in m["content"] for m in r["messages"])}
        assert sent == {0.2, 0.7}
        assert traj["meta"]["temperature"] == t
    differs = [q for q in ("q0", "q1", "q2") if trajs[(q, 0.2)]["messages"] != trajs[(q, 0.7)]["messages"]]
    assert differs, "the served export decoded identically at 0.2 and 0.7"

    # The control: the same export with the generation config of before (no do_sample) decodes greedily
    # whatever the temperature, which is the bug this export fixes.
    greedy = tmp_path / "greedy-export"
    shutil.copytree(fitted["hf"], greedy)
    cfg = json.loads((greedy / "generation_config.json").read_text())
    cfg.pop("do_sample")
    (greedy / "generation_config.json").write_text(json.dumps(cfg))
    with FakeOpenAI(ServedModel(greedy), with_body=True) as server:
        trajs = _collect(server, questions, tmp_path / "greedy.jsonl")
    assert all(trajs[(q, 0.2)]["messages"] == trajs[(q, 0.7)]["messages"] for q in ("q0", "q1", "q2"))
