"""The synchronous client: `RewardClient`."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from . import _assembly, _core, _grad, _images, _retry
from ._core import Targets
from ._retry import RetryPolicy
from ._types import RankResult, RationaleDelta, RewardError, RewardScores, ScoreGradResult, ScoreResult
from .v1 import reward_pb2 as pb
from .v1 import reward_pb2_grpc as pb_grpc

T = TypeVar("T")


class RewardClient:
    """A thread-safe client for one or many rewarddance servers.

    Args:
        targets: one address (`"host:50051"`, `"dns:///svc.ns.svc.cluster.local:50051"`), a
            comma-separated string of addresses, or a list of them. With several, each call (each
            chunk, each retry) goes to the next one in turn; one grpc channel per target, each with
            round-robin load balancing over whatever its name resolves to.
        timeout: default overall time limit in seconds of one call (`score()`, `rank()`,
            `info()`, a rationale stream), retries and backoff included (120 s; finite).
        retry: `RetryPolicy` (default: UNAVAILABLE / RESOURCE_EXHAUSTED only, retried until the
            call's deadline, backoff 50 ms doubling to 2 s, jittered); `NO_RETRY` disables retries.
        token: bearer token sent as `authorization: Bearer <token>`.
        credentials: `grpc.ChannelCredentials` for TLS (default: plaintext).
        chunk_size: items per request (default: the server's `max_items_per_request` from Info).
        max_workers: threads sending chunks of one call concurrently (shared by all calls).
        raw_max_bytes: in-memory images larger than this as raw RGB8 are PNG-encoded instead.
        options: extra grpc channel options, e.g. `[("grpc.keepalive_time_ms", 10000)]`.

    Channels are created on first use and re-created in a forked child process, so a client made
    before `fork` (dataloader workers, multiprocessing) is safe to use in the child.
    """

    def __init__(
        self,
        targets: Targets,
        *,
        timeout: float = _retry.DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        token: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        metadata: Optional[Sequence[Tuple[str, str]]] = None,
        chunk_size: Optional[int] = None,
        max_workers: int = 8,
        raw_max_bytes: int = _images.DEFAULT_RAW_MAX_BYTES,
        lb_policy: str = "round_robin",
        options: Optional[Sequence[Tuple[str, Any]]] = None,
    ):
        self.targets: List[str] = _core.normalize_targets(targets)
        self.timeout = _retry.check_timeout(timeout)
        self.retry = retry or RetryPolicy()
        self._outage = _retry.Outage()
        self.chunk_size = chunk_size
        self.max_workers = max(1, int(max_workers))
        self.raw_max_bytes = int(raw_max_bytes)
        self._credentials = credentials
        self._metadata = _core.call_metadata(token, metadata)
        self._options = _core.channel_options(lb_policy, options)
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._channels: List[grpc.Channel] = []
        self._stubs: List[pb_grpc.RewardServiceStub] = []
        self._health: List[Callable] = []
        self._pool: Optional[ThreadPoolExecutor] = None
        self._next = 0
        self._info: Optional[pb.InfoResponse] = None
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------

    def _ensure(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardClient is closed")
            if self._pid == pid:
                return
            # First use, or first use in a forked child: the parent's channels and threads are
            # not usable here; drop them without closing (closing would touch the parent's).
            chans = []
            for t in self.targets:
                if self._credentials is not None:
                    chans.append(grpc.secure_channel(t, self._credentials, options=self._options))
                else:
                    chans.append(grpc.insecure_channel(t, options=self._options))
            self._channels = chans
            self._stubs = [pb_grpc.RewardServiceStub(c) for c in chans]
            self._health = [
                c.unary_unary(_core.HEALTH_CHECK, request_serializer=None, response_deserializer=None)
                for c in chans
            ]
            self._pool = None
            self._pid = pid

    def _pick(self) -> int:
        with self._lock:
            k = self._next % len(self.targets)
            self._next += 1
            return k

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="rewarddance")
            return self._pool

    def _attempts(self, timeout: Optional[float], deadline: Optional[float] = None) -> _retry.Attempts:
        total = _retry.call_timeout(self.timeout, timeout)
        return _retry.Attempts(self.retry, self._outage, total, deadline)

    def _call(self, fn: Callable[[pb_grpc.RewardServiceStub, dict], T], timeout: Optional[float],
              deadline: Optional[float] = None) -> T:
        """Runs fn(stub, call_options) with retries on retryable codes (see `_retry`), rotating
        targets, within one overall deadline (`timeout` from now, or the given `deadline`)."""
        self._ensure()
        tries = self._attempts(timeout, deadline)
        while True:
            kw = tries.begin(self._metadata)
            k = self._pick()
            try:
                out = fn(self._stubs[k], kw)
            except grpc.RpcError as e:
                time.sleep(tries.failed(e, self.targets[k]))
                continue
            tries.succeeded()
            return out

    # -- API -------------------------------------------------------------------------------

    def info(self, *, timeout: Optional[float] = None, refresh: bool = False) -> pb.InfoResponse:
        """The server's `InfoResponse` (model id, limits, default instructions, the named rewards
        in `.rewards`); cached."""
        self._ensure()
        if self._info is not None and not refresh:
            return self._info
        info = self._call(lambda stub, kw: stub.Info(pb.InfoRequest(), **kw), timeout)
        self._info = info
        return info

    def reward_names(self, *, timeout: Optional[float] = None, refresh: bool = False) -> List[str]:
        """The names of the server's rewards (`info().rewards`), in its order; the first is
        what a call without `reward=` gets. Empty from a server that predates named rewards."""
        return [r.name for r in self.info(timeout=timeout, refresh=refresh).rewards]

    def health(self, service: str = "", *, timeout: float = 5.0) -> bool:
        """True when every target answers the standard grpc health check with SERVING."""
        return all(s == "SERVING" for s in self.health_status(service, timeout=timeout).values())

    def health_status(self, service: str = "", *, timeout: float = 5.0) -> dict:
        """{target: "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN" | "UNKNOWN" | "UNREACHABLE: ..."}"""
        self._ensure()
        req = _core.encode_health_request(service)
        out = {}
        for t, check in zip(self.targets, self._health):
            try:
                out[t] = _core.decode_health_response(check(req, timeout=timeout))
            except grpc.RpcError as e:
                out[t] = f"UNREACHABLE: {e.code().name}"
        return out

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Blocks until every target is SERVING; raises TimeoutError after `timeout` seconds."""
        end = time.monotonic() + timeout
        last: dict = {}
        while True:
            last = self.health_status(timeout=max(0.1, min(5.0, end - time.monotonic())))
            if all(s == "SERVING" for s in last.values()):
                return
            if time.monotonic() + interval > end:
                raise TimeoutError(f"servers not ready after {timeout:g} s: {last}")
            time.sleep(interval)

    def _limits(self, chunk_size: Optional[int], timeout: float) -> Tuple[int, int]:
        """(items per request, bytes per request). Asks the server (Info, cached) only when no
        chunk size was given; an explicit chunk size never costs an extra call."""
        chunk_size = chunk_size or self.chunk_size
        if chunk_size is None and self._info is None:
            try:
                self.info(timeout=timeout)
            except RewardError as e:
                if e.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
        return _core.limits_from_info(self._info, chunk_size)

    def score(
        self,
        prompts: Any,
        images: Any = None,
        references: Any = None,
        *,
        videos: Any = None,
        instructions: Any = None,
        mode: Any = None,
        timeout: Optional[float] = None,
        chunk_size: Optional[int] = None,
        value_range: Optional[Tuple[float, float]] = None,
        mask_call_errors: bool = False,
        rationale: Any = None,
        reward: Any = None,
    ) -> Union[ScoreResult, RewardScores]:
        """Scores items and returns `(scores, ok_mask, errors)` in input order.

        Args:
            prompts: one prompt for every item, or one per item.
            images: candidates: a list of file paths, bytes, PIL images, numpy HWC arrays (uint8,
                or float in [0, 1]) or torch CHW tensors ([0, 1], or [-1, 1] when negative values
                occur); a 4-D array/tensor is a batch; a single image is one item.
            references: reference images for pairwise scoring: one per item, or one for all.
            videos: instead of images: a list of videos, each a list of frames (or a 4-D array).
            instructions: instruction template(s) overriding the server default (`{prompt}` is
                replaced by the prompt).
            mode: "pointwise", "pairwise" or None (pairwise iff a reference is given).
            timeout: overall seconds for this call, retries included (default: the client's).
            chunk_size: items per request (default: the client's, else the server's limit).
                Chunks are sent concurrently.
            value_range: (lo, hi) of float pixels, overriding the [0, 1] / [-1, 1] detection.
            mask_call_errors: when a chunk's whole call fails (after retries), report its items as
                failed (`reason == "call_failed"`) instead of raising `RewardError`.
            rationale: also decode each item's chain-of-thought rationale: True (server defaults:
                greedy, `default_rationale_tokens`), a `RationaleOptions` or a dict of its fields
                (`max_tokens`, `temperature`, `top_p`, `seed`) for every item, or a list with one
                of these (or None) per item. The texts are in `result.rationales`. Bad options
                raise ValueError here; options over the server's limits are item errors.
            reward: the named reward(s) to score with (`reward_names()`). None (default): the
                server's first. A name: that reward's `ScoreResult` (`result.reward` is the name).
                A list of names: every item under each, once prepared on the server (images
                decoded once), returned as a `RewardScores` with one column per name in this
                order (`scores[i, k]`, `ok_mask[i, k]`, `errors[i][k]`); only the first reward
                decodes a rationale. A repeated or empty name raises ValueError; a name the
                server does not have fails every item (reason "unknown_reward", in every cell).

        Items that cannot be scored (bad image, too large, deadline, ...) do not raise: they are
        NaN in `scores`, False in `ok_mask` and carry an `ItemErrorInfo` in `errors`.
        """
        self._ensure()
        total = _retry.call_timeout(self.timeout, timeout)
        deadline = time.monotonic() + total
        names, several = _core.parse_reward(reward)
        prep = _core.prepare(prompts, images, references, videos=videos, instructions=instructions, mode=mode,
                             raw_max_bytes=self.raw_max_bytes, value_range=value_range, rationale=rationale,
                             rewards=names)
        return self._batched(prep, _assembly.score_assembler(prep, names, several),
                             lambda items: pb.ScoreRequest(items=items), "Score", total, deadline, chunk_size,
                             mask_call_errors)

    def score_grad(
        self,
        prompts: Any,
        images: Any,
        references: Any = None,
        objective: str = "p_yes",
        *,
        value_range: Any = None,
        layout: Optional[str] = None,
        instructions: Any = None,
        mode: Any = None,
        f32_gradients: bool = False,
        timeout: Optional[float] = None,
        chunk_size: Optional[int] = None,
        mask_call_errors: bool = False,
        reward: Optional[str] = None,
    ) -> ScoreGradResult:
        """The reward of each image and its gradient w.r.t. the image's pixels (ScoreGrad RPC).

        Args:
            prompts: one prompt for every item, or one per item.
            images: one 4-D float batch, sent as raw little-endian floats (never re-encoded): a
                torch tensor (B, 3, H, W), what a VAE decoder gives (bf16 is sent as bf16, other
                dtypes as f32), or a numpy array (B, H, W, 3) (f32 on the wire).
            references: reference images for pairwise items (constants, no gradient), any kind
                `score()` takes: one per item, or one for all.
            objective: what is differentiated: "p_yes" (the reward), "log_p_yes" or
                "logit_margin" (logit_yes - logit_no).
            value_range: "-1,1" or "0,1" (or a pair); default "-1,1" for torch tensors, "0,1"
                for numpy arrays. Never guessed from the values. The gradient is w.r.t. the
                values as sent, so a [-1, 1] image's gradient is half its [0, 1] one.
            layout: "chw" or "hwc"; default "chw" for torch tensors, "hwc" for numpy arrays.
            instructions, mode: as in `score()`.
            f32_gradients: return the gradients as float32 (from the server's f32) whatever the
                input's dtype; default: the input's dtype.
            timeout, chunk_size, mask_call_errors: as in `score()` (retries included).
            reward: the named reward to differentiate (one name; None: the server's first).
                Several names raise ValueError (one call per reward); an unknown one fails
                every item (reason "unknown_reward").

        Returns a `ScoreGradResult`: `scores` (p_yes), `objectives`, `gradients` (shaped like
        `images`, on its device, zeros for failed items), `ok_mask`, `errors`. Items that cannot
        be scored (NaN/inf pixels, too large, ...) do not raise: they fail alone, as in
        `score()`. Each direction carries width * height * 3 elements per image (12.6 MB for a
        1024 x 1024 f32 image; bf16 halves it).
        """
        self._ensure()
        total = _retry.call_timeout(self.timeout, timeout)
        deadline = time.monotonic() + total
        prep = _grad.prepare_grad(prompts, images, references, objective=objective, instructions=instructions,
                                  mode=mode, value_range=value_range, layout=layout, f32_gradients=f32_gradients,
                                  reward=reward, raw_max_bytes=self.raw_max_bytes)
        return self._batched(prep, _grad.GradAssembler(prep), prep.request, "ScoreGrad", total, deadline,
                             chunk_size, mask_call_errors, prep.batch.response_factor)

    def _batched(self, prep: _core.Prepared, asm: Any, request: Callable[[List[pb.ScoreItem]], Any], method: str,
                 total: float, deadline: float, chunk_size: Optional[int], mask_call_errors: bool,
                 response_factor: Optional[int] = None) -> Any:
        """Sends the prepared items in chunks (concurrently), each with retries until the
        deadline, and returns the assembled result in input order. `response_factor`: answers
        are about that many times their request's size (ScoreGrad), None: small (Score)."""
        explicit = chunk_size or self.chunk_size
        size, max_bytes = self._limits(chunk_size, total)
        if not explicit:
            size = _core.spread(prep, size, len(self.targets))
        chunks = _core.make_chunks(prep.items, size, _grad.request_budget(self._info, max_bytes, response_factor))

        def run(indices: List[int]) -> Any:
            req = request([prep.items[i] for i in indices])
            return self._call(lambda stub, kw: getattr(stub, method)(req, **kw), total, deadline)

        if len(chunks) == 1:
            outcomes = [_outcome(run, chunks[0])]
        else:
            pool = self._executor()
            futs = [pool.submit(_outcome, run, c) for c in chunks]
            outcomes = [f.result() for f in futs]
        for indices, (resp, err) in zip(chunks, outcomes):
            if err is None:
                asm.add(indices, resp)
            elif mask_call_errors:
                asm.fail(indices, err.code, str(err))
            else:
                raise err
        return asm.result()

    def stream_rationales(
        self,
        prompts: Any,
        images: Any = None,
        references: Any = None,
        *,
        rationale: Any = True,
        videos: Any = None,
        instructions: Any = None,
        mode: Any = None,
        timeout: Optional[float] = None,
        chunk_size: Optional[int] = None,
        value_range: Optional[Tuple[float, float]] = None,
        mask_call_errors: bool = False,
        reward: Any = None,
    ) -> "RationaleStream":
        """Scores items like `score()` and streams their rationales as they are decoded.

        Returns a `RationaleStream`, an iterator of events: `RationaleDelta(index, text)` for each
        piece of text (`index` is the item's position in the input), then, last, the
        `ScoreResult` of all items (the same as `score()` would return; its rationale texts equal
        the concatenated deltas). `rationale` takes the same values as in `score()` (default True:
        every item, server defaults); items without one are scored but send no deltas. `reward`
        as in `score()`: with a list of names the last event is a `RewardScores`, and the text
        is the first reward's.

            for ev in client.stream_rationales(prompt, images, rationale={"max_tokens": 128}):
                if isinstance(ev, RationaleDelta):
                    print(ev.index, ev.text)
                else:
                    result = ev

        One ScoreStream call (one request message per chunk) to one target; it is retried like
        `score()` only until the first message arrives. `timeout` bounds the whole stream: when
        it passes, rationales still decoding end with `stop == "deadline"` (the scores are kept),
        or the call fails with DEADLINE_EXCEEDED (`RewardError`, or failed items with
        `mask_call_errors=True`). Breaking out of the loop, `close()` (or leaving a `with` block)
        cancels the call, and the server stops decoding; `cancel()` may be called from another
        thread. Arguments are checked and images converted here, before the call.
        """
        self._ensure()
        total = _retry.call_timeout(self.timeout, timeout)
        deadline = time.monotonic() + total
        names, several = _core.parse_reward(reward)
        prep = _core.prepare(prompts, images, references, videos=videos, instructions=instructions, mode=mode,
                             raw_max_bytes=self.raw_max_bytes, value_range=value_range, rationale=rationale,
                             stream_rationale=True, rewards=names)
        size, max_bytes = self._limits(chunk_size, total)
        state = _assembly.StreamState(prep, _core.make_chunks(prep.items, size, max_bytes),
                                  _assembly.score_assembler(prep, names, several))
        stream = RationaleStream(state)
        stream._gen = self._stream_events(stream._ctl, state, self._attempts(total, deadline), mask_call_errors)
        return stream

    def _stream_events(self, ctl: _assembly.StreamControl, state: _assembly.StreamState, tries: _retry.Attempts,
                       mask_call_errors: bool) -> Iterator[Union[RationaleDelta, ScoreResult]]:
        while state.requests:
            if ctl.cancelled:
                return
            call = None
            try:
                kw = tries.begin(self._metadata)
                k = self._pick()
                call = self._stubs[k].ScoreStream(iter(state.requests), **kw)
                ctl.call = call
                if ctl.cancelled:
                    return
                received = False
                try:
                    for resp in call:
                        received = True
                        yield from state.on_response(resp)
                except grpc.RpcError as e:
                    if ctl.cancelled:
                        return
                    # Retried like a unary call only before its first message: after it, the
                    # caller has seen deltas, which a second stream would send again.
                    time.sleep(tries.failed(e, self.targets[k], retry=not received))
                    continue
                if not state.finished:
                    raise RewardError(grpc.StatusCode.INTERNAL,
                                      f"stream ended after {state.done} of {len(state.chunks)} answers",
                                      tries.attempt, self.targets[k])
                tries.succeeded()
            except RewardError as err:
                if not mask_call_errors:
                    raise
                state.fail_rest(err.code, str(err))
            finally:
                if call is not None:
                    call.cancel()  # a no-op once the call has ended; else (consumer stopped early) stops the server
            break
        result = state.asm.result()
        ctl.result = result
        yield result

    def rank(
        self,
        prompt: str,
        candidates: Any,
        *,
        method: Any = None,
        opponents: int = 0,
        seed: int = 0,
        instruction: Optional[str] = None,
        timeout: Optional[float] = None,
        value_range: Optional[Tuple[float, float]] = None,
        reward: Optional[str] = None,
    ) -> RankResult:
        """Ranks N candidate images for one prompt (Best-of-N) with the server's Rank RPC.

        `method`: "pairwise" (default: every ordered pair, or `opponents` K random opponents per
        candidate drawn with `seed`, both orders, Bradley-Terry) or "pointwise" (P(yes) each).
        Candidates take the same input kinds as `score()`. A candidate that cannot be scored is
        reported in `errors` / `ok_mask` and ranked last; the call fails as a whole
        (`RewardError`) only for call-level errors, after retries as for `score()`. `reward`:
        the named reward to rank by (one name; None: the server's first); a name the server does
        not have fails the call (`RewardError` INVALID_ARGUMENT).
        """
        self._ensure()
        name = _core.parse_one_reward(reward, "Rank")
        req, client_errors = _core.rank_request(prompt, candidates, instruction=instruction, method=method,
                                                opponents=opponents, seed=seed, raw_max_bytes=self.raw_max_bytes,
                                                value_range=value_range, reward=name)
        resp = self._call(lambda stub, kw: stub.Rank(req, **kw), timeout)
        return _core.rank_result(resp, len(req.candidates), client_errors, name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            chans, self._channels = self._channels, []
            pool, self._pool = self._pool, None
            mine = self._pid == os.getpid()
            self._pid = None
        if mine:
            for c in chans:
                c.close()
            if pool is not None:
                pool.shutdown(wait=False)

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RewardClient({self.targets!r})"


class RationaleStream:
    """The events of `RewardClient.stream_rationales`: `RationaleDelta(index, text)`s as the text
    is decoded, then the `ScoreResult` (also in `.result` once it was yielded).

    `texts` holds each item's text so far. `close()` (also on leaving a `with` block, or when the
    stream is garbage collected, e.g. after `break` in `for ev in client.stream_rationales(...)`)
    cancels the call and ends the iteration; `cancel()` does the same from any thread (the
    iteration then ends without error).
    """

    def __init__(self, state: _assembly.StreamState):
        self._state = state
        # Shared with the generator, which must not refer to this object: then a stream dropped
        # by a `for` loop's `break` is freed (and cancelled) at once, not by the cycle collector.
        self._ctl = _assembly.StreamControl()
        self._gen: Optional[Iterator[Union[RationaleDelta, ScoreResult]]] = None

    @property
    def result(self) -> Optional[ScoreResult]:
        """The final `ScoreResult` (`RewardScores` with `reward=[names]`) once it was yielded,
        else None."""
        return self._ctl.result

    @property
    def texts(self) -> List[str]:
        """Each item's rationale text received so far, in input order."""
        return list(self._state.texts)

    @property
    def cancelled(self) -> bool:
        return self._ctl.cancelled

    def __iter__(self) -> "RationaleStream":
        return self

    def __next__(self) -> Union[RationaleDelta, ScoreResult]:
        return next(self._gen)

    def cancel(self) -> None:
        """Cancels the call (thread-safe); the iteration ends without error."""
        self._ctl.cancel()

    def close(self) -> None:
        """Cancels the call if it is still running and ends the iteration."""
        self.cancel()
        gen = self._gen
        if gen is not None:
            try:
                gen.close()
            except ValueError:  # being iterated in another thread: cancel() ends it there
                pass

    def __enter__(self) -> "RationaleStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _outcome(run: Callable[[List[int]], Any], indices: List[int]):
    try:
        return run(indices), None
    except RewardError as e:
        return None, e
