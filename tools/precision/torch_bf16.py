"""PyTorch's bf16 error next to f32 on the committed fixtures and on a real-width model.

For every item of the committed fixtures (``fixtures/reference/<model>.json``: token ids, and the
exact pixel values in ``<model>.pixel_values.safetensors``) this runs transformers'
``InternVLForConditionalGeneration`` (eager attention, the fixtures' reference) twice on the same
weights and inputs, in float32 and in bfloat16 (``model.to(torch.bfloat16)``, the pixel values cast
to bf16 too, logits taken as the model returns them), and records per item the answer logits,
``p_yes`` and the bf16-vs-f32 deltas ``d_logit = max(|Δ logit_yes|, |Δ logit_no|)``,
``d_p_yes`` and ``d_vocab_rms``, the root mean square of Δ logit over the whole vocabulary (a
statistic of the whole hidden-state error, where the two answer tokens sample it twice). The f32 run must reproduce the fixture's committed logits (|Δ| <= 1e-4), which shows
the weights are loaded as the fixture generator meant them.

* ``tiny-internvl-hf``: loaded with ``from_pretrained`` as saved.
* ``tiny-internvl-ogv``: the OpenGVLab-named shards mapped back with the fixture generator's own
  ``fx_models.ogv_to_hf`` into the same HF model class (the generator's own reload check).
* ``tiny-internvl-internlm2`` / ``tiny-internvl-vit6b``: InternViT through HF's
  ``InternVLVisionModel`` and the InternLM2 decoder through transformers' Llama (the same maths:
  the generator's ``llama_cross_check`` asserts it), wqkv split per KV group.

``--real-dir DIR`` also builds a real-width model (InternVL2.5-1B widths: InternViT-300M width 1024,
16 heads, MLP 4096, 448 px tiles of 14 px patches; Qwen2.5-0.5B width 896, 14 heads / 2 KV heads,
MLP 4864, vocab 151674, tied head; layers cut to 2 + 4), random weights from a fixed seed
(``fx_models.reinit``), saves it to DIR in HF layout with the tiny fixture's tokenizer files, the
case's pixel values (OpenGVLab preprocessing of a fixture image at 448 px) and ids, and records the
same numbers for it. ``crates/model/tests/bf16_accuracy.rs`` reads DIR from
``REWARDDANCE_BF16_REAL_DIR``.

Run: python tools/precision/torch_bf16.py --real-dir /tmp/rd-bf16-real
Writes fixtures/precision/bf16-torch.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import InternVLConfig, InternVLForConditionalGeneration  # noqa: E402

import fx_models  # noqa: E402
from fx_common import FIX, REF_DIR, write_json  # noqa: E402
from fx_images import preprocess_image  # noqa: E402

F32_TOL = 1e-4
# Its own folder: tools/fixtures/generate.py deletes and rewrites fixtures/reference.
OUT = FIX / "precision" / "bf16-torch.json"


def answer_scores(logits: torch.Tensor, yes: int, no: int) -> dict:
    ly, ln = float(logits[yes]), float(logits[no])
    return {"logit_yes": ly, "logit_no": ln, "p_yes": 1.0 / (1.0 + math.exp(ln - ly))}


def last_logits(model, ids: list[int], pixel_values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), pixel_values=pixel_values.to(dtype)).logits[0, -1]
    assert out.dtype == dtype
    return out.float()


def compare(model_f32, cases, yes: int, no: int, expected=None) -> list[dict]:
    """bf16 vs f32 per case; `cases` are (id, ids, pixel_values)."""
    model_bf16 = copy.deepcopy(model_f32).to(torch.bfloat16)
    rows = []
    for case_id, ids, pv in cases:
        l32, l16 = last_logits(model_f32, ids, pv, torch.float32), last_logits(model_bf16, ids, pv, torch.bfloat16)
        full, half = answer_scores(l32, yes, no), answer_scores(l16, yes, no)
        if expected is not None:
            e = expected[case_id]
            err = max(abs(full["logit_yes"] - e["logit_yes"]), abs(full["logit_no"] - e["logit_no"]))
            assert err <= F32_TOL, f"{case_id}: f32 does not reproduce the fixture ({err})"
        d_logit = max(abs(full["logit_yes"] - half["logit_yes"]), abs(full["logit_no"] - half["logit_no"]))
        rows.append(
            {
                "id": case_id,
                "f32": full,
                "bf16": half,
                "d_logit": d_logit,
                "d_p_yes": abs(full["p_yes"] - half["p_yes"]),
                "d_vocab_rms": float((l16.double() - l32.double()).pow(2).mean().sqrt()),
            }
        )
        r = rows[-1]
        print(f"  {case_id:<26} d_logit {d_logit:.3e}  d_p_yes {r['d_p_yes']:.3e}  d_vocab_rms {r['d_vocab_rms']:.3e}")
    return rows


def fixture_cases(name: str):
    ref = json.loads((REF_DIR / f"{name}.json").read_text())
    pvs = load_file(REF_DIR / f"{name}.pixel_values.safetensors")
    cases = [(it["id"], it["expected"]["input_ids"], pvs[it["expected"]["pixel_values_key"]]) for it in ref["items"]]
    expected = {it["id"]: it["expected"] for it in ref["items"]}
    ans = ref["answer_token_ids"]
    return ref, cases, expected, ans["yes"], ans["no"]


def eager(model):
    model.set_attn_implementation("eager")
    return model.to(torch.float32).eval()


def hf_fixture():
    return eager(InternVLForConditionalGeneration.from_pretrained(FIX / "models/tiny-internvl-hf", dtype=torch.float32))


def ogv_fixture(ref: dict):
    d = FIX / "models/tiny-internvl-ogv"
    sd = {}
    for f in sorted(d.glob("model-*.safetensors")):
        sd.update(load_file(f))
    # eos/pad ids only matter for generation; the forward pass does not read them.
    cfg = fx_models.ogv_config(ref["vocab_size"], ref["image_context_token_id"], 0, 0)
    model = fx_models.build_model(cfg)
    vis = fx_models.OGV_VISION
    model.load_state_dict(fx_models.ogv_to_hf(sd, vis["num_hidden_layers"], vis["hidden_size"]), strict=True)
    return eager(model)


def internlm2_fixture(name: str, ref: dict):
    """OpenGVLab InternViT + InternLM2 checkpoint as HF InternVL (vision) + Llama (decoder)."""
    d = FIX / "models" / name
    c = json.loads((d / "config.json").read_text())
    v, t = c["vision_config"], c["llm_config"]
    rms = v["norm_type"] == "rms_norm"
    rope = {"rope_type": "default", "rope_theta": t["rope_theta"]}
    if t.get("rope_scaling"):
        rope = dict(rope, rope_type=t["rope_scaling"]["type"], factor=t["rope_scaling"]["factor"])
    cfg = InternVLConfig(
        vision_config=dict(
            hidden_size=v["hidden_size"], num_hidden_layers=v["num_hidden_layers"],
            num_attention_heads=v["num_attention_heads"], intermediate_size=v["intermediate_size"],
            image_size=v["image_size"], patch_size=v["patch_size"], attention_bias=v["qkv_bias"],
            norm_type=v["norm_type"], layer_norm_eps=v["layer_norm_eps"], use_qk_norm=v["qk_normalization"],
            hidden_act="gelu", use_mean_pooling=True,
        ),
        text_config=dict(
            model_type="llama", vocab_size=t["vocab_size"], hidden_size=t["hidden_size"],
            num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
            num_key_value_heads=t["num_key_value_heads"], intermediate_size=t["intermediate_size"],
            rms_norm_eps=t["rms_norm_eps"], max_position_embeddings=t["max_position_embeddings"],
            rope_parameters=rope, attention_bias=t["bias"], mlp_bias=False, tie_word_embeddings=False,
        ),
        downsample_ratio=c["downsample_ratio"],
        vision_feature_layer=c["select_layer"],
        vision_feature_select_strategy="default",
        image_token_id=ref["image_context_token_id"],
        image_seq_length=ref["tokens_per_tile"],
        tie_word_embeddings=False,
    )
    model = fx_models.build_model(cfg)
    sd = load_file(d / "model.safetensors")
    C = v["hidden_size"]
    if rms:
        # ogv_to_hf maps LayerNorm pairs; RMSNorm has no bias (dropped again below).
        for n in range(v["num_hidden_layers"]):
            for nm in ("norm1", "norm2"):
                sd.setdefault(f"vision_model.encoder.layers.{n}.{nm}.bias", torch.zeros(C))
    # ogv_to_hf reads the Qwen2-style head name; InternLM2's head is `output` (llama_decoder below).
    sd.setdefault("language_model.lm_head.weight", sd["language_model.output.weight"])
    hf = fx_models.ogv_to_hf(sd, v["num_hidden_layers"], C)
    for n in range(v["num_hidden_layers"]):
        for x in ("q", "k"):
            key = f"vision_model.encoder.layers.{n}.attn.{x}_norm.weight"
            if key in sd:
                hf[f"model.vision_tower.encoder.layer.{n}.attention.{x}_norm.weight"] = sd[key]
    hf = {k: val for k, val in hf.items() if not k.startswith("model.language_model.")}
    hf.update(llama_decoder(sd, t))
    want = set(model.state_dict())
    hf = {k: val for k, val in hf.items() if k in want}
    model.load_state_dict(hf, strict=True)
    return eager(model)


def llama_decoder(sd: dict, t: dict) -> dict:
    """InternLM2 decoder tensors under HF Llama names: wqkv rows are (kv, group + 2, d) per KV group."""
    H, nh, nkv = t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"]
    d, g = H // nh, nh // nkv
    src, dst = "language_model.model.", "model.language_model."
    out = {
        dst + "embed_tokens.weight": sd[src + "tok_embeddings.weight"],
        dst + "norm.weight": sd[src + "norm.weight"],
        "lm_head.weight": sd["language_model.output.weight"],
    }
    for n in range(t["num_hidden_layers"]):
        p, q = f"{src}layers.{n}.", f"{dst}layers.{n}."
        for kind in ("weight", "bias") if t["bias"] else ("weight",):
            w = sd[p + f"attention.wqkv.{kind}"]
            w = w.view(nkv, g + 2, d, -1) if kind == "weight" else w.view(nkv, g + 2, d)
            rest = w.shape[3:]
            out[q + f"self_attn.q_proj.{kind}"] = w[:, :g].reshape(nh * d, *rest)
            out[q + f"self_attn.k_proj.{kind}"] = w[:, g].reshape(nkv * d, *rest)
            out[q + f"self_attn.v_proj.{kind}"] = w[:, g + 1].reshape(nkv * d, *rest)
            out[q + f"self_attn.o_proj.{kind}"] = sd[p + f"attention.wo.{kind}"]
        for a, b in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            out[q + f"mlp.{b}.weight"] = sd[p + f"feed_forward.{a}.weight"]
        out[q + "input_layernorm.weight"] = sd[p + "attention_norm.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "ffn_norm.weight"]
    return out


# ------------------------------------------------------------------------------------------------
# Real-width model
# ------------------------------------------------------------------------------------------------

REAL_SEED = 1234
REAL_TILE = 448
REAL_TOKENS_PER_TILE = 256
# Fixture items of square images (one tile whatever the tiling rule, and the saved processor
# config allows one tile): their ids with 256 image tokens per tile.
REAL_ITEMS = ["point_alpha", "point_gray", "point_palette", "point_custom_instruction"]


def real_config(vocab: int, image_token_id: int, eos_id: int, pad_id: int) -> InternVLConfig:
    return InternVLConfig(
        vision_config=dict(
            hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096,
            image_size=REAL_TILE, patch_size=14, attention_bias=True, norm_type="layer_norm",
            layer_norm_eps=1e-6, use_qk_norm=False, hidden_act="gelu", use_mean_pooling=True,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=vocab, hidden_size=896, num_hidden_layers=4,
            num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            max_position_embeddings=32768, tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=pad_id,
        ),
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_token_id=image_token_id,
        image_seq_length=REAL_TOKENS_PER_TILE,
        tie_word_embeddings=True,
    )


def real_width(out_dir: Path):
    ref, _, _, yes, no = fixture_cases("tiny-internvl-hf")
    src = FIX / "models/tiny-internvl-hf"
    text = json.loads((src / "config.json").read_text())["text_config"]
    ctx = ref["image_context_token_id"]
    model = fx_models.build_model(real_config(151674, ctx, text["eos_token_id"], text["pad_token_id"]))
    # final_norm_scale keeps the tied head's logits O(10) at width 896 with unit-variance embeddings.
    fx_models.reinit(model, seed=REAL_SEED, final_norm_scale=0.25)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / f, out_dir / f)
    pre = json.loads((src / "preprocessor_config.json").read_text())
    pre.update(size={"height": REAL_TILE, "width": REAL_TILE}, crop_to_patches=False, max_patches=1)
    write_json(out_dir / "preprocessor_config.json", pre)
    cases, pixel_values, case_ids = [], {}, {}
    by_id = {it["id"]: it for it in ref["items"]}
    for case_id in REAL_ITEMS:
        it = by_id[case_id]
        assert sum(i["num_tiles"] for i in it["expected"]["images"]) == 1, case_id
        ids = []
        for t in it["expected"]["input_ids"]:
            if t != ctx:
                ids.append(t)
            elif not ids or ids[-1] != ctx:
                ids.extend([ctx] * REAL_TOKENS_PER_TILE)
        image = it["candidate"]["image"]
        pv, info = preprocess_image(FIX.parent / image, REAL_TILE, 1, 1, False)
        assert info["num_tiles"] == 1
        cases.append((case_id, ids, pv))
        pixel_values[case_id] = pv.contiguous()
        case_ids[case_id] = ids
    save_file(pixel_values, out_dir / "bf16_cases.pixel_values.safetensors", metadata={"format": "pt"})
    write_json(out_dir / "bf16_cases.json", {"input_ids": case_ids})
    print("real-width (InternViT-300M 1024 x 2 layers + Qwen2.5-0.5B 896 x 4 layers, vocab 151674)")
    rows = compare(eager(model), cases, yes, no)
    for row in rows:
        row["input_ids"] = case_ids[row["id"]]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-dir", type=Path, help="also build and measure the real-width model there")
    args = ap.parse_args()
    out = {
        "about": "PyTorch bf16 vs f32 on the same weights and inputs (tools/precision/torch_bf16.py); "
        "d_logit = max |delta| of the yes/no logits, d_p_yes = |delta p_yes|, "
        "d_vocab_rms = RMS of delta logit over the vocabulary",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "fixtures": {},
    }
    for name in ("tiny-internvl-hf", "tiny-internvl-ogv", "tiny-internvl-internlm2", "tiny-internvl-vit6b"):
        ref, cases, expected, yes, no = fixture_cases(name)
        print(name)
        if name == "tiny-internvl-hf":
            model = hf_fixture()
        elif name == "tiny-internvl-ogv":
            model = ogv_fixture(ref)
        else:
            model = internlm2_fixture(name, ref)
        out["fixtures"][name] = compare(model, cases, yes, no, expected)
    if args.real_dir:
        out["real_width"] = {
            "shape": "InternViT-300M (1024, 16 heads, MLP 4096, 448 px / 14) x 2 layers + "
            "Qwen2.5-0.5B (896, 14/2 heads, MLP 4864, vocab 151674, tied) x 4 layers",
            "seed": REAL_SEED,
            "cases": real_width(args.real_dir),
        }
    write_json(OUT, out)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
