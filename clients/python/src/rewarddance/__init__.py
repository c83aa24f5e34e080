"""Python client for the rewarddance reward service.

    from rewarddance import RewardClient
    client = RewardClient(["reward-0:50051", "reward-1:50051"])
    scores, ok, errors = client.score("a red fox in the snow", images)

See `RewardClient`, `AsyncRewardClient` and `ScoreResult`; named rewards: `score(..., reward="name")`,
and `score(..., reward=[names])` for a `RewardScores` matrix; rationales: `score(..., rationale=True)`
and `stream_rationales()`; gradients of the reward w.r.t. the pixels (ReFL): `score_grad()` and,
for torch autograd, `rewarddance.torch.remote_reward` (import it explicitly: importing
`rewarddance` never imports torch). The generated protobuf messages are in
`rewarddance.v1.reward_pb2`.
"""
from ._retry import NO_RETRY, RetryPolicy
from ._images import DEFAULT_RAW_MAX_BYTES, ImageConversionError, to_image_message
from ._types import (ItemErrorInfo, RankResult, RationaleDelta, RationaleOptions, RationaleResult, RewardError,
                     RewardScores, ScoreGradResult, ScoreResult)
from .aio import AsyncRationaleStream, AsyncRewardClient
from .client import RationaleStream, RewardClient

__version__ = "0.1.0"

__all__ = [
    "AsyncRationaleStream",
    "AsyncRewardClient",
    "DEFAULT_RAW_MAX_BYTES",
    "ImageConversionError",
    "ItemErrorInfo",
    "NO_RETRY",
    "RankResult",
    "RationaleDelta",
    "RationaleOptions",
    "RationaleResult",
    "RationaleStream",
    "RetryPolicy",
    "RewardClient",
    "RewardError",
    "RewardScores",
    "ScoreGradResult",
    "ScoreResult",
    "to_image_message",
]
