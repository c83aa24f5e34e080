"""Result and error types shared by the sync and async clients."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional

import grpc
import numpy as np

_CODES = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True)
class ItemErrorInfo:
    """Why one item has no score.

    `code` is the gRPC status code number (3 INVALID_ARGUMENT for a bad item, 4 DEADLINE_EXCEEDED,
    8 RESOURCE_EXHAUSTED, 13 INTERNAL, 14 UNAVAILABLE, ...), `reason` a stable machine-readable
    string ("invalid_image", "image_too_large", "too_many_tiles", "deadline_exceeded", ...;
    "client_invalid_input" when the client could not even build the item, "call_failed" for items
    of a chunk whose whole call failed when `mask_call_errors=True`), `message` a human sentence.
    """

    code: int
    reason: str
    message: str

    @property
    def status_code(self) -> Optional[grpc.StatusCode]:
        return _CODES.get(self.code)

    def __str__(self) -> str:
        name = self.status_code.name if self.status_code else str(self.code)
        return f"{name} {self.reason}: {self.message}"


class _ScoreResultBase(NamedTuple):
    scores: np.ndarray
    ok_mask: np.ndarray
    errors: List[Optional[ItemErrorInfo]]


class ScoreResult(_ScoreResultBase):
    """`(scores, ok_mask, errors)`, in input order; unpacks as a 3-tuple.

    - `scores`: float64 `p_yes` per item (the reward, in [0, 1]); NaN where the item failed;
    - `ok_mask`: bool, True where the item was scored;
    - `errors`: `ItemErrorInfo` where the item failed, else None.

    Extra attributes (not part of the tuple): `p_yes_vocab`, `logit_yes`, `logit_no` (float64
    arrays, NaN where failed), `model_id` (str) and `timings` (per item `rewarddance.v1.Timing` or
    None).
    """

    p_yes_vocab: np.ndarray
    logit_yes: np.ndarray
    logit_no: np.ndarray
    model_id: str
    timings: List[Any]

    def __new__(cls, scores, ok_mask, errors, *, p_yes_vocab=None, logit_yes=None, logit_no=None,
                model_id="", timings=None):
        self = super().__new__(cls, scores, ok_mask, errors)
        n = len(scores)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        self.p_yes_vocab = p_yes_vocab if p_yes_vocab is not None else nan()
        self.logit_yes = logit_yes if logit_yes is not None else nan()
        self.logit_no = logit_no if logit_no is not None else nan()
        self.model_id = model_id
        self.timings = timings if timings is not None else [None] * n
        return self

    @property
    def num_failed(self) -> int:
        return int((~self.ok_mask).sum())


@dataclass(frozen=True)
class RankResult:
    """The ranking of N candidates for one prompt (`RewardClient.rank`), indexed like the input.

    - `order`: candidate indices from best to worst (failed candidates last);
    - `best`: index of the best candidate, None when none could be ranked;
    - `ok_mask` / `errors`: which candidates could be scored, and why not;
    - `wins`, `strength` (pairwise: comparisons won, Bradley-Terry log-strength) and `p_yes`
      (pointwise): float64 arrays, NaN where not applicable;
    - `preference`: pairwise, an N x N array, `preference[j, i]` = P(candidate j beats candidate
      i) averaged over both presentation orders (NaN on the diagonal and for unscored pairs);
      None for pointwise;
    - `comparisons`: items the model scored; `model_id`.
    """

    order: List[int]
    best: Optional[int]
    ok_mask: np.ndarray
    errors: List[Optional[ItemErrorInfo]]
    wins: np.ndarray
    strength: np.ndarray
    p_yes: np.ndarray
    preference: Optional[np.ndarray]
    comparisons: int
    model_id: str


class RewardError(Exception):
    """A call failed as a whole (after retries, where the code is retryable).

    `code` is the `grpc.StatusCode`, `details` the server's message, `attempts` how many times the
    call was tried.
    """

    def __init__(self, code: grpc.StatusCode, details: str, attempts: int = 1, target: str = ""):
        self.code = code
        self.details = details
        self.attempts = attempts
        self.target = target
        where = f" from {target}" if target else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{code.name}{where}{tries}: {details}")
