#!/usr/bin/env python3
"""GRPO-style rewards from a rewarddance server, with failed items masked.

    python examples/grpo_rewards.py --target localhost:50051 --steps 3

Each step a policy would sample G images per prompt (here: random stand-ins, float HWC in [0, 1],
plus one deliberately corrupt item so the masking shows). The server scores every image with
p_yes = P("yes" | image, prompt, instruction) and the trainer turns the scores of each group into
advantages.

The math (per group g of G samples, for prompt g):
    r_i  = p_yes of sample i (NaN when the item failed: never invent a 0 for a failure)
    m_i  = 1 if sample i was scored, else 0                       (ok_mask)
    n_g  = sum_i m_i                                              (valid samples in the group)
    mu_g = sum_i m_i r_i / n_g                                    (mean over valid samples only)
    sd_g = sqrt(sum_i m_i (r_i - mu_g)^2 / n_g)                   (population std, as Flow-GRPO/DanceGRPO)
    A_i  = m_i (r_i - mu_g) / (sd_g + eps)
A group with fewer than 2 valid samples carries no relative signal: all its A_i are 0. A failed
sample gets A_i = 0 *and* a loss mask of 0, so it contributes neither to the policy-gradient
term nor to the token/sample count the loss is averaged over:
    loss = -sum_i loss_mask_i * A_i * ratio_i / max(1, sum_i loss_mask_i)
"""
from __future__ import annotations

import argparse

import numpy as np

from rewarddance import RewardClient


def group_advantages(scores: np.ndarray, ok: np.ndarray, group_size: int, eps: float = 1e-4):
    """Group-normalised advantages and the loss mask, both shaped like `scores` (flat, groups
    contiguous: items [g*G, (g+1)*G) belong to group g)."""
    r = np.asarray(scores, dtype=np.float64).reshape(-1, group_size)
    m = np.asarray(ok, dtype=bool).reshape(-1, group_size)
    n = m.sum(axis=1, keepdims=True)
    r0 = np.where(m, r, 0.0)  # failed items contribute nothing (NaN * 0 would still be NaN)
    mu = r0.sum(axis=1, keepdims=True) / np.maximum(n, 1)
    sd = np.sqrt((np.where(m, r - mu, 0.0) ** 2).sum(axis=1, keepdims=True) / np.maximum(n, 1))
    adv = np.where(m & (n >= 2), (r0 - mu) / (sd + eps), 0.0)
    loss_mask = m & (n >= 2)
    return adv.reshape(-1), loss_mask.reshape(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="localhost:50051", help="address(es), comma-separated, or dns:///svc:50051")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--groups", type=int, default=2, help="prompts per step")
    ap.add_argument("--group-size", type=int, default=4, help="samples per prompt (G)")
    args = ap.parse_args()

    prompts = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a cat wearing a hat"]
    rng = np.random.default_rng(0)
    G = args.group_size
    with RewardClient(args.target, timeout=120) as client:  # one per process; thread-safe
        for step in range(args.steps):
            step_prompts = [prompts[(step * args.groups + g) % len(prompts)] for g in range(args.groups)]
            # What the policy would produce: G samples per prompt (float HWC in [0, 1] here; torch
            # CHW tensors in [-1, 1] or [0, 1] work the same).
            images = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(args.groups * G)]
            images[1] = b"not an image"  # one failed item, to show the masking
            item_prompts = [p for p in step_prompts for _ in range(G)]

            scores, ok, errors = client.score(item_prompts, images)
            adv, loss_mask = group_advantages(scores, ok, G)

            print(f"step {step}: scored {int(ok.sum())}/{len(ok)}")
            for i, e in enumerate(errors):
                if e is not None:
                    print(f"  item {i} masked: {e}")
            for g in range(args.groups):
                sl = slice(g * G, (g + 1) * G)
                print(f"  group {g} {step_prompts[g]!r}: p_yes {np.round(scores[sl], 4).tolist()}")
                print(f"    advantages {np.round(adv[sl], 3).tolist()} loss_mask {loss_mask[sl].astype(int).tolist()}")


if __name__ == "__main__":
    main()
