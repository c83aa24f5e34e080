"""The fake server's ScoreGrad: a known analytic reward with its exact gradient.

For a candidate whose values, mapped to [0, 1] and arranged CHW, are u (float64):
    z = sum(w * u) + BIAS  (+ 0.5 - mean(reference) / 255 for a pairwise item: a constant)
    p_yes = sigmoid(z); objectives: p_yes, log p_yes, z (the logit margin)
    d p_yes / du = p (1 - p) w,  d log p_yes / du = (1 - p) w,  d z / du = w
and d/dx = d/du / 2 for values x in [-1, 1] (u = (x + 1) / 2). `w` depends on the channel and
the position, so a transposed or shifted packing gives a different reward and gradient.

Named rewards: an item naming reward k of the server's list gets the logit z + k * REWARD_OFFSET
(`analytic`'s `offset`: its gradient is that of p_yes at the shifted logit); more than one name is
refused (INVALID_ARGUMENT), an unknown name too ("unknown_reward").

`expected()` computes the same from the caller's own array (tests compare it with what came
back over the wire); `score_grad_response()` answers a ScoreGradRequest from the wire.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import grpc
import numpy as np

from rewarddance.v1 import reward_pb2 as pb

BIAS = -0.25
REWARD_OFFSET = 0.5
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def weights(h: int, w: int) -> np.ndarray:
    """(3, h, w) float64 weights: a sum over every pixel stays within about +-3."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(h), np.arange(w), indexing="ij")
    return 3.0 * np.cos(0.5 + 1.7 * c + 0.9 * y + 0.37 * x) / (h * w)


def analytic(u: np.ndarray, objective: int, offset: float = 0.0) -> Tuple[float, float, np.ndarray]:
    """(p_yes, objective value, d objective / du) for one CHW image u in [0, 1] units."""
    wt = weights(u.shape[1], u.shape[2])
    z = float((wt * u).sum()) + BIAS + offset
    p = 1.0 / (1.0 + np.exp(-z))
    if objective == pb.OBJECTIVE_LOG_P_YES:
        return p, float(np.log(p)), (1.0 - p) * wt
    if objective == pb.OBJECTIVE_LOGIT_MARGIN:
        return p, z, wt
    return p, p, p * (1.0 - p) * wt


def expected(batch: np.ndarray, layout: str, value_range: str, objective: int = pb.OBJECTIVE_P_YES,
             reward: int = 0):
    """(p_yes (B,), objective (B,), gradient like `batch`) from the caller's own batch, under
    reward number `reward` of the fake's list."""
    x = np.asarray(batch, np.float64)
    chw = x if layout == "chw" else x.transpose(0, 3, 1, 2)
    signed = value_range == "-1,1"
    ps, objs, grads = [], [], []
    for img in chw:
        p, o, g = analytic((img + 1.0) / 2.0 if signed else img, objective, reward * REWARD_OFFSET)
        ps.append(p)
        objs.append(o)
        grads.append(g / 2.0 if signed else g)
    g = np.stack(grads)
    return np.array(ps), np.array(objs), (g if layout == "chw" else g.transpose(0, 2, 3, 1))


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def decode_float(f: pb.FloatImage) -> np.ndarray:
    """The values sent, as a CHW float64 array; ValueError for what the contract refuses."""
    if f.width == 0 or f.height == 0:
        raise ValueError("zero width or height")
    if f.layout not in (pb.PIXEL_LAYOUT_CHW, pb.PIXEL_LAYOUT_HWC):
        raise ValueError("layout not set")
    n = f.width * f.height * 3
    if f.dtype == pb.PIXEL_DTYPE_BF16:
        if len(f.data) != 2 * n:
            raise ValueError("data length mismatch")
        v = bf16_values(np.frombuffer(f.data, "<u2"))
    elif f.dtype in (pb.PIXEL_DTYPE_F32, pb.PIXEL_DTYPE_UNSPECIFIED):
        if len(f.data) != 4 * n:
            raise ValueError("data length mismatch")
        v = np.frombuffer(f.data, "<f4")
    else:
        raise ValueError("unknown dtype")
    v = v.astype(np.float64)
    if not np.isfinite(v).all():
        raise ValueError("non-finite values")
    if f.layout == pb.PIXEL_LAYOUT_CHW:
        return v.reshape(3, f.height, f.width)
    return v.reshape(f.height, f.width, 3).transpose(2, 0, 1)


def encode_float(g_chw: np.ndarray, like: pb.FloatImage, dtype: int) -> pb.FloatImage:
    g = g_chw if like.layout == pb.PIXEL_LAYOUT_CHW else g_chw.transpose(1, 2, 0)
    g = np.ascontiguousarray(g, np.float32)
    data = bf16_bits(g).astype("<u2").tobytes() if dtype == pb.PIXEL_DTYPE_BF16 else g.astype("<f4").tobytes()
    return pb.FloatImage(width=like.width, height=like.height, layout=like.layout, dtype=dtype, range=like.range,
                         data=data)


def score_grad_response(request: pb.ScoreGradRequest, decode: Callable[[pb.Image], np.ndarray],
                        rewards: Optional[Sequence[str]] = ("default",)) -> pb.ScoreGradResponse:
    """The fake's answer; `decode` turns a reference `Image` into HWC uint8 pixels; `rewards`:
    the server's reward names (None: a server that predates them, ignoring the names)."""
    out = pb.ScoreGradResponse(model_id="fake")
    objective = request.objective or pb.OBJECTIVE_P_YES
    for i, item in enumerate(request.items):
        r = out.results.add(id=item.id, index=i)
        try:
            if not item.prompt:
                raise ValueError("empty prompt")
            if item.HasField("rationale"):
                raise ValueError("ScoreGrad does not decode rationales")
            if item.WhichOneof("candidate") != "image" or item.image.WhichOneof("source") != "float":
                raise ValueError("the candidate must be a float image")
            f = item.image.float
            x = decode_float(f)
            signed = f.range == pb.PIXEL_RANGE_SIGNED
            offset = 0.0
            if rewards is not None and item.rewards:
                if len(item.rewards) > 1:
                    raise ValueError(f"ScoreGrad takes one reward per item, {len(item.rewards)} named")
                if item.rewards[0] not in rewards:
                    r.error.reason = "unknown_reward"
                    raise ValueError(f"unknown reward {item.rewards[0]!r}")
                offset += list(rewards).index(item.rewards[0]) * REWARD_OFFSET
            if item.HasField("reference"):
                offset = 0.5 - float(decode(item.reference).astype(np.float64).mean()) / 255.0
            p, obj, g = analytic((x + 1.0) / 2.0 if signed else x, objective, offset)
            if signed:
                g = g / 2.0
            dtype = pb.PIXEL_DTYPE_F32 if request.f32_gradients else (f.dtype or pb.PIXEL_DTYPE_F32)
            r.score.p_yes = p
            r.score.logit_yes = np.log(p)
            r.score.logit_no = np.log1p(-p)
            r.objective = obj
            r.gradients.append(encode_float(g, f, dtype))
        except Exception as e:  # noqa: BLE001 - every bad item is its own error
            r.ClearField("gradients")
            r.error.code = INVALID
            r.error.reason = r.error.reason or "invalid_input"
            r.error.message = str(e)
    return out
