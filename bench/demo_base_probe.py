"""How competent is the demo's pretrained base? Greedy first assistant turns on held-out transcripts.

    python bench/demo_base_probe.py runs/design2/cache/base-<key> --n 20
    python bench/demo_base_probe.py --pretrain 1600 --every 200 --texts 20000   # copying as it emerges

A transcript (``lightning_nat.demo.base``) is cut after its first ``<|im_start|>assistant`` line; the base
continues greedily and the turn is scored against the transcript's own: the whole turn exact, the restated
sentence exact, and the two noted numbers exact. Seeds 10_000+ are never used for pretraining texts
(those come from one ``random.Random(spec.seed)`` stream), so these transcripts are new to the base.
With ``--pretrain`` a fresh base is pretrained (``make_base``, in a temporary cache) and probed every
``--every`` steps of that one run.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile


def probe(model, tok, n: int) -> dict[str, int]:
    """Counts of exact whole turns, restated sentences and noted numbers over ``n`` held-out transcripts."""
    import torch

    from lightning_nat.demo.base import _transcript

    head = "<|im_start|>assistant\n"
    scores = {"turn": 0, "sentence": 0, "numbers": 0}
    was_training = model.training
    model.eval()
    for i in range(n):
        text = _transcript(random.Random(10_000 + i))
        cut = text.index(head) + len(head)
        want = text[cut:text.index("<|im_end|>", cut)]
        ids = tok(text[:cut], return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        got = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        scores["turn"] += got.strip() == want.strip()
        scores["sentence"] += got.split("\n")[0] == want.split("\n")[0]
        scores["numbers"] += got.strip().split("\n")[-1] == want.split("\n")[-1]
    model.train(was_training)
    return scores


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_nat.demo.base import BaseSpec, make_base

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", nargs="?", help="a cached base folder (base-<key>)")
    ap.add_argument("--n", type=int, default=20, help="held-out transcripts")
    ap.add_argument("--pretrain", type=int, default=0, help="pretrain a fresh base this many steps, probing as it goes")
    ap.add_argument("--every", type=int, default=200, help="with --pretrain: probe every this many steps")
    ap.add_argument("--texts", type=int, default=20000, help="with --pretrain: unlabelled passages")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.pretrain:
        spec = BaseSpec(texts=args.texts, steps=args.pretrain)

        def on_step(step: int, model, tok) -> None:
            if step % args.every == 0:
                print(json.dumps({"step": step, **probe(model, tok, args.n)}), flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            make_base(spec, tmp, say=lambda msg: None, on_step=on_step)
        return
    if not args.base:
        ap.error("give a base folder, or --pretrain N")
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base).eval()
    print(json.dumps({"base": args.base, "n": args.n, **probe(model, tok, args.n)}))


if __name__ == "__main__":
    main()
