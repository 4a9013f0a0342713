"""Our DPO and KTO losses and gradients equal TRL's trainers' on single-turn rows, on the scratch model.

Single-turn rows (instruction, question, one assistant turn) cut from real StrategyQA pairs are where
TRL's masks and ours can agree: the test first checks that TRL's own tokenization gives the same
token ids and completion mask as ours, then feeds the same batch (and the same reference log-probs)
to TRL's ``DPOTrainer`` / ``KTOTrainer`` loss and to ours, each on its own float64 copy of the same
weights, and compares the losses to 1e-5 and every parameter's gradient to 1e-5 absolute plus 1e-4
relative (TRL's fused LM head computes in float32 whatever the model's dtype).
"""

import warnings

import datasets
import pytest
import torch

from lightning_nat.train.datamodule import collate
from lightning_nat.train.model import NATModule, dpo_loss, kto_loss
from lightning_nat.train.tokenization import IGNORE_INDEX, ensure_chat_template, mismatched_pair, tokenize_conversation

trl = pytest.importorskip("trl")

ROWS = 4


@pytest.fixture(scope="module")
def single_turn_pairs(strategyqa_files, tmp_path_factory):
    from lightning_nat.builders import build_dataset

    res = build_dataset([str(strategyqa_files["pos"]), str(strategyqa_files["neg"])], "dpo",
                        cache_dir=str(tmp_path_factory.mktemp("cache")), questions=str(strategyqa_files["questions"]),
                        task="strategyqa", on_error="skip", pos_num=120, neg_num=200, pairs_per_question=1,
                        prompt_style="native")  # system + question, then one assistant turn: single-turn rows
    rows = []
    for row in res.dataset["train"].select(range(ROWS)):
        cut = lambda msgs: [{"role": m["role"], "content": m["content"], "train": m["train"]} for m in msgs[:3]]  # noqa: E731
        rows.append({"chosen": cut(row["messages"]), "rejected": cut(row["rejected"])})
    assert all(r["chosen"][2]["role"] == "assistant" and r["chosen"][:2] == r["rejected"][:2] for r in rows)
    return rows


def _tokenizer(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return ensure_chat_template(tok)


def _plain(msgs):
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _ours(tok, msgs):
    enc = tokenize_conversation(tok, msgs)
    return {"input_ids": enc.input_ids, "labels": enc.labels}


def _trl_rows(trl_batch):
    """TRL's batch back as unpadded (ids, completion mask) rows."""
    out = []
    for ids, att, comp in zip(trl_batch["input_ids"], trl_batch["attention_mask"], trl_batch["completion_mask"]):
        n = int(att.sum())
        out.append((ids[:n].tolist(), comp[:n].tolist()))
    return out


def _in_order(trainer):
    """TRL's collated batch of its prepared training rows, in dataset order (its loader shuffles)."""
    return trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)])


def _grads(model):
    return {n.removeprefix("base_model.model."): p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def _compare_grads(ours, theirs):
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        # TRL's fused LM head runs the log-softmax in float32 even for a float64 model, which bounds the agreement
        # of gradients at float32 precision (observed: at most ~1.4e-5 relative, on the embeddings).
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in ours.values())


def _our_module(scratch_model, objective, **kw):
    module = NATModule(str(scratch_model), objective=objective, **kw)
    module.configure_model()
    module.model.double()  # both sides in float64, so that 1e-5 measures the method, not float32 summation order
    module.train()
    return module


def test_dpo_loss_and_gradients_equal_trl(scratch_model, single_turn_pairs, tmp_path):
    from transformers import AutoModelForCausalLM

    beta, sft_weight = 0.3, 0.5
    tok = _tokenizer(scratch_model)
    items = []
    for r in single_turn_pairs:
        c, j = _ours(tok, r["chosen"]), _ours(tok, r["rejected"])
        items.append({"input_ids": c["input_ids"], "labels": c["labels"], "rejected_input_ids": j["input_ids"],
                      "rejected_labels": j["labels"], "index": len(items), "step_targets": ROWS, "weight": 1.0})
    # TRL tokenizes the same rows its own way.
    trl_ds = datasets.Dataset.from_list([{"prompt": _plain(r["chosen"][:2]), "chosen": _plain(r["chosen"][2:]),
                                          "rejected": _plain(r["rejected"][2:])} for r in single_turn_pairs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                            per_device_train_batch_size=ROWS, beta=beta, loss_type=["sigmoid", "sft"],
                            loss_weights=[1.0, sft_weight], precompute_ref_log_probs=True, max_length=None,
                            dataloader_drop_last=False)
        trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(scratch_model), dtype=torch.float64), args=cfg,
                                 train_dataset=trl_ds, processing_class=tok)
    trl_batch = _in_order(trainer)
    # Where masks agree: TRL's ids and completion tokens are ours (chosen rows, then rejected rows).
    ours_rows = [(it["input_ids"], [int(lab != IGNORE_INDEX) for lab in it["labels"]]) for it in items] + \
        [(it["rejected_input_ids"], [int(lab != IGNORE_INDEX) for lab in it["rejected_labels"]]) for it in items]
    assert _trl_rows(trl_batch) == ours_rows
    # The same batch and reference log-probs (TRL's own precomputed ones) for both.
    ref = torch.stack([trl_batch["ref_chosen_logps"], trl_batch["ref_rejected_logps"]], 1).double()
    # Off the policy, so that the loss has a real slope.
    ref = ref + torch.tensor([[0.7, -0.4], [-1.1, 0.3], [0.2, 0.9], [-0.5, -0.8]], dtype=torch.float64)
    batch = {**collate(items, tok.pad_token_id, "dpo"), "ref": ref}
    trl_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "completion_mask": (batch["labels"] != IGNORE_INDEX).long(),
                  "ref_chosen_logps": ref[:, 0], "ref_rejected_logps": ref[:, 1]}
    theirs = trainer._compute_loss(trainer.model, trl_inputs, False)
    theirs.backward()
    module = _our_module(scratch_model, "dpo", beta=beta, sft_weight=sft_weight)
    total, _, _ = dpo_loss(module, batch)
    ours = total / ROWS  # our sum over the step's pairs / pairs in the step; one micro-batch here
    ours.backward()
    assert abs(ours.item() - theirs.item()) < 1e-5 and ours.item() > 0
    _compare_grads(_grads(module.model), _grads(trainer.model))


def test_kto_loss_and_gradients_equal_trl(scratch_model, single_turn_pairs, tmp_path):
    from transformers import AutoModelForCausalLM

    beta, w_d, w_u = 0.2, 1.3, 0.7
    tok = _tokenizer(scratch_model)
    convs = [r["chosen"] for r in single_turn_pairs[:2]] + [r["rejected"] for r in single_turn_pairs[2:]]
    desirable = [True, True, False, False]
    items = [{**_ours(tok, c), "label": "positive" if d else "negative", "index": i, "step_targets": ROWS,
              "weight": 1.0} for i, (c, d) in enumerate(zip(convs, desirable))]
    # TRL's mismatched pairs: row i's prompt with row i-1's completion (cycled by one within the batch).
    for i, it in enumerate(items):
        other = items[i - 1]
        it["kl_input_ids"], it["kl_labels"] = mismatched_pair(it["input_ids"], it["labels"], other["input_ids"],
                                                              other["labels"], 10_000)
    trl_ds = datasets.Dataset.from_list([{"prompt": _plain(c[:2]), "completion": _plain(c[2:]), "label": d}
                                         for c, d in zip(convs, desirable)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = trl.KTOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                            per_device_train_batch_size=ROWS, beta=beta, desirable_weight=w_d, undesirable_weight=w_u,
                            precompute_ref_log_probs=True, max_length=None)
        trainer = trl.KTOTrainer(model=AutoModelForCausalLM.from_pretrained(str(scratch_model), dtype=torch.float64), args=cfg,
                                 train_dataset=trl_ds, processing_class=tok)
    trl_batch = _in_order(trainer)
    assert trl_batch["label"].tolist() == desirable
    ours_rows = [(it["input_ids"], [int(lab != IGNORE_INDEX) for lab in it["labels"]]) for it in items]
    assert _trl_rows(trl_batch) == ours_rows
    kl_rows = [(it["kl_input_ids"], [int(lab != IGNORE_INDEX) for lab in it["kl_labels"]]) for it in items]
    assert _trl_rows({"input_ids": trl_batch["KL_input_ids"], "attention_mask": trl_batch["KL_attention_mask"],
                      "completion_mask": trl_batch["KL_completion_mask"]}) == kl_rows
    ref = torch.stack([trl_batch["ref_logps"], trl_batch["ref_KL_logps"]], 1).double()
    # Shift the reference so that the KL point is positive (not clamped) and rows sit off the policy.
    ref = ref + torch.tensor([[0.6, -0.9], [-0.8, -0.2], [0.4, -0.5], [-0.3, -1.2]], dtype=torch.float64)
    batch = {**collate(items, tok.pad_token_id, "kto"), "ref": ref}
    trl_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "completion_mask": (batch["labels"] != IGNORE_INDEX).long(), "KL_input_ids": batch["kl_input_ids"],
                  "KL_attention_mask": batch["kl_attention_mask"],
                  "KL_completion_mask": (batch["kl_labels"] != IGNORE_INDEX).long(),
                  "label": batch["desirable"], "ref_logps": ref[:, 0], "ref_KL_logps": ref[:, 1]}
    theirs = trainer._compute_loss(trainer.model, trl_inputs, False)
    theirs.backward()
    module = _our_module(scratch_model, "kto", beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    total, metrics, _ = kto_loss(module, batch)
    assert metrics["kl"] > 0
    ours = total / ROWS
    ours.backward()
    assert abs(ours.item() - theirs.item()) < 1e-5
    _compare_grads(_grads(module.model), _grads(trainer.model))
