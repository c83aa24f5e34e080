#!/usr/bin/env python3
"""Hugging Face transformers baseline on the same card as `rewarddance bench-model`.

Random weights at the presets' real shapes (read from crates/model/src/family/internvl/presets.rs, the one
source), `InternVLForConditionalGeneration` built from a config (no download, no network), SDPA
attention, one prefill per batch with `logits_to_keep=1`, P(yes) read off the last position.
Items as in bench-model: pointwise = 72 text tokens + one 1-tile image,
pairwise = 72 text tokens + two images; every item the same length, so no padding.

    python3 tools/gpu/baseline.py --preset 1b --device cuda --batch 1,16,64 --json out.json

Prints one Markdown row per (mode, batch) and, with --json, writes the rows as a JSON list.
Needs torch and transformers (the GPU machine has torch 2.11 + transformers 5.17).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

PRESETS_RS = Path(__file__).resolve().parents[2] / "crates/model/src/family/internvl/presets.rs"
TEXT_TOKENS = 72


def preset_shapes(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(vit width, layers, heads, mlp, tile, patch), (llm width, layers, heads, kv heads, mlp, vocab)."""
    text = PRESETS_RS.read_text()
    named = {m.group(1): m.group(2) for m in re.finditer(r"let (\w+) = (\([^)]*\));", text)}
    m = re.search(rf'"{re.escape(name)}" => shapes\((\w+|\([^)]*\)), (\([^)]*\))\)', text)
    if not m:
        sys.exit(f"unknown preset {name!r} (not in {PRESETS_RS})")

    def tup(s: str) -> tuple[int, ...]:
        return tuple(int(x.replace("_", "")) for x in s.strip("()").split(","))

    return tup(named.get(m.group(1), m.group(1))), tup(m.group(2))


def build(name: str, dtype, device):
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    (vw, vl, vh, vm, tile, patch), (lw, ll, lh, lkv, lm, vocab) = preset_shapes(name)
    tokens_per_tile = (tile // patch) ** 2 // 4  # pixel shuffle at downsample 0.5
    image_token_id = vocab - 7
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=vw, num_hidden_layers=vl, num_attention_heads=vh, intermediate_size=vm,
            image_size=tile, patch_size=patch, attention_bias=True, norm_type="layer_norm",
            layer_norm_eps=1e-6, use_qk_norm=False, hidden_act="gelu",
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=vocab, hidden_size=lw, num_hidden_layers=ll,
            num_attention_heads=lh, num_key_value_heads=lkv, intermediate_size=lm,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            max_position_embeddings=32768, tie_word_embeddings=False,
        ),
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_token_id=image_token_id, image_seq_length=tokens_per_tile, tie_word_embeddings=False,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype on the device, no f32 copy
    try:
        with torch.device(device):
            model = InternVLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation("sdpa")
    return model.eval(), tile, tokens_per_tile, image_token_id


def make_batch(batch: int, images: int, tile: int, tokens_per_tile: int, image_token_id: int, dtype, device):
    import torch

    text = torch.randint(100, min(10_000, image_token_id), (batch, TEXT_TOKENS), device=device)
    parts = [text[:, : TEXT_TOKENS // 2]]
    for _ in range(images):
        parts.append(torch.full((batch, tokens_per_tile), image_token_id, device=device))
    parts.append(text[:, TEXT_TOKENS // 2 :])
    input_ids = torch.cat(parts, dim=1)
    pixels = torch.randn(batch * images, 3, tile, tile, device=device, dtype=dtype)
    return input_ids, pixels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32")
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--mode", default="pointwise,pairwise")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json", default=None, help="append the rows to this JSON file (a list)")
    args = ap.parse_args()

    import torch
    import transformers

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    started = time.perf_counter()
    model, tile, tpt, image_token_id = build(args.preset, dtype, device)
    print(f"baseline: transformers {transformers.__version__} torch {torch.__version__} preset {args.preset} "
          f"{dtype} on {device} (built in {time.perf_counter() - started:.1f}s)", flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    print("| preset | mode | batch | tokens/item | ms/batch | items/s |")
    print("|---|---|---:|---:|---:|---:|", flush=True)
    for mode in args.mode.split(","):
        images = 2 if mode == "pairwise" else 1
        for batch in (int(b) for b in args.batch.split(",")):
            input_ids, pixels = make_batch(batch, images, tile, tpt, image_token_id, dtype, device)
            with torch.inference_mode():
                def forward():
                    out = model(input_ids=input_ids, pixel_values=pixels, logits_to_keep=1)
                    return torch.softmax(out.logits[:, -1, :2].float(), dim=-1)[:, 0]

                forward()  # warm-up
                sync()
                t = time.perf_counter()
                for _ in range(max(args.iters, 1)):
                    forward()
                sync()
                secs = (time.perf_counter() - t) / max(args.iters, 1)
            row = {"preset": args.preset, "mode": mode, "batch": batch, "tokens_per_item": input_ids.shape[1],
                   "ms_per_batch": secs * 1e3, "items_per_s": batch / secs, "dtype": str(dtype).removeprefix("torch."),
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
            rows.append(row)
            print(f"| {args.preset} | {mode} | {batch} | {row['tokens_per_item']} | {secs * 1e3:.1f} | "
                  f"{row['items_per_s']:.1f} |", flush=True)
    if args.json:
        path = Path(args.json)
        previous = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
        path.write_text(json.dumps(previous + rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
