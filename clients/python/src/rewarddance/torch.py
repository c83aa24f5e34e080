"""PyTorch autograd through the remote reward: `remote_reward` (ReFL, DRaFT, AlignProp).

    from rewarddance import RewardClient
    from rewarddance.torch import remote_reward

    client = RewardClient("reward:50051")
    images = vae.decode(latents)                      # (B, 3, H, W) in [-1, 1], requires grad
    loss = -remote_reward(images, prompts, client).mean()
    loss.backward()                                   # d loss / d images from the server's gradients

The forward pass is one `client.score_grad` call (the server computes the reward and its
gradient w.r.t. the pixels together); the backward pass multiplies the stored gradient by
d loss / d reward, with no second call: each reward is a scalar, so this vector-Jacobian
product is exact. Importing this module does not need torch; calling `remote_reward` does.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional

from ._types import ItemErrorInfo, ScoreGradResult

try:
    import torch as _torch
except ImportError:  # pragma: no cover - exercised by the CI venv, which has no torch
    _torch = None

ON_ERROR = ("raise", "zero")


class RewardItemsFailed(RuntimeError):
    """Some items of a `remote_reward` call got no reward (`on_error="raise"`, the default).

    `result` is the call's `ScoreGradResult` (`ok_mask`, `errors`, and the rewards and gradients
    of the items that were scored); `errors` lists `(index, ItemErrorInfo)` of the failed ones.
    """

    def __init__(self, result: ScoreGradResult):
        self.result = result
        self.errors: List[tuple] = [(i, e) for i, e in enumerate(result.errors) if not result.ok_mask[i]]
        first_i, first = self.errors[0] if self.errors else (None, None)
        super().__init__(f"{len(self.errors)} of {len(result.ok_mask)} items got no reward; item {first_i}: {first} "
                         "(on_error='zero' trains on the others with zero reward and gradient for these)")


def _failed_message(errors: List[Optional[ItemErrorInfo]], ok: Any) -> str:
    bad = [i for i in range(len(ok)) if not ok[i]]
    return (f"rewarddance: {len(bad)} of {len(ok)} items got no reward (zero reward and zero gradient); "
            f"item {bad[0]}: {errors[bad[0]]}")


if _torch is not None:
    from torch.autograd.function import once_differentiable

    class _RemoteReward(_torch.autograd.Function):
        """forward: the objective per item from one ScoreGrad call; backward: grad_output * g."""

        @staticmethod
        def forward(ctx, images, prompts, client, objective, options, on_error, holder):
            result = client.score_grad(prompts, images, objective=objective, **options)
            ok = _torch.from_numpy(result.ok_mask.copy())
            if on_error == "raise" and not result.ok_mask.all():
                raise RewardItemsFailed(result)
            values = _torch.from_numpy(result.objectives.copy())
            values = _torch.where(ok, values, _torch.zeros_like(values))
            grads = result.gradients  # zeros for failed items, on the images' device
            ctx.save_for_backward(grads)
            ctx.images_dtype = images.dtype
            holder.append(result)
            return values.to(device=images.device, dtype=images.dtype)

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_output):
            (grads,) = ctx.saved_tensors
            scale = grad_output.to(device=grads.device, dtype=grads.dtype).reshape(-1, 1, 1, 1)
            return (scale * grads).to(ctx.images_dtype), None, None, None, None, None, None


def remote_reward(
    images: Any,
    prompts: Any,
    client: Any,
    objective: str = "p_yes",
    *,
    value_range: Any = None,
    references: Any = None,
    layout: Optional[str] = None,
    instructions: Any = None,
    mode: Any = None,
    f32_gradients: bool = False,
    timeout: Optional[float] = None,
    chunk_size: Optional[int] = None,
    on_error: str = "raise",
    return_result: bool = False,
    reward: Optional[str] = None,
):
    """The remote reward of each image as a differentiable (B,) tensor.

    Args:
        images: a float tensor, (B, 3, H, W) by default (`layout="hwc"` for (B, H, W, 3)), with
            values in [-1, 1] by default (`value_range="0,1"` for [0, 1]); usually requires grad.
            bf16 is sent as bf16, other dtypes as f32.
        prompts: one prompt for every image, or one per image.
        client: a `RewardClient` (synchronous: autograd calls forward synchronously).
        objective: "p_yes" (the reward in [0, 1]), "log_p_yes" or "logit_margin".
        references: reference images for pairwise rewards (constants, no gradient).
        value_range, layout, instructions, mode, f32_gradients, timeout, chunk_size: as in
            `RewardClient.score_grad`.
        reward: the server's named reward to train on (one name; None: its first), as in
            `RewardClient.score_grad`. For several rewards, call once per reward and combine
            the tensors (e.g. a weighted sum): each call's backward is its own reward's.
        on_error: what items that get no reward do. "raise" (default): the forward pass raises
            `RewardItemsFailed` (with the call's result), so that a training step never silently
            trains on part of its batch. "zero": their reward is 0 and their gradient 0 (they
            do not move the generator), with a `RuntimeWarning`; mask them out of logged means
            with `return_result=True` (0 is the top of the scale for "log_p_yes").
        return_result: also return the call's `ScoreGradResult` (`ok_mask`, `errors`, `scores`).

    Returns the objective per item on the images' device and in their dtype (with
    `return_result`, a pair `(rewards, result)`). Backward gives
    `grad_output[:, None, None, None] * gradient` for the images and nothing else.
    """
    if _torch is None:
        raise ImportError("rewarddance.torch.remote_reward needs PyTorch (pip install torch)")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'zero'")
    if not hasattr(client, "score_grad") or _is_async(client):
        raise TypeError("remote_reward needs a (synchronous) RewardClient")
    options = dict(value_range=value_range, references=references, layout=layout, instructions=instructions,
                   mode=mode, f32_gradients=f32_gradients, timeout=timeout, chunk_size=chunk_size, reward=reward)
    holder: List[ScoreGradResult] = []
    values = _RemoteReward.apply(images, prompts, client, objective, options, on_error, holder)
    result = holder[0]
    if not result.ok_mask.all():
        warnings.warn(_failed_message(result.errors, result.ok_mask), RuntimeWarning, stacklevel=2)
    return (values, result) if return_result else values


def _is_async(client: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(getattr(client, "score_grad", None))
