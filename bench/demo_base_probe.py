"""How competent is the demo's pretrained base? Greedy first assistant turns on held-out transcripts.

    python bench/demo_base_probe.py runs/design/cache/base-<key> --n 20

A transcript (``lightning_nat.demo.base``) is cut after its first ``<|im_start|>assistant`` line; the base
continues greedily and the turn is scored against the transcript's own: the whole turn exact, the restated
sentence exact, and the two noted numbers exact. Seeds 10_000+ are never used for pretraining texts
(those come from one ``random.Random(spec.seed)`` stream), so these transcripts are new to the base.
"""

from __future__ import annotations

import argparse
import json
import random


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_nat.demo.base import _transcript

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="a cached base folder (base-<key>)")
    ap.add_argument("--n", type=int, default=20, help="held-out transcripts")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base).eval()
    head = "<|im_start|>assistant\n"
    scores = {"turn": 0, "sentence": 0, "numbers": 0}
    for i in range(args.n):
        text = _transcript(random.Random(10_000 + i))
        cut = text.index(head) + len(head)
        want = text[cut:text.index("<|im_end|>", cut)]
        ids = tok(text[:cut], return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=tok.eos_token_id)
        got = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        scores["turn"] += got.strip() == want.strip()
        scores["sentence"] += got.split("\n")[0] == want.split("\n")[0]
        scores["numbers"] += got.strip().split("\n")[-1] == want.split("\n")[-1]
    print(json.dumps({"base": args.base, "n": args.n, **scores}))


if __name__ == "__main__":
    main()
