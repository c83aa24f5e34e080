"""Result and error types shared by the sync and async clients."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, List, NamedTuple, Optional, Tuple

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


@dataclass(frozen=True)
class RationaleOptions:
    """How to decode an item's chain-of-thought rationale (`score(..., rationale=...)`).

    - `max_tokens`: most tokens to generate, the answer token included; 0 (default) is the server's
      default (`Info.limits.default_rationale_tokens`), at most `limits.max_rationale_tokens`;
    - `temperature`: 0 (default) is greedy, deterministic; otherwise finite and > 0;
    - `top_p`: nucleus mass in (0, 1] (default 1: the whole distribution);
    - `seed`: seed of the item's sampler (same seed, inputs and model: same text).

    Checked on construction (`ValueError`); the server checks its own limits and reports a bad
    item as that item's error (`INVALID_ARGUMENT`).
    """

    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("max_tokens", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"rationale {name} must be an integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"rationale {name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not 0 <= self.max_tokens < 2**32:
            raise ValueError(f"rationale max_tokens must be >= 0 (0: server default), got {self.max_tokens}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"rationale seed must be in [0, 2**64), got {self.seed}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise ValueError(f"rationale temperature must be finite and >= 0 (0: greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"rationale top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# RationaleStop enum number -> readable name (`RationaleResult.stop`).
RATIONALE_STOPS = {0: "unspecified", 1: "end_of_turn", 2: "max_tokens", 3: "deadline", 4: "failed"}


@dataclass(frozen=True)
class RationaleResult:
    """An item's decoded rationale.

    - `text`: the generated text (the answer word first, then the reasoning);
    - `token_ids`: the generated token ids (the end-of-turn token excluded);
    - `stop`: why decoding stopped: "end_of_turn" (the model ended its turn), "max_tokens",
      "deadline" (the call's deadline passed while decoding: `text` is a prefix, the score is
      valid) or "failed" (decoding failed on the server: a prefix, the score is valid).
    """

    text: str
    token_ids: Tuple[int, ...] = field(repr=False)
    stop: str

    @property
    def complete(self) -> bool:
        """True unless decoding was cut short by the deadline or a failure."""
        return self.stop in ("end_of_turn", "max_tokens")

    def __str__(self) -> str:
        return self.text


class RationaleDelta(NamedTuple):
    """A piece of an item's rationale, streamed while it is decoded: `(index, text)`, `index`
    being the item's position in the input. An item's deltas concatenated equal its final
    `RationaleResult.text`."""

    index: int
    text: str


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
    arrays, NaN where failed), `model_id` (str), `timings` (per item `rewarddance.v1.Timing` or
    None; `decode_ms` is the rationale's decoding time), `rationales` (per item
    `RationaleResult`, or None where the item asked for none or was not scored) and `reward`
    (the named reward that made the scores, `score(..., reward="name")`; None: the server's
    first reward).
    """

    p_yes_vocab: np.ndarray
    logit_yes: np.ndarray
    logit_no: np.ndarray
    model_id: str
    timings: List[Any]
    rationales: List[Optional[RationaleResult]]
    reward: Optional[str]

    def __new__(cls, scores, ok_mask, errors, *, p_yes_vocab=None, logit_yes=None, logit_no=None,
                model_id="", timings=None, rationales=None, reward=None):
        self = super().__new__(cls, scores, ok_mask, errors)
        n = len(scores)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        self.p_yes_vocab = p_yes_vocab if p_yes_vocab is not None else nan()
        self.logit_yes = logit_yes if logit_yes is not None else nan()
        self.logit_no = logit_no if logit_no is not None else nan()
        self.model_id = model_id
        self.timings = timings if timings is not None else [None] * n
        self.rationales = rationales if rationales is not None else [None] * n
        self.reward = reward
        return self

    @property
    def num_failed(self) -> int:
        return int((~self.ok_mask).sum())


class _RewardScoresBase(NamedTuple):
    scores: np.ndarray
    ok_mask: np.ndarray
    errors: List[List[Optional[ItemErrorInfo]]]


class RewardScores(_RewardScoresBase):
    """The scores of every item under several named rewards (`score(..., reward=[names])`):
    `(scores, ok_mask, errors)` like `ScoreResult`, with one column per reward, in the order of
    `rewards`; unpacks as a 3-tuple.

    - `scores`: float64 (items, rewards), `scores[i, k]` = item i's `p_yes` under `rewards[k]`;
      NaN where that cell failed;
    - `ok_mask`: bool (items, rewards), True where the cell was scored;
    - `errors`: one list per item with one `ItemErrorInfo` (or None) per reward: `errors[i][k]`.
      An item that failed as a whole (the client could not build it, an unknown or repeated
      reward name: reason "unknown_reward", a failed call with `mask_call_errors=True`) has its
      error in every cell of its row.

    Extra attributes: `rewards` (the names, a tuple), `p_yes_vocab`, `logit_yes`, `logit_no`
    (float64 (items, rewards), NaN where failed), `model_id`, `timings` (per item: its timing,
    all rewards together) and `rationales` (per item; only the first reward decodes one).
    `reward(name)` is one reward's column as a `ScoreResult`, `column(name)` its number.
    """

    rewards: Tuple[str, ...]
    p_yes_vocab: np.ndarray
    logit_yes: np.ndarray
    logit_no: np.ndarray
    model_id: str
    timings: List[Any]
    rationales: List[Optional[RationaleResult]]

    def __new__(cls, scores, ok_mask, errors, *, rewards, p_yes_vocab=None, logit_yes=None, logit_no=None,
                model_id="", timings=None, rationales=None):
        self = super().__new__(cls, scores, ok_mask, errors)
        n = len(scores)
        self.rewards = tuple(rewards)
        nan = lambda: np.full((n, len(self.rewards)), np.nan)  # noqa: E731
        self.p_yes_vocab = p_yes_vocab if p_yes_vocab is not None else nan()
        self.logit_yes = logit_yes if logit_yes is not None else nan()
        self.logit_no = logit_no if logit_no is not None else nan()
        self.model_id = model_id
        self.timings = timings if timings is not None else [None] * n
        self.rationales = rationales if rationales is not None else [None] * n
        return self

    def column(self, reward: Any) -> int:
        """The column of `reward` (a name, or a column number)."""
        if isinstance(reward, str):
            try:
                return self.rewards.index(reward)
            except ValueError:
                raise KeyError(f"reward {reward!r} is not in this result (it has {', '.join(self.rewards)})") from None
        k = int(reward)
        if not -len(self.rewards) <= k < len(self.rewards):
            raise IndexError(f"reward column {k} of {len(self.rewards)}")
        return k % len(self.rewards)

    def reward(self, reward: Any) -> ScoreResult:
        """One reward's scores (by name or column number) as a `ScoreResult`."""
        k = self.column(reward)
        return ScoreResult(self.scores[:, k].copy(), self.ok_mask[:, k].copy(), [row[k] for row in self.errors],
                           p_yes_vocab=self.p_yes_vocab[:, k].copy(), logit_yes=self.logit_yes[:, k].copy(),
                           logit_no=self.logit_no[:, k].copy(), model_id=self.model_id, timings=list(self.timings),
                           rationales=list(self.rationales) if k == 0 else None, reward=self.rewards[k])

    @property
    def num_failed(self) -> int:
        """Cells (item, reward) that got no score."""
        return int((~self.ok_mask).sum())


@dataclass(frozen=True)
class ScoreGradResult:
    """The rewards of a batch and their gradients w.r.t. the candidates' pixels
    (`RewardClient.score_grad`), indexed like the input.

    - `scores`: float64 `p_yes` per item (as `score()` gives it); NaN where the item failed;
    - `objectives`: float64 value of the differentiated objective (`objective`: "p_yes",
      "log_p_yes" or "logit_margin") per item; NaN where the item failed;
    - `gradients`: d objective / d (the values sent), one batch shaped like the input (same
      layout; a torch tensor on the input's device and in its dtype, or a numpy array in its
      dtype; float32 with `f32_gradients=True`); all zeros for a failed item;
    - `ok_mask`: bool, True where the item was scored; `errors`: `ItemErrorInfo` where it failed;
    - `logit_yes`, `logit_no` (float64, NaN where failed), `model_id`, `timings` (per item
      `rewarddance.v1.Timing` or None);
    - `reward`: the named reward differentiated (`score_grad(..., reward="name")`); None: the
      server's first.
    """

    scores: np.ndarray
    objectives: np.ndarray
    gradients: Any
    ok_mask: np.ndarray
    errors: List[Optional[ItemErrorInfo]]
    objective: str
    logit_yes: np.ndarray
    logit_no: np.ndarray
    model_id: str
    timings: List[Any]
    reward: Optional[str] = None

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
    - `comparisons`: items the model scored; `model_id`;
    - `reward`: the named reward ranked by (`rank(..., reward="name")`); None: the server's first.
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
    reward: Optional[str] = None


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
