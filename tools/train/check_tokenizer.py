"""Check the written tokenizer.json against @huggingface/tokenizers in node: identical ids on the held-out
documents and on non-ASCII / chat strings, and decode(encode(s)) == s. Fails (exit 1) on any mismatch."""
import argparse
import json
import os
import subprocess
import sys

from bpe import ByteBPE

EXTRA = [
    "Hello, world! It's a test: don't panic -- 3.14159 and 1/2\" pipe.",
    "  leading spaces,\ttabs\n\nand blank lines\n  ",
    "Ünïcödé façade naïve café; Grüße aus Köln. Ελληνικά, русский, 日本語のテキスト, 한국어, עברית, العربية.",
    "Emoji 😀🎉👍🏽 and symbols ∑ √ ≠ ∞ € £ ¥ © ® ™ — “curly quotes” ‘single’ …",
    "Mixed\u00a0no-break\u2003em-space\u3000ideographic space and zero\u200bwidth.",
    "<|im_start|>user\nWhat is the capital of Texas?<|im_end|>\n<|im_start|>assistant\nAustin.<|im_end|>\n",
    "text before<|endoftext|>text after",
    "x",
    " ",
    "I'll they're we've she'd it's 'tis DON'T",
    "numbers 1234567890 ٣٤٥ ½ ² ⅷ",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/warmkv-brown")
    ap.add_argument("--work", default="/tmp/warmkv-train")
    args = ap.parse_args()
    tok = ByteBPE.from_tokenizer_json(os.path.join(args.model, "tokenizer.json"))
    with open(os.path.join(args.work, "heldout_texts.json"), encoding="utf-8") as fh:
        held = json.load(fh)
    cases = [{"name": k, "text": v} for k, v in held.items()]
    cases += [{"name": f"extra{i}", "text": t} for i, t in enumerate(EXTRA)]
    for c in cases:
        c["ids"] = tok.encode(c["text"])
        if tok.decode(c["ids"]) != c["text"]:
            raise SystemExit(f"python roundtrip failed on {c['name']}")
    path = os.path.join(args.work, "tokenizer_cases.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(cases, fh, ensure_ascii=False)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    r = subprocess.run(["node", os.path.join(root, "tools/train/check_tokenizer.mjs"), args.model, path], cwd=root)
    if r.returncode != 0:
        raise SystemExit("tokenizer check FAILED")
    print("tokenizer check passed: JS ids == Python ids, decode(encode(s)) == s")


if __name__ == "__main__":
    sys.exit(main())
