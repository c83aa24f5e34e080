"""The asyncio client: `AsyncRewardClient` on `grpc.aio`."""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import grpc.aio

from . import _assembly, _core, _grad, _images, _retry
from ._core import Targets
from ._retry import RetryPolicy
from ._types import RankResult, RationaleDelta, RewardError, RewardScores, ScoreGradResult, ScoreResult
from .v1 import reward_pb2 as pb
from .v1 import reward_pb2_grpc as pb_grpc

T = TypeVar("T")


class AsyncRewardClient:
    """The asyncio twin of `RewardClient` (same arguments, same results, `await`ed).

    Constructing it does nothing but store settings, so it can be built at import time, before
    any event loop exists, or before a fork. Its `grpc.aio` channels are created on first use
    inside the running loop; used from another loop later (a second `asyncio.run`) or in a forked
    child, it makes fresh ones. Chunks of one `score()` are sent concurrently with
    `asyncio.gather`. Use `async with` or `await close()`. Use one client per event loop (the
    usual case: one loop per process); it is not meant to be shared between threads.
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
        raw_max_bytes: int = _images.DEFAULT_RAW_MAX_BYTES,
        lb_policy: str = "round_robin",
        options: Optional[Sequence[Tuple[str, Any]]] = None,
    ):
        self.targets: List[str] = _core.normalize_targets(targets)
        self.timeout = _retry.check_timeout(timeout)
        self.retry = retry or RetryPolicy()
        self._outage = _retry.Outage()
        self.chunk_size = chunk_size
        self.raw_max_bytes = int(raw_max_bytes)
        self._credentials = credentials
        self._metadata = _core.call_metadata(token, metadata)
        self._options = _core.channel_options(lb_policy, options)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._pid: Optional[int] = None
        self._channels: List[grpc.aio.Channel] = []
        self._stubs: List[pb_grpc.RewardServiceStub] = []
        self._health: List[Any] = []
        self._next = 0
        self._info: Optional[pb.InfoResponse] = None
        self._closed = False

    def _ensure(self) -> None:
        loop = asyncio.get_running_loop()  # raises outside a coroutine: channels need a loop
        if self._closed:
            raise RuntimeError("AsyncRewardClient is closed")
        if self._loop is loop and self._pid == os.getpid():
            return
        chans = []
        for t in self.targets:
            if self._credentials is not None:
                chans.append(grpc.aio.secure_channel(t, self._credentials, options=self._options))
            else:
                chans.append(grpc.aio.insecure_channel(t, options=self._options))
        self._channels = chans
        self._stubs = [pb_grpc.RewardServiceStub(c) for c in chans]
        self._health = [c.unary_unary(_core.HEALTH_CHECK) for c in chans]
        self._loop = loop
        self._pid = os.getpid()

    def _pick(self) -> int:
        k = self._next % len(self.targets)
        self._next += 1
        return k

    def _attempts(self, timeout: Optional[float], deadline: Optional[float] = None) -> _retry.Attempts:
        total = _retry.call_timeout(self.timeout, timeout)
        return _retry.Attempts(self.retry, self._outage, total, deadline)

    async def _call(self, fn: Callable[[Any, dict], Awaitable[T]], timeout: Optional[float],
                    deadline: Optional[float] = None) -> T:
        """`RewardClient._call` with `await`: the same retries, deadline and logging."""
        self._ensure()
        tries = self._attempts(timeout, deadline)
        while True:
            kw = tries.begin(self._metadata)
            k = self._pick()
            try:
                out = await fn(self._stubs[k], kw)
            except grpc.RpcError as e:
                await asyncio.sleep(tries.failed(e, self.targets[k]))
                continue
            tries.succeeded()
            return out

    async def info(self, *, timeout: Optional[float] = None, refresh: bool = False) -> pb.InfoResponse:
        if self._info is not None and not refresh:
            return self._info
        self._info = await self._call(lambda stub, kw: stub.Info(pb.InfoRequest(), **kw), timeout)
        return self._info

    async def reward_names(self, *, timeout: Optional[float] = None, refresh: bool = False) -> List[str]:
        """See `RewardClient.reward_names`."""
        return [r.name for r in (await self.info(timeout=timeout, refresh=refresh)).rewards]

    async def health_status(self, service: str = "", *, timeout: float = 5.0) -> dict:
        self._ensure()
        req = _core.encode_health_request(service)

        async def one(check):
            try:
                return _core.decode_health_response(await check(req, timeout=timeout))
            except grpc.RpcError as e:
                return f"UNREACHABLE: {e.code().name}"

        statuses = await asyncio.gather(*(one(c) for c in self._health))
        return dict(zip(self.targets, statuses))

    async def health(self, service: str = "", *, timeout: float = 5.0) -> bool:
        return all(s == "SERVING" for s in (await self.health_status(service, timeout=timeout)).values())

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        end = time.monotonic() + timeout
        while True:
            last = await self.health_status(timeout=max(0.1, min(5.0, end - time.monotonic())))
            if all(s == "SERVING" for s in last.values()):
                return
            if time.monotonic() + interval > end:
                raise TimeoutError(f"servers not ready after {timeout:g} s: {last}")
            await asyncio.sleep(interval)

    async def _limits(self, chunk_size: Optional[int], timeout: float) -> Tuple[int, int]:
        if chunk_size is None and self._info is None:
            try:
                await self.info(timeout=timeout)
            except RewardError as e:
                if e.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
        return _core.limits_from_info(self._info, chunk_size)

    async def score(
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
        """See `RewardClient.score`. Image conversion runs in the loop's default executor."""
        self._ensure()
        total = _retry.call_timeout(self.timeout, timeout)
        deadline = time.monotonic() + total
        names, several = _core.parse_reward(reward)
        loop = asyncio.get_running_loop()
        prep = await loop.run_in_executor(None, lambda: _core.prepare(
            prompts, images, references, videos=videos, instructions=instructions, mode=mode,
            raw_max_bytes=self.raw_max_bytes, value_range=value_range, rationale=rationale, rewards=names))
        return await self._batched(prep, _assembly.score_assembler(prep, names, several),
                                   lambda items: pb.ScoreRequest(items=items), "Score", total, deadline, chunk_size,
                                   mask_call_errors)

    async def score_grad(
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
        """See `RewardClient.score_grad`. Packing runs in the loop's default executor."""
        self._ensure()
        total = _retry.call_timeout(self.timeout, timeout)
        deadline = time.monotonic() + total
        _core.parse_one_reward(reward, "ScoreGrad")  # bad names raise here, before the executor
        loop = asyncio.get_running_loop()
        prep = await loop.run_in_executor(None, lambda: _grad.prepare_grad(
            prompts, images, references, objective=objective, instructions=instructions, mode=mode,
            value_range=value_range, layout=layout, f32_gradients=f32_gradients, reward=reward,
            raw_max_bytes=self.raw_max_bytes))
        asm = _grad.GradAssembler(prep)
        return await self._batched(prep, asm, prep.request, "ScoreGrad", total, deadline, chunk_size,
                                   mask_call_errors, prep.batch.response_factor)

    async def _batched(self, prep: _core.Prepared, asm: Any, request: Callable[[List[pb.ScoreItem]], Any],
                       method: str, total: float, deadline: float, chunk_size: Optional[int],
                       mask_call_errors: bool, response_factor: Optional[int] = None) -> Any:
        """`RewardClient._batched` with `await`: chunks sent concurrently with `asyncio.gather`."""
        chunk_size = chunk_size or self.chunk_size
        size, max_bytes = await self._limits(chunk_size, total)
        if not chunk_size:
            size = _core.spread(prep, size, len(self.targets))
        chunks = _core.make_chunks(prep.items, size, _grad.request_budget(self._info, max_bytes, response_factor))

        async def run(indices: List[int]):
            req = request([prep.items[i] for i in indices])
            try:
                return await self._call(lambda stub, kw: getattr(stub, method)(req, **kw), total, deadline), None
            except RewardError as e:
                return None, e

        outcomes = await asyncio.gather(*(run(c) for c in chunks))
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
    ) -> "AsyncRationaleStream":
        """`RewardClient.stream_rationales` as an async iterator (not awaited itself):

            async with client.stream_rationales(prompt, images, rationale=True) as stream:
                async for ev in stream:
                    ...  # RationaleDelta(index, text)s, then the ScoreResult

        `rationale=` and `reward=` are checked here (ValueError); images are converted (in the
        loop's default executor) and the call is made on the first iteration. Leaving the `async with` block,
        `await stream.aclose()` or `stream.cancel()` cancels the call; breaking out of a bare
        `async for` cancels it when asyncio finalizes the abandoned stream.
        """
        _core.check_rationale(rationale)
        names, several = _core.parse_reward(reward)
        total = _retry.call_timeout(self.timeout, timeout)
        deadline = time.monotonic() + total
        stream = AsyncRationaleStream()
        ctl = stream._ctl

        def prepare():
            return _core.prepare(prompts, images, references, videos=videos, instructions=instructions, mode=mode,
                                 raw_max_bytes=self.raw_max_bytes, value_range=value_range, rationale=rationale,
                                 stream_rationale=True, rewards=names)

        def assembler(prep: _core.Prepared) -> _assembly.Assembler:
            return _assembly.score_assembler(prep, names, several)

        stream._gen = self._stream_events(ctl, prepare, assembler, chunk_size, self._attempts(total, deadline),
                                          mask_call_errors)
        return stream

    async def _stream_events(self, ctl: _assembly.StreamControl, prepare: Callable[[], _core.Prepared],
                             assembler: Callable[[_core.Prepared], _assembly.Assembler], chunk_size: Optional[int],
                             tries: _retry.Attempts,
                             mask_call_errors: bool) -> AsyncIterator[Union[RationaleDelta, ScoreResult]]:
        self._ensure()
        loop = asyncio.get_running_loop()
        prep = await loop.run_in_executor(None, prepare)
        size, max_bytes = await self._limits(chunk_size or self.chunk_size, tries.total)
        state = _assembly.StreamState(prep, _core.make_chunks(prep.items, size, max_bytes), assembler(prep))
        ctl.state = state
        while state.requests:
            if ctl.cancelled:
                return
            call = None
            try:
                kw = tries.begin(self._metadata)
                k = self._pick()
                call = self._stubs[k].ScoreStream(iter(state.requests), **kw)
                ctl.call = call
                received = False
                try:
                    async for resp in call:
                        received = True
                        for ev in state.on_response(resp):
                            yield ev
                except grpc.RpcError as e:
                    if ctl.cancelled:
                        return
                    # As in `RewardClient`: retried only before the first message.
                    await asyncio.sleep(tries.failed(e, self.targets[k], retry=not received))
                    continue
                if not state.finished:
                    raise RewardError(grpc.StatusCode.INTERNAL,
                                      f"stream ended after {state.done} of {len(state.chunks)} answers",
                                      tries.attempt, self.targets[k])
                tries.succeeded()
            except asyncio.CancelledError:
                if ctl.cancelled:
                    return
                raise
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

    async def rank(
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
        """Awaitable `RewardClient.rank` (same arguments, same result)."""
        self._ensure()
        name = _core.parse_one_reward(reward, "Rank")
        loop = asyncio.get_running_loop()
        req, client_errors = await loop.run_in_executor(None, lambda: _core.rank_request(
            prompt, candidates, instruction=instruction, method=method, opponents=opponents, seed=seed,
            raw_max_bytes=self.raw_max_bytes, value_range=value_range, reward=name))
        resp = await self._call(lambda stub, kw: stub.Rank(req, **kw), timeout)
        return _core.rank_result(resp, len(req.candidates), client_errors, name)

    async def close(self) -> None:
        self._closed = True
        chans, self._channels = self._channels, []
        same_loop = False
        try:
            same_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            pass
        if same_loop and self._pid == os.getpid():
            await asyncio.gather(*(c.close() for c in chans), return_exceptions=True)
        self._loop = None

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncRewardClient({self.targets!r})"


class AsyncRationaleStream:
    """The events of `AsyncRewardClient.stream_rationales`, an async iterator:
    `RationaleDelta(index, text)`s as the text is decoded, then the `ScoreResult` (also in
    `.result` once it was yielded). `texts` holds each item's text so far. `await aclose()` (or
    leaving `async with`) cancels the call and ends the iteration; `cancel()` cancels it without
    awaiting (the iteration then ends without error)."""

    def __init__(self):
        self._ctl = _assembly.StreamControl()  # shared with the generator, which never refers to self
        self._gen: Any = None

    @property
    def result(self) -> Optional[ScoreResult]:
        """The final `ScoreResult` (`RewardScores` with `reward=[names]`) once it was yielded,
        else None."""
        return self._ctl.result

    @property
    def texts(self) -> List[str]:
        """Each item's rationale text received so far, in input order (empty before the call)."""
        state = self._ctl.state
        return list(state.texts) if state is not None else []

    @property
    def cancelled(self) -> bool:
        return self._ctl.cancelled

    def __aiter__(self) -> "AsyncRationaleStream":
        return self

    async def __anext__(self) -> Union[RationaleDelta, ScoreResult]:
        return await self._gen.__anext__()

    def cancel(self) -> None:
        """Cancels the call; the iteration ends without error."""
        self._ctl.cancel()

    async def aclose(self) -> None:
        """Cancels the call if it is still running and ends the iteration."""
        self.cancel()
        try:
            await self._gen.aclose()
        except RuntimeError:  # being iterated by another task: cancel() ends it there
            pass

    async def __aenter__(self) -> "AsyncRationaleStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
