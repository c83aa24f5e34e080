#!/usr/bin/env python3
"""Reference token ids on the real InternLM2 and Qwen2 tokenizers (issue 13, tokenizer conformance).

Writes fixtures/real/tokenizers/expected_ids.json, plus the `tokenizer_config.json` of each
InternVL-style tokenizer directory the references were built from (see below). The Rust test
crates/model/tests/tokenizer_conformance.rs loads our tokenizers from the same files, the way a
checkpoint load does, and asserts identical ids.

References (pinned to the versions of /work/pyenv; the script refuses others):
  - InternLM2 / InternLM2.5 sizes (InternVL2-2B/8B/26B, InternVL2.5-2B/8B/26B): OpenGVLab's own
    `InternLM2Tokenizer` (internvl_chat/internvl/model/internlm2/tokenization_internlm2.py), read at run
    time from the bare OpenGVLab/InternVL mirror (`git show`, into a temporary directory), never copied
    into this repository; over the real `tokenizer.model` (fixtures/real/README.md says where it is).
  - Qwen2 / Qwen2.5 sizes (InternVL2.5-1B/4B/8B, InternVL3-1B/2B/8B): transformers' `Qwen2Tokenizer`
    (`from_pretrained` over vocab.json + merges.txt + tokenizer_config.json, no tokenizer.json), and as
    an independent cross-check of the plain-text ids, tiktoken over `qwen.tiktoken` with the same split
    pattern (when `--qwen-tiktoken` is given).

The tokenizer directories are laid out as OpenGVLab's fine-tune script leaves them: the base LLM's
tokenizer, then `tokenizer.add_tokens([<img>, </img>, <IMG_CONTEXT>, <quad>, </quad>, <ref>, </ref>,
<box>, </box>], special_tokens=True)` (internvl_chat/internvl/train/internvl_chat_finetune.py, token
strings from internvl/train/constants.py), then `save_pretrained` under transformers 4 (the layout of
the published checkpoints: the new tokens appended to `added_tokens_decoder` after the last id; written
here directly, because transformers 5's `save_pretrained` moves the table into a tokenizer.json and
drops `add_bos_token`). The base `added_tokens_decoder`s are
the published ones of internlm2-chat (ids 0-2 and 92538-92543, documented in InternLM's chat format)
and of Qwen2.5-Instruct (151643-151664). No published InternVL tokenizer_config.json was available;
replace ours with the published one when it is.

Usage (from the repository root):
  python tools/conformance/tokenizer_ids.py --internlm2-model PATH/tokenizer.model \\
      [--qwen-tiktoken PATH/qwen.tiktoken] [--mirror /work/.mirror/OpenGVLab+InternVL/repo]
"""
import argparse
import base64
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

PINNED = {"transformers": "5.17.0", "tokenizers": "0.23.3", "sentencepiece": "0.2.3", "tiktoken": "0.14.0"}
OPENGVLAB_TOKENIZER = "internvl_chat/internvl/model/internlm2/tokenization_internlm2.py"
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
INTERNLM2_CHAT_ADDED = {
    0: "<unk>", 1: "<s>", 2: "</s>",
    92538: "<|plugin|>", 92539: "<|interpreter|>", 92540: "<|action_end|>",
    92541: "<|action_start|>", 92542: "<|im_end|>", 92543: "<|im_start|>",
}
QWEN25_ADDED = [  # (content, special) from 151643 on
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
QUESTION = ("Please evaluate two images generated from the prompt: 'a red panda eating bamboo, 4k'. "
            "Is image 2 better than image 1? Please answer \"yes\" or \"no\", and given the detailed reason.")


def prompt(user, bos=""):
    return (f"{bos}<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def texts(family_tokens):
    base = [
        "", " ", "  ", "\t", "\n", "\n\n", " \n ", "a", "Hello world", " Hello world",
        "Hello   world  ", "tabs\tand\nnewlines\r\n", "1234567890", "3.14159 and 2,718,281",
        "Year 2024: 12.5% of 1000000", "你好，世界！", "上海人工智能实验室", "日本語のテキスト",
        "한국어 텍스트", "Ünïcödé çàfé naïve", "e\u0301 (decomposed) vs \u00e9", "emoji 😀🎉👍🏽 and ❤️",
        "👨‍👩‍👧‍👦", "mixed 中文 English 123 😀", "don't I'll we've they're", "    indented code\n        more",
        "a\u0000b", "trailing space ", "yes", "no", " yes", " no", "Yes", "No",
        "<img><IMG_CONTEXT><IMG_CONTEXT></img>", "<ref>cat</ref><box>[[1, 2, 3, 4]]</box>",
        "<quad>x</quad>", "text<img>inside</img>text", "<|im_start|>user\nhi<|im_end|>",
        "<|im_start|> spaced <|im_end|>", "<im_start>not a token", "<|im_start",
    ]
    specials = [t + " x" for t in family_tokens] + ["".join(family_tokens)]
    image = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    prompts = [prompt(f"{image}\n{QUESTION}"), prompt(f"Image-1: {image}\nImage-2: {image}\n{QUESTION}")]
    return base + specials + prompts


def check_versions():
    import sentencepiece
    import tiktoken
    import tokenizers
    import transformers
    got = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
           "sentencepiece": sentencepiece.__version__, "tiktoken": tiktoken.__version__}
    if got != PINNED:
        sys.exit(f"pinned {PINNED}, found {got}")
    return got


def load_opengvlab_tokenizer_class(mirror, tmp):
    commit = subprocess.check_output(["git", "-C", mirror, "rev-parse", "HEAD"], text=True).strip()
    source = subprocess.check_output(["git", "-C", mirror, "show", f"HEAD:{OPENGVLAB_TOKENIZER}"])
    path = os.path.join(tmp, "tokenization_internlm2.py")
    with open(path, "wb") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("tokenization_internlm2", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tokenization_internlm2"] = module  # save_pretrained looks its file up there
    spec.loader.exec_module(module)
    return module.InternLM2Tokenizer, commit


def added_entry(content, special):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def internvl_config(config, first_id):
    """The tokenizer_config.json that OpenGVLab's fine-tune step leaves (transformers 4 layout, as
    published): the InternVL tokens appended to `added_tokens_decoder` after the last id, special."""
    config = json.loads(json.dumps(config))
    for k, content in enumerate(INTERNVL_TOKENS):
        config["added_tokens_decoder"][str(first_id + k)] = added_entry(content, True)
    return config


def write_dir(path, config, files):
    os.makedirs(path)
    for name, src in files.items():
        if src.endswith(".gz"):
            with gzip.open(src, "rb") as f, open(os.path.join(path, name), "wb") as g:
                g.write(f.read())
        else:
            shutil.copy(src, os.path.join(path, name))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


def record(tok, cases, add_special):
    ids = [tok(t, add_special_tokens=add_special)["input_ids"] for t in cases]
    return ids


def internlm2(args, tmp, out_dir):
    cls, commit = load_opengvlab_tokenizer_class(args.mirror, tmp)
    config = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): added_entry(c, True) for i, c in INTERNLM2_CHAT_ADDED.items()},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>",
                                      "<|interpreter|>", "<|plugin|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "decode_with_prefix_space": False,
        "model_max_length": 8192, "tokenizer_class": "InternLM2Tokenizer",
    }
    config = internvl_config(config, 92544)
    saved = os.path.join(tmp, "internvl-internlm2")
    write_dir(saved, config, {"tokenizer.model": args.internlm2_model})
    tok = cls.from_pretrained(saved)
    shutil.copy(os.path.join(saved, "tokenizer_config.json"), os.path.join(out_dir, "internlm2"))
    family = list(INTERNLM2_CHAT_ADDED.values())[3:] + INTERNVL_TOKENS + [
        "[UNUSED_TOKEN_141]", "[UNUSED_TOKEN_146]", "[UNUSED_TOKEN_140]", "<s>", "</s>", "<unk>"]
    cases = texts(family)
    with_special = record(tok, cases, True)
    without = record(tok, cases, False)
    return cases, {
        "reference": f"OpenGVLab InternLM2Tokenizer ({OPENGVLAB_TOKENIZER} at OpenGVLab/InternVL {commit})",
        "files": {"tokenizer.model": "real (fixtures/real/README.md)",
                  "tokenizer_config.json": "fixtures/real/tokenizers/internlm2/tokenizer_config.json"},
        "ids": with_special, "ids_without_special": without,
        "decoded": [tok.decode(ids, skip_special_tokens=False) for ids in without],
        "decoded_skip_special": [tok.decode(ids, skip_special_tokens=True) for ids in without],
        "vocab_size": len(tok),
    }


def qwen2(args, tmp, out_dir):
    from transformers import Qwen2Tokenizer
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(151643 + k): added_entry(c, s) for k, (c, s) in enumerate(QWEN25_ADDED)},
        "additional_special_tokens": [c for c, s in QWEN25_ADDED[1:14]],
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "clean_up_tokenization_spaces": False, "errors": "replace", "model_max_length": 8192,
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
    }
    config = internvl_config(config, 151643 + len(QWEN25_ADDED))
    saved = os.path.join(tmp, "internvl-qwen2")
    write_dir(saved, config, {name: os.path.join(out_dir, "qwen2", name + ".gz")
                              for name in ["vocab.json", "merges.txt"]})
    tok = Qwen2Tokenizer.from_pretrained(saved)
    for content, want in [(c, 151643 + k) for k, (c, _) in enumerate(QWEN25_ADDED)]:
        if tok.convert_tokens_to_ids(content) != want:
            sys.exit(f"transformers gives {content} id {tok.convert_tokens_to_ids(content)}, the config {want}")
    shutil.copy(os.path.join(saved, "tokenizer_config.json"), os.path.join(out_dir, "qwen2"))
    family = [c for c, _ in QWEN25_ADDED] + INTERNVL_TOKENS
    cases = texts(family)
    with_special = record(tok, cases, True)
    without = record(tok, cases, False)
    cross = None
    if args.qwen_tiktoken:
        cross = tiktoken_check(args.qwen_tiktoken, cases, without, family)
    return cases, {
        "reference": "transformers Qwen2Tokenizer.from_pretrained (vocab.json + merges.txt + tokenizer_config.json)",
        "files": {"vocab.json": "fixtures/real/tokenizers/qwen2/vocab.json.gz",
                  "merges.txt": "fixtures/real/tokenizers/qwen2/merges.txt.gz",
                  "tokenizer_config.json": "fixtures/real/tokenizers/qwen2/tokenizer_config.json"},
        "ids": with_special, "ids_without_special": without,
        "decoded": [tok.decode(ids, skip_special_tokens=False) for ids in without],
        "decoded_skip_special": [tok.decode(ids, skip_special_tokens=True) for ids in without],
        "vocab_size": len(tok), "tiktoken_cross_check": cross,
    }


def tiktoken_check(path, cases, want, family):
    """tiktoken over qwen.tiktoken: an implementation independent of `tokenizers`. NFC first, as
    Qwen2's normaliser; texts holding an added token are skipped (tiktoken would need them listed)."""
    import unicodedata

    import tiktoken
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    enc = tiktoken.Encoding("qwen", pat_str=QWEN_SPLIT, mergeable_ranks=ranks, special_tokens={})
    checked = 0
    for text, ids in zip(cases, want):
        if any(t in text for t in family):
            continue
        got = enc.encode(unicodedata.normalize("NFC", text), disallowed_special=())
        if got != ids:
            sys.exit(f"tiktoken disagrees with transformers on {text!r}: {got} vs {ids}")
        checked += 1
    return f"tiktoken {PINNED['tiktoken']} over qwen.tiktoken agrees on all {checked} texts without added tokens"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--internlm2-model", required=True)
    parser.add_argument("--qwen-tiktoken")
    parser.add_argument("--mirror", default="/work/.mirror/OpenGVLab+InternVL/repo")
    parser.add_argument("--out", default="fixtures/real/tokenizers")
    args = parser.parse_args()
    versions = check_versions()
    result = {"generator": "tools/conformance/tokenizer_ids.py", "versions": versions, "tokenizers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in [("internlm2", internlm2), ("qwen2", qwen2)]:
            cases, entry = build(args, tmp, args.out)
            entry["texts"] = cases
            result["tokenizers"][name] = entry
    path = os.path.join(args.out, "expected_ids.json")
    with open(path, "w") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
