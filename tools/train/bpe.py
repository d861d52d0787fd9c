"""Byte-level BPE (GPT-2 byte-to-unicode mapping and pre-tokenization regex), trained with the standard
word-frequency algorithm and incremental pair counts, written as a Hugging Face `tokenizer.json`.

Python's `re` has no `\\p{L}` / `\\p{N}`, so those classes are built from `unicodedata`; `\\s` is spelled out
as the JavaScript `\\s` set, so that this pre-tokenizer splits text like the `u`-mode RegExp in
@huggingface/tokenizers (`/'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+/gu`).
"""
import heapq
import json
import re
import sys
import unicodedata
from collections import Counter, defaultdict

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {v: k for k, v in BYTE_ENCODER.items()}


def _char_class(pred):
    ranges = []
    start = None
    for cp in range(0x110000 + 1):
        ok = cp < 0x110000 and not (0xD800 <= cp <= 0xDFFF) and pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            ranges.append((start, cp - 1))
            start = None
    parts = []
    for a, b in ranges:
        parts.append(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}")
    return "".join(parts)


def _build_pattern():
    L = _char_class(lambda c: unicodedata.category(c).startswith("L"))
    N = _char_class(lambda c: unicodedata.category(c) in ("Nd", "Nl", "No"))
    # JavaScript's \s (ECMAScript WhiteSpace + LineTerminator)
    S = "\\t\\n\\x0b\\x0c\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
    pat = (
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
    )
    return re.compile(pat)


PRETOKENIZE_RE = _build_pattern()
SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def pretokenize(text):
    """Split text (no special tokens inside) into byte-level pre-tokens."""
    return ["".join(BYTE_ENCODER[b] for b in m.encode("utf-8")) for m in PRETOKENIZE_RE.findall(text)]


def train_bpe(texts, vocab_size, log=print):
    """Standard BPE on pre-token frequencies. Returns (vocab dict token->id, merges list of (a, b))."""
    counts = Counter()
    for t in texts:
        for piece in SPECIAL_RE.split(t):
            if piece and piece not in SPECIAL_TOKENS:
                counts.update(pretokenize(piece))
    words = [list(w) for w in counts]
    freqs = [counts[w] for w in counts]
    log(f"bpe: {len(words)} distinct pre-tokens, {sum(freqs)} total")

    vocab = {}
    for t in SPECIAL_TOKENS:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[BYTE_ENCODER[b]] = len(vocab)
    n_merges = vocab_size - len(vocab)

    pair_counts = defaultdict(int)
    where = defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pair_counts[p] += f
            where[p].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(merges) < n_merges and heap:
        negc, pair = heapq.heappop(heap)
        c = pair_counts.get(pair, 0)
        if c <= 0:
            continue
        if -negc != c:  # stale entry: re-queue with the current count
            heapq.heappush(heap, (-c, pair))
            continue
        a, b = pair
        new = a + b
        merges.append(pair)
        vocab[new] = len(vocab)
        changed = set()
        for i in list(where[pair]):
            w = words[i]
            f = freqs[i]
            if len(w) < 2:
                continue
            # remove the old pairs of this word
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                changed.add(p)
            out = []
            j = 0
            while j < len(w):
                if j < len(w) - 1 and w[j] == a and w[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                where[p].add(i)
                changed.add(p)
        del pair_counts[pair]
        del where[pair]
        changed.discard(pair)
        for p in changed:
            cp = pair_counts.get(p, 0)
            if cp > 0:
                heapq.heappush(heap, (-cp, p))
            else:
                pair_counts.pop(p, None)
                where.pop(p, None)
        if len(merges) % 500 == 0:
            log(f"bpe: {len(merges)} merges, last {new!r} count {c}")
    return vocab, merges


class ByteBPE:
    def __init__(self, vocab, merges):
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.merges = [tuple(m) for m in merges]
        self.cache = {}

    @classmethod
    def from_tokenizer_json(cls, path):
        with open(path, encoding="utf-8") as fh:
            tj = json.load(fh)
        merges = [m.split(" ") if isinstance(m, str) else m for m in tj["model"]["merges"]]
        return cls(tj["model"]["vocab"], merges)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = list(token)
        while len(word) > 1:
            best = None
            best_rank = None
            for p in zip(word, word[1:]):
                r = self.ranks.get(p)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = p, r
            if best is None:
                break
            a, b = best
            out = []
            j = 0
            while j < len(word):
                if j < len(word) - 1 and word[j] == a and word[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            word = out
        self.cache[token] = word
        return word

    def encode(self, text):
        ids = []
        for piece in SPECIAL_RE.split(text):
            if not piece:
                continue
            if piece in SPECIAL_TOKENS:
                ids.append(self.vocab[piece])
                continue
            for pt in pretokenize(piece):
                ids.extend(self.vocab[t] for t in self.bpe(pt))
        return ids

    def decode(self, ids):
        out = []
        buf = bytearray()
        for i in ids:
            t = self.id_to_token[int(i)]
            if t in SPECIAL_TOKENS:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(t)
            else:
                buf.extend(BYTE_DECODER[c] for c in t)
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_tokenizer_json(self):
        added = [
            {"id": self.vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t in SPECIAL_TOKENS
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self.vocab,
                "merges": [f"{a} {b}" for a, b in self.merges],
            },
        }


if __name__ == "__main__":
    print(pretokenize("Hello world's  test\n\nnew  line 123 ünïcødé 日本語 !!"))
    sys.exit(0)
