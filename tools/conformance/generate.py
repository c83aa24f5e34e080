"""Reference generator of the real-config conformance suite (crates/model/tests/real_checkpoints.rs).

For every vendored checkpoint under fixtures/real/checkpoints/<Name>/ (the published small files,
untouched) it builds the model at the checkpoint's real widths, vocabulary, rope, tiling and
template, with fewer layers (LAYERS below, applied to a temporary copy of config.json) and the
seeded weights of tools/conformance/seeded.py, then scores each case and writes
fixtures/real/reference/<Name>.json (prompts, ids, grids, logits, p_yes; no weights, no pixels).

The references come from the upstream code, not from ours:
- OpenGVLab layout: OpenGVLab's own modeling_internvl_chat.py / modeling_intern_vit.py /
  modeling_internlm2.py / tokenization_internlm2.py / conversation.py, extracted at run time from
  the mirror of github.com/OpenGVLab/InternVL (pinned commit OGV_COMMIT) and imported as
  trust_remote_code would. The prompt is built exactly as InternVLChatModel.chat() builds it
  (get_conv_template(config.template), its system_message, `<image>` ->
  `<img>` + `<IMG_CONTEXT>` * num_image_token * tiles + `</img>`, tokenizer(query)); tiles come
  from OpenGVLab's dynamic_preprocess / build_transform (internvl/train/dataset.py), images with
  max_num = config.max_dynamic_patch and a thumbnail, video frames with max_num = 1 (OpenGVLab's
  README load_image / load_video). Stubbed: `peft` (LoRA only; unused), flash_attn (absent).
- HF layout (`-hf`): meant to be transformers' InternVLForConditionalGeneration + AutoProcessor +
  apply_chat_template, as a user would call them; not written yet, as no `-hf` checkpoint is
  vendored (see run_hf).
p_yes = softmax(logit_yes, logit_no) at the last position, float64, model in float32 eager.

Run (torch 2.11, transformers 5.17; the mirror of OpenGVLab/InternVL at OGV_MIRROR, the InternLM2
tokenizer.model under $REWARDDANCE_REAL_FILES/tokenizers/internlm2/ or ../shared/real/):
    python tools/conformance/generate.py [Name ...]
InternVL2-2B takes ~2-4 min and ~4.5 GB RSS on 2 CPU cores; a second run writes identical files.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "fixtures"))
import fx_common  # noqa: E402  (RewardDance's user message, shared with the fixture generator)
import seeded  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "fixtures" / "real"
OGV_MIRROR = Path(os.environ.get("OGV_MIRROR", "/work/.mirror/OpenGVLab+InternVL/repo"))
OGV_COMMIT = "2410d1dbf208f0e799459aff9376e5747dbf41a2"

# Layers kept per checkpoint (vision, language): real widths, cut depth.
LAYERS = {"small": (1, 2), "big": (1, 1)}

# Tokenizer files per LLM family, relative to a real/ folder (fixtures/real/README.md): the
# repository's fixtures/real, else $REWARDDANCE_REAL_FILES, else shared/real beside the checkout
# (the InternLM2 tokenizer.model, which the repository cannot hold). `.gz` files are unpacked.
TOKENIZERS = {
    "internlm2": ["tokenizers/internlm2/tokenizer.model"],
    "qwen2": ["tokenizers/qwen2/vocab.json.gz", "tokenizers/qwen2/merges.txt.gz"],
}


def real_file(rel: str) -> Path | None:
    roots = [REAL, Path(os.environ["REWARDDANCE_REAL_FILES"]) if "REWARDDANCE_REAL_FILES" in os.environ else None,
             ROOT.parent / "shared" / "real"]
    return next((r / rel for r in roots if r is not None and (r / rel).is_file()), None)

# name -> (layout, tokenizer family, size class, case ids or None for all)
CHECKPOINTS = {
    "InternVL2-2B": ("ogv", "internlm2", "small", None),
    "InternVL2_5-1B": ("ogv", "qwen2", "small", None),
    "InternVL2_5-2B": ("ogv", "internlm2", "small", None),
    "InternVL2_5-8B": ("ogv", "internlm2", "big", ["pointwise_448"]),
    "InternVL2_5-26B": ("ogv", "internlm2", "big", ["pointwise_448"]),
    "InternVL3-1B-hf": ("hf", "qwen2", "small", None),
    "InternVL3-2B-hf": ("hf", "qwen2", "small", None),
}

IMAGES = {  # file -> (width, height, seed)
    "square_448.png": (448, 448, 1),
    "wide_1280x720.png": (1280, 720, 2),
    "tall_400x1100.png": (400, 1100, 3),
    "ref_600x400.png": (600, 400, 4),
    "frame1_320x240.png": (320, 240, 5),
    "frame2_320x240.png": (320, 240, 6),
    "frame3_320x240.png": (320, 240, 7),
}

CASES = [
    dict(id="pointwise_448", mode="pointwise", image="square_448.png", prompt="a red fox in the snow"),
    dict(id="wide_1280x720", mode="pointwise", image="wide_1280x720.png", prompt="a mountain lake at dawn"),
    dict(id="tall_400x1100", mode="pointwise", image="tall_400x1100.png", prompt="a lighthouse, 日落时分"),
    dict(id="pairwise", mode="pairwise", image="square_448.png", reference="ref_600x400.png",
         prompt="two cats on a sofa"),
    dict(id="video_3f", mode="pointwise", video=["frame1_320x240.png", "frame2_320x240.png", "frame3_320x240.png"],
         prompt="a ball rolling across the table"),
    dict(id="custom_instruction", mode="pointwise", image="square_448.png", prompt="a bowl of ramen",
         instruction="Is this a photo of {prompt}? Answer yes or no."),
]


def make_images() -> None:
    """Smooth deterministic test images (small PNGs)."""
    out = REAL / "images"
    out.mkdir(parents=True, exist_ok=True)
    for name, (w, h, seed) in IMAGES.items():
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin((x + y) / 37.0 + seed)], -1) * 255
        img = Image.fromarray(base.astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(6):
            cx, cy, r = rng.integers(0, w), rng.integers(0, h), int(rng.integers(10, max(12, min(w, h) // 3)))
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(out / name, optimize=True)


def case_images(case: dict) -> list[tuple[str, bool]]:
    """(file, is_video_frame) in prompt order: pairwise reference first."""
    if "video" in case:
        return [(f, True) for f in case["video"]]
    imgs = [(case["reference"], False)] if case["mode"] == "pairwise" else []
    return imgs + [(case["image"], False)]


def rle(ids: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][0] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return out


def cut_config(src: Path, dst: Path, vision_layers: int, llm_layers: int) -> dict:
    cfg = json.loads((src / "config.json").read_text())
    text_key = "llm_config" if "llm_config" in cfg else "text_config"
    cfg["vision_config"]["num_hidden_layers"] = vision_layers
    cfg[text_key]["num_hidden_layers"] = llm_layers
    if "layer_types" in cfg[text_key]:
        cfg[text_key]["layer_types"] = cfg[text_key]["layer_types"][:llm_layers]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return cfg


def stage(name: str, family: str, vision_layers: int, llm_layers: int) -> Path:
    """A temporary checkpoint directory: the vendored small files, the tokenizer files, and the
    config with layers cut."""
    src = REAL / "checkpoints" / name
    dst = Path(tempfile.mkdtemp(prefix=f"conf-{name}-"))
    for f in src.iterdir():
        if f.name != "config.json":
            (dst / f.name).write_bytes(f.read_bytes())
    for rel in TOKENIZERS[family]:
        p = real_file(rel)
        data = p.read_bytes()
        if p.suffix == ".gz":
            data, p = gzip.decompress(data), p.with_suffix("")
        (dst / p.name).write_bytes(data)
    cut_config(src, dst, vision_layers, llm_layers)
    return dst


# ---------------------------------------------------------------- OpenGVLab layout


def ogv_modules():
    """OpenGVLab's internvl package at OGV_COMMIT, extracted to a temp dir and imported."""
    out = Path(tempfile.mkdtemp(prefix="ogv-"))
    tar = subprocess.run(["git", "-C", str(OGV_MIRROR), "archive", OGV_COMMIT, "internvl_chat/internvl"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
    sys.path.insert(0, str(out / "internvl_chat"))
    peft = types.ModuleType("peft")  # LoRA wrappers only; never called (use_*_lora = 0)
    peft.LoraConfig = peft.get_peft_model = None
    sys.modules.setdefault("peft", peft)
    from internvl.conversation import get_conv_template
    from internvl.model.internlm2.tokenization_internlm2 import InternLM2Tokenizer
    from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
    from internvl.model.internvl_chat.modeling_internvl_chat import InternVLChatModel

    # dynamic_preprocess / find_closest_aspect_ratio / build_transform from internvl/train/dataset.py,
    # taken by name (the module itself imports decord / cv2 / imageio, irrelevant here).
    src_path = out / "internvl_chat/internvl/train/dataset.py"
    tree = ast.parse(src_path.read_text())
    wanted = {"find_closest_aspect_ratio", "dynamic_preprocess", "build_transform"}
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    import torchvision.transforms as T
    from internvl.train import constants
    from torchvision.transforms.functional import InterpolationMode

    ns = dict(T=T, InterpolationMode=InterpolationMode, Image=Image, **{k: getattr(constants, k) for k in dir(constants) if k.isupper()})
    exec(compile(ast.Module(body=body, type_ignores=[]), str(src_path), "exec"), ns)
    return types.SimpleNamespace(get_conv_template=get_conv_template, InternLM2Tokenizer=InternLM2Tokenizer,
                                 InternVLChatConfig=InternVLChatConfig, InternVLChatModel=InternVLChatModel, ns=ns)


def ogv_tiles(ogv, path: Path, image_size: int, max_num: int, use_thumbnail: bool):
    """Tiles of one image as OpenGVLab's README load_image does, plus the grid chosen."""
    ns = ogv.ns
    chosen = []
    inner = ns["find_closest_aspect_ratio"]

    def recording(*a, **k):
        r = inner(*a, **k)
        chosen.append(r)
        return r

    ns["find_closest_aspect_ratio"] = recording
    try:
        image = Image.open(path).convert("RGB")
        tiles = ns["dynamic_preprocess"](image, image_size=image_size, use_thumbnail=use_thumbnail, max_num=max_num)
    finally:
        ns["find_closest_aspect_ratio"] = inner
    transform = ns["build_transform"](is_train=False, input_size=image_size)
    pixels = torch.stack([transform(t) for t in tiles])
    cols, rows = chosen[0]
    thumb = use_thumbnail and len(tiles) != 1
    return pixels, dict(size=list(image.size), grid=[cols, rows], thumbnail=thumb, num_tiles=len(tiles))


def run_ogv(name: str, family: str, ckpt: Path, case_ids) -> dict:
    ogv = ogv_modules()
    # transformers 5 builds a default-constructed config for its repr, which OpenGVLab's
    # InternVLChatConfig refuses without an llm_config: declare it has no defaults at init.
    ogv.InternVLChatConfig.has_no_defaults_at_init = True
    cfg = ogv.InternVLChatConfig.from_pretrained(str(ckpt))
    model = ogv.InternVLChatModel(cfg, use_flash_attn=False).float().eval()
    tensors = seeded.fill_module(model)
    if family == "internlm2":
        tok = ogv.InternLM2Tokenizer.from_pretrained(str(ckpt))
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ckpt), use_fast=False)
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    yes_ids = tok.encode("yes", add_special_tokens=False)
    no_ids = tok.encode("no", add_special_tokens=False)
    assert len(yes_ids) == 1 and len(no_ids) == 1, (yes_ids, no_ids)
    image_size = cfg.force_image_size or cfg.vision_config.image_size
    out_cases = []
    for case in CASES:
        if case_ids is not None and case["id"] not in case_ids:
            continue
        t0 = time.time()
        content = fx_common.user_content(case)[1]
        template = ogv.get_conv_template(model.template)  # as chat() does
        template.system_message = model.system_message
        template.append_message(template.roles[0], content)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        rendered = query
        pixels, images = [], []
        for f, frame in case_images(case):
            max_num = 1 if frame else cfg.max_dynamic_patch
            px, info = ogv_tiles(ogv, REAL / "images" / f, image_size, max_num, cfg.use_thumbnail)
            pixels.append(px)
            images.append(dict(path=f"fixtures/real/images/{f}", **info))
        for info in images:
            tokens = "<img>" + "<IMG_CONTEXT>" * model.num_image_token * info["num_tiles"] + "</img>"
            query = query.replace("<image>", tokens, 1)
        enc = tok(query, return_tensors="pt")
        pv = torch.cat(pixels)
        with torch.no_grad():
            logits = model(pixel_values=pv, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           image_flags=torch.ones(pv.shape[0], 1, dtype=torch.long)).logits[0, -1].double()
        out_cases.append(record(case, content, rendered, enc["input_ids"][0].tolist(), images,
                                logits, yes_ids[0], no_ids[0], time.time() - t0))
    meta = dict(template=model.template, system_message=model.system_message, num_image_token=model.num_image_token,
                tensors=tensors)
    return dict(yes_id=yes_ids[0], no_id=no_ids[0], reference_code=f"OpenGVLab/InternVL@{OGV_COMMIT}", **meta,
                cases=out_cases)


# ---------------------------------------------------------------- HF layout


def run_hf(name: str, family: str, ckpt: Path, case_ids) -> dict:
    """Not written yet: no `-hf` checkpoint's small files are vendored (fixtures/real/README.md), so
    nothing could check it. It is to score each case as a user of transformers would:
    InternVLForConditionalGeneration(config) filled by seeded.fill_module under the names the
    published safetensors use (`vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`,
    `language_model.lm_head`), AutoProcessor.from_pretrained(dir) with its default call kwargs,
    messages with one {"type": "image"} part per image in prompt order plus the instruction text,
    processor.apply_chat_template(..., add_generation_prompt=True), and record the processor's
    num_patches per image."""
    raise NotImplementedError(f"{name}: the HF-layout reference is not written yet (see run_hf)")


# ---------------------------------------------------------------- common


def record(case, content, rendered, ids, images, logits, yes_id, no_id, seconds) -> dict:
    ly, ln = float(logits[yes_id]), float(logits[no_id])
    m = max(ly, ln)
    p_yes = math.exp(ly - m) / (math.exp(ly - m) + math.exp(ln - m))
    item = {k: case[k] for k in ("id", "mode", "prompt", "instruction") if k in case}
    item["candidate"] = ({"video": [f"fixtures/real/images/{f}" for f in case["video"]]} if "video" in case
                         else {"image": f"fixtures/real/images/{case['image']}"})
    if "reference" in case:
        item["reference"] = f"fixtures/real/images/{case['reference']}"
    item["expected"] = dict(user_content=content, rendered_prompt=rendered, input_ids_rle=rle(ids),
                            num_tokens=len(ids), images=images, logit_yes=ly, logit_no=ln, p_yes=p_yes)
    print(f"  {case['id']:<20} tokens={len(ids):<6} tiles={[i['num_tiles'] for i in images]} "
          f"p_yes={p_yes:.6f} ({seconds:.1f}s)", flush=True)
    return item


def versions() -> dict:
    import PIL
    import tokenizers
    import transformers

    return dict(python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__,
                tokenizers=tokenizers.__version__, numpy=np.__version__, pillow=PIL.__version__)


def main(names: list[str]) -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    make_images()
    (REAL / "reference").mkdir(parents=True, exist_ok=True)
    for name in names or list(CHECKPOINTS):
        layout, family, size, case_ids = CHECKPOINTS[name]
        if not (REAL / "checkpoints" / name / "config.json").exists():
            print(f"{name}: not vendored, skipped")
            continue
        missing = [rel for rel in TOKENIZERS[family] if real_file(rel) is None]
        if missing:
            print(f"{name}: {missing} not found (fixtures/real/README.md), skipped")
            continue
        vl, ll = LAYERS[size]
        ckpt = stage(name, family, vl, ll)
        print(f"{name} ({layout}, {family}, vision layers {vl}, llm layers {ll})", flush=True)
        t0 = time.time()
        run = run_ogv if layout == "ogv" else run_hf
        result = run(name, family, ckpt, case_ids)
        doc = dict(checkpoint=name, layout=layout, tokenizer=family, vision_layers=vl, llm_layers=ll,
                   generator="tools/conformance/generate.py", versions=versions(), **result)
        (REAL / "reference" / f"{name}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(f"{name}: {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
