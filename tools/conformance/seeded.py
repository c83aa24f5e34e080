"""Seeded weights, the numpy twin of crates/model/src/runtime/seeded.rs (same spec, bit for bit in f32).

Every tensor is a pure function of its name and shape:
  key = fnv1a64(name); element i (row-major): z = splitmix64_mix(key + (i + 1) * GOLDEN),
  v = (z >> 40) * 2**-23 - 1 in [-1, 1); value = offset + scale * v (f32 multiply, f32 add).
(offset, scale) by kind: bias (0, 0.02); layer scales ls1/ls2/lambda_* (0.1, 0.05);
embeddings (0, 1); norms (name contains "norm", or mlp1.0.*) (1, 0.1);
rank >= 2 (0, sqrt(3 / fan_in)), fan_in = prod(shape[1:]); anything else (0, 0.02).
"""

from __future__ import annotations

import math

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 1 << 24


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def seeded_params(name: str, dims) -> tuple[np.float32, np.float32]:
    leaf = name.rsplit(".", 1)[-1]
    embedding = leaf in ("class_embedding", "position_embedding", "cls_token", "position_embeddings") or (
        name.endswith("embed_tokens.weight") or name.endswith("tok_embeddings.weight")
    )
    if leaf == "bias":
        p = (0.0, 0.02)
    elif leaf in ("ls1", "ls2", "lambda_1", "lambda_2"):
        p = (0.1, 0.05)
    elif embedding:
        p = (0.0, 1.0)
    elif "norm" in name or name.startswith("mlp1.0."):
        p = (1.0, 0.1)
    elif len(dims) >= 2:
        p = (0.0, math.sqrt(3.0 / max(1, math.prod(dims[1:]))))
    else:
        p = (0.0, 0.02)
    return np.float32(p[0]), np.float32(p[1])


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_values(name: str, dims) -> np.ndarray:
    """float32 array of shape `dims`."""
    dims = tuple(int(d) for d in dims)
    key = np.uint64(fnv1a64(name.encode()))
    offset, scale = seeded_params(name, dims)
    n = math.prod(dims)
    out = np.empty(n, dtype=np.float32)
    unit = np.float32(1.0 / (1 << 23))
    with np.errstate(over="ignore"):
        for start in range(0, n, _CHUNK):
            i = np.arange(start + 1, min(n, start + _CHUNK) + 1, dtype=np.uint64)
            z = _mix(key + i * GOLDEN)
            v = (z >> np.uint64(40)).astype(np.float32) * unit - np.float32(1.0)
            out[start : start + len(i)] = offset + scale * v
    return out.reshape(dims)


def fill_module(module, rename=lambda n: n) -> dict[str, list[int]]:
    """Overwrites every floating-point tensor of a torch module's state dict with seeded values
    (name = rename(state_dict key)); returns {name: shape}, the tensors a checkpoint of this
    module holds (the Rust side serves exactly these)."""
    import torch

    inventory = {}
    with torch.no_grad():
        for key, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            name = rename(key)
            t.copy_(torch.from_numpy(seeded_values(name, tuple(t.shape))).to(t.dtype))
            inventory[name] = list(t.shape)
    return dict(sorted(inventory.items()))


if __name__ == "__main__":
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    for name, dims in [("mlp1.1.weight", (2, 3)), ("language_model.model.norm.weight", (4,)),
                       ("vision_model.encoder.layers.0.attn.qkv.bias", (3,))]:
        print(name, [hex(x) for x in seeded_values(name, dims).reshape(-1).view(np.uint32)])
