"""Python client for the rewarddance reward service.

    from rewarddance import RewardClient
    client = RewardClient(["reward-0:50051", "reward-1:50051"])
    scores, ok, errors = client.score("a red fox in the snow", images)

See `RewardClient`, `AsyncRewardClient` and `ScoreResult`. The generated protobuf messages are in
`rewarddance.v1.reward_pb2`.
"""
from ._core import NO_RETRY, RetryPolicy
from ._images import DEFAULT_RAW_MAX_BYTES, ImageConversionError, to_image_message
from ._types import ItemErrorInfo, RankResult, RewardError, ScoreResult
from .aio import AsyncRewardClient
from .client import RewardClient

__version__ = "0.1.0"

__all__ = [
    "AsyncRewardClient",
    "DEFAULT_RAW_MAX_BYTES",
    "ImageConversionError",
    "ItemErrorInfo",
    "NO_RETRY",
    "RankResult",
    "RetryPolicy",
    "RewardClient",
    "RewardError",
    "ScoreResult",
    "to_image_message",
]
