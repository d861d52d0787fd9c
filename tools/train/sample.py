"""Step 7 helper: greedy and sampled continuations from the PyTorch model with the shipped (float16-rounded)
weights, and the held-out loss of those weights. Writes <work>/samples.json and prints Markdown."""
import argparse
import json
import math
import os

import numpy as np
import torch

from bpe import ByteBPE
from export import load_model, round_to_fp16
from train import evaluate

PROMPTS = [
    "The jury said",
    "It was a dark and",
    "The President of the United States",
    "\"I don't know,\" she said.",
    "The results of the experiment show that",
    "In the spring of 1961,",
]


@torch.no_grad()
def generate(model, ids, n, greedy, temperature=0.8, top_p=0.95, gen=None, stop=(0,)):
    logits, past = model(torch.tensor([ids]))
    out = []
    for _ in range(n):
        last = logits[0, -1]
        if greedy:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last / temperature, -1)
            sp, si = probs.sort(descending=True)
            keep = (sp.cumsum(-1) - sp) < top_p
            sp = sp * keep
            nxt = int(si[torch.multinomial(sp / sp.sum(), 1, generator=gen)])
        if nxt in stop:
            break
        out.append(nxt)
        T = len(ids) + len(out)
        logits, past = model(torch.tensor([[nxt]]), None, torch.tensor([[T - 1]]), past)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/warmkv-train")
    ap.add_argument("--ckpt", default="ckpt_last.pt")
    ap.add_argument("--out", default="models/warmkv-brown")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, state = load_model(os.path.join(args.work, args.ckpt))
    round_to_fp16(model)
    tok = ByteBPE.from_tokenizer_json(os.path.join(args.out, "tokenizer.json"))
    held = np.load(os.path.join(args.work, "heldout.npy"))
    ctx = state["args"]["ctx"]
    hl = evaluate(model, held, ctx)
    print(f"held-out loss with float16 weights: {hl:.4f} (ppl {math.exp(hl):.2f})")
    gen = torch.Generator().manual_seed(args.seed)
    res = {"heldout_loss_fp16": hl, "heldout_ppl_fp16": math.exp(hl), "samples": []}
    for p in PROMPTS:
        ids = tok.encode(p)
        g = tok.decode(generate(model, ids, args.tokens, True))
        s = tok.decode(generate(model, ids, args.tokens, False, gen=gen))
        res["samples"].append({"prompt": p, "greedy": g, "sampled": s})
        print(f"\n**Prompt:** `{p}`\n- greedy: {p}{g}\n- sampled: {p}{s}")
    with open(os.path.join(args.work, "samples.json"), "w") as fh:
        json.dump(res, fh, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
