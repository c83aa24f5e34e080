#!/usr/bin/env python3
"""ReFL-style training steps through a remote rewarddance reward (needs torch).

    python examples/refl_step.py --server localhost:50051 --steps 3

ReFL (Xu et al., "ImageReward", 2023) backpropagates a reward model through the generator:
decode the predicted clean latent x0 to pixels, score them, and descend on minus the reward:

    images = vae.decode(x0)                                # (B, 3, H, W) in [-1, 1]
    loss = -remote_reward(images, prompts, client).mean()  # one ScoreGrad call
    loss.backward()                                        # d loss / d images from the server
    optimizer.step()

Here a seeded linear layer with tanh stands in for the VAE decoder and its parameters are what
is trained; the latents stay fixed, so the printed mean reward should rise step by step. The
server computes each reward and its gradient w.r.t. the pixels in one call; autograd carries
that gradient into the decoder's parameters.
"""
from __future__ import annotations

import argparse

import torch

from rewarddance import RewardClient
from rewarddance.torch import remote_reward

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk"]


class TinyDecoder(torch.nn.Module):
    """Stand-in for a VAE decoder: latent (B, latent_dim) -> image (B, 3, size, size) in [-1, 1]."""

    def __init__(self, latent_dim: int, size: int):
        super().__init__()
        self.size = size
        self.proj = torch.nn.Linear(latent_dim, 3 * size * size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(z)).reshape(-1, 3, self.size, self.size)


def refl_step(decoder: torch.nn.Module, opt: torch.optim.Optimizer, x0: torch.Tensor, prompts, client,
              objective: str = "p_yes") -> torch.Tensor:
    """One step: decode, reward, backward, update. Returns the rewards (before the update)."""
    images = decoder(x0)
    rewards = remote_reward(images, prompts, client, objective)  # value_range "-1,1", CHW: the defaults
    loss = -rewards.mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return rewards.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="localhost:50051", help="host:port of a rewarddance server")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--objective", default="p_yes", choices=["p_yes", "log_p_yes", "logit_margin"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    decoder = TinyDecoder(args.latent_dim, args.size)
    opt = torch.optim.Adam(decoder.parameters(), lr=args.lr)
    x0 = torch.randn(len(PROMPTS), args.latent_dim)
    with RewardClient(args.server, timeout=300) as client:
        means = []
        for step in range(1, args.steps + 1):
            rewards = refl_step(decoder, opt, x0, PROMPTS, client, args.objective)
            means.append(float(rewards.mean()))
            print(f"step {step}: {args.objective} per image {[round(float(r), 6) for r in rewards]}, "
                  f"mean {means[-1]:.6f}")
        with torch.no_grad():
            final = float(remote_reward(decoder(x0), PROMPTS, client, args.objective).mean())
    print(f"mean {args.objective}: {means[0]:.6f} before, {final:.6f} after {args.steps} steps")


if __name__ == "__main__":
    main()
