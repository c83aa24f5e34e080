"""Putting a Score call's chunk responses back together in input order: one score per item
(`Assembler`), or one per item and named reward (`RewardsAssembler`); `_grad.GradAssembler`
extends the first for ScoreGrad. Also the state of a rationale stream (`StreamControl`,
`StreamState`)."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import grpc
import numpy as np

from ._core import Prepared, rationale_result
from ._types import ItemErrorInfo, RationaleDelta, RationaleResult, RewardScores, ScoreResult
from .v1 import reward_pb2 as pb


def bad_response(message: str) -> ItemErrorInfo:
    """The item error of a result the server answered in a way the contract rules out."""
    return ItemErrorInfo(grpc.StatusCode.INTERNAL.value[0], "bad_response", message)


class Assembler:
    """Collects chunk responses (`ScoreResponse`s; `GradAssembler`: `ScoreGradResponse`s) into
    a result in input order."""

    def __init__(self, prepared: Prepared):
        n = prepared.n
        self.n = n
        self.scores = np.full(n, np.nan)
        self.p_yes_vocab = np.full(n, np.nan)
        self.logit_yes = np.full(n, np.nan)
        self.logit_no = np.full(n, np.nan)
        self.ok = np.zeros(n, dtype=bool)
        self.errors: List[Optional[ItemErrorInfo]] = list(prepared.errors)
        self.timings: List[Any] = [None] * n
        self.rationales: List[Optional[RationaleResult]] = [None] * n
        self.model_id = ""

    def add(self, indices: Sequence[int], resp: pb.ScoreResponse) -> None:
        if resp.model_id:
            self.model_id = resp.model_id
        if len(resp.results) != len(indices):
            err = bad_response(f"server answered {len(resp.results)} results for {len(indices)} items")
            for i in indices:
                self.set_error(i, err)
            return
        for pos, r in enumerate(resp.results):
            j = r.index if r.index < len(indices) else pos
            i = indices[j]
            if r.HasField("timing"):
                self.timings[i] = r.timing
            self.extra(i, r, self.outcome(i, r))

    def outcome(self, i: int, r: Any) -> bool:
        """Records item i's outcome (its score, or why it has none); True when it was scored.
        `RewardsAssembler` overrides it."""
        outcome = r.WhichOneof("outcome")
        if outcome == "score":
            self.scores[i] = r.score.p_yes
            self.p_yes_vocab[i] = r.score.p_yes_vocab
            self.logit_yes[i] = r.score.logit_yes
            self.logit_no[i] = r.score.logit_no
            self.ok[i] = True
            self.errors[i] = None
            return True
        if outcome == "error":
            self.set_error(i, ItemErrorInfo(r.error.code, r.error.reason, r.error.message))
        else:
            self.set_error(i, bad_response("result has neither score nor error"))
        return False

    def set_error(self, i: int, err: ItemErrorInfo) -> None:
        """Item i failed as a whole."""
        self.errors[i] = err

    def extra(self, i: int, r: Any, scored: bool) -> None:
        """What item i's result carries besides its outcome: here its rationale (which a
        result may carry with an error too); `GradAssembler` overrides it."""
        if r.HasField("rationale"):
            self.rationales[i] = rationale_result(r.rationale)

    def fail(self, indices: Sequence[int], code: grpc.StatusCode, details: str) -> None:
        err = ItemErrorInfo(code.value[0], "call_failed", details)
        for i in indices:
            self.set_error(i, err)

    def result(self) -> ScoreResult:
        return ScoreResult(self.scores, self.ok, self.errors, p_yes_vocab=self.p_yes_vocab,
                           logit_yes=self.logit_yes, logit_no=self.logit_no, model_id=self.model_id,
                           timings=self.timings, rationales=self.rationales)


class RewardsAssembler(Assembler):
    """Collects `ScoreResponse`s of items that named rewards (every item the same `names`) from
    their `ItemResult.rewards`, one outcome per name in order, into a `RewardScores` (items x
    rewards), or with `several=False` (one name) into that reward's `ScoreResult`.

    The contract is checked: a result whose per-reward outcomes do not name exactly the rewards
    asked for, in order, is a `bad_response` in every cell of its item. A server that predates
    named rewards ignores the names and answers none: its scores (of its only reward) are never
    passed off as a named reward's. An item error without outcomes is the item's in every cell."""

    def __init__(self, prepared: Prepared, names: Sequence[str], several: bool = True):
        super().__init__(prepared)
        self.names = list(names)
        self.several = several
        shape = (self.n, len(self.names))
        self.cells = np.full(shape, np.nan)
        self.cells_vocab = np.full(shape, np.nan)
        self.cells_yes = np.full(shape, np.nan)
        self.cells_no = np.full(shape, np.nan)
        self.cells_ok = np.zeros(shape, dtype=bool)
        self.cell_errors: List[List[Optional[ItemErrorInfo]]] = [[e] * len(self.names) for e in prepared.errors]

    def set_error(self, i: int, err: ItemErrorInfo) -> None:
        self.cells[i] = self.cells_vocab[i] = self.cells_yes[i] = self.cells_no[i] = np.nan
        self.cells_ok[i] = False
        self.cell_errors[i] = [err] * len(self.names)

    def outcome(self, i: int, r: Any) -> bool:
        outs = r.rewards
        if not outs:
            if r.WhichOneof("outcome") == "error":
                self.set_error(i, ItemErrorInfo(r.error.code, r.error.reason, r.error.message))
            else:
                self.set_error(i, bad_response(
                    "the result has no per-reward outcomes (ItemResult.rewards) for the rewards named "
                    f"({', '.join(self.names)}): does the server support named rewards?"))
            return False
        got = [o.reward for o in outs]
        if got != self.names:
            self.set_error(i, bad_response(f"server answered rewards {got} for {self.names}"))
            return False
        for k, o in enumerate(outs):
            which = o.WhichOneof("outcome")
            if which == "score":
                self.cells[i, k] = o.score.p_yes
                self.cells_vocab[i, k] = o.score.p_yes_vocab
                self.cells_yes[i, k] = o.score.logit_yes
                self.cells_no[i, k] = o.score.logit_no
                self.cells_ok[i, k] = True
                self.cell_errors[i][k] = None
            elif which == "error":
                self.cell_errors[i][k] = ItemErrorInfo(o.error.code, o.error.reason, o.error.message)
            else:
                self.cell_errors[i][k] = bad_response(f"reward {o.reward!r}: outcome has neither score nor error")
        return bool(self.cells_ok[i, 0])

    def result(self) -> Any:  # type: ignore[override]
        scores = RewardScores(self.cells, self.cells_ok, self.cell_errors, rewards=self.names,
                              p_yes_vocab=self.cells_vocab, logit_yes=self.cells_yes, logit_no=self.cells_no,
                              model_id=self.model_id, timings=self.timings, rationales=self.rationales)
        return scores if self.several else scores.reward(0)


def score_assembler(prepared: Prepared, names: Sequence[str], several: bool) -> Assembler:
    """The assembler of a Score call: per-reward outcomes when it named rewards."""
    return RewardsAssembler(prepared, names, several) if names else Assembler(prepared)


class StreamControl:
    """What a rationale stream object shares with the generator behind it: the running call, the
    cancelled flag and the final result."""

    def __init__(self) -> None:
        self.call: Any = None
        self.cancelled = False
        self.result: Optional[ScoreResult] = None
        self.state: Optional["StreamState"] = None

    def cancel(self) -> None:
        if self.result is not None:
            return
        self.cancelled = True
        call = self.call
        if call is not None:
            call.cancel()


class StreamState:
    """One ScoreStream call of the rationale streams: the request messages (one per chunk) and
    the bookkeeping that turns its responses into `RationaleDelta`s in input indices and, with
    one final message per request, the `ScoreResult`."""

    def __init__(self, prepared: Prepared, chunks: List[List[int]], asm: Optional[Assembler] = None):
        self.chunks = chunks
        self.requests = [pb.ScoreRequest(items=[prepared.items[i] for i in c]) for c in chunks]
        self.asm = asm if asm is not None else Assembler(prepared)
        self.texts: List[str] = [""] * prepared.n
        self.done = 0  # final messages received (requests answered, in order)

    @property
    def finished(self) -> bool:
        return self.done >= len(self.chunks)

    def on_response(self, resp: pb.ScoreResponse) -> List[RationaleDelta]:
        if resp.results:
            if self.finished:
                return []  # more finals than requests: nothing to put them on
            self.asm.add(self.chunks[self.done], resp)
            self.done += 1
            return []
        out = []
        for d in resp.rationale_deltas:
            if d.request < len(self.chunks) and d.index < len(self.chunks[d.request]) and d.text:
                i = self.chunks[d.request][d.index]
                self.texts[i] += d.text
                out.append(RationaleDelta(i, d.text))
        return out

    def fail_rest(self, code: grpc.StatusCode, details: str) -> None:
        for c in self.chunks[self.done:]:
            self.asm.fail(c, code, details)
        self.done = len(self.chunks)
