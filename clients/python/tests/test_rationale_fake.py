"""Rationales against the in-process fake server (tests/fake_server.py): options checked on the
client, results in input order, the streaming API (deltas mapped back to input indices across
chunks, final result, cancellation, retries, deadlines), sync and async. Runs without the real
server."""
import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from rewarddance import (AsyncRationaleStream, AsyncRewardClient, RationaleDelta, RationaleOptions, RationaleResult,
                         RationaleStream, RetryPolicy, RewardClient, RewardError, ScoreResult, _core)
from rewarddance.v1 import reward_pb2 as pb

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)


def imgs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8 + i, 9, 3), dtype=np.uint8) for i in range(n)]


def fake_text(image, n):
    answer = "yes" if image.astype(np.float64).mean() / 255.0 >= 0.5 else "no"
    return answer + "".join(f" t{k}" for k in range(1, n))


@pytest.mark.parametrize("kwargs", [
    {"temperature": -0.1}, {"temperature": float("nan")}, {"temperature": float("inf")},
    {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": -1}, {"max_tokens": -1}, {"max_tokens": 1.5},
    {"max_tokens": 2**32}, {"seed": -1}, {"seed": 2**64}, {"temperature": "hot"},
])
def test_options_are_checked(kwargs):
    with pytest.raises(ValueError, match="rationale"):
        RationaleOptions(**kwargs)


def test_parse_rationale():
    assert _core.parse_rationale(None) is None and _core.parse_rationale(False) is None
    assert _core.parse_rationale(True) == RationaleOptions()
    o = RationaleOptions(max_tokens=5, temperature=0.7, top_p=0.9, seed=np.uint64(3))
    assert _core.parse_rationale(o) is o and o.seed == 3 and type(o.seed) is int
    assert _core.parse_rationale({"max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": 3}) == o
    assert _core.parse_rationale(pb.RationaleOptions(max_tokens=5)) == RationaleOptions(max_tokens=5)
    with pytest.raises(ValueError, match="unknown rationale option.*tokens"):
        _core.parse_rationale({"tokens": 5})
    with pytest.raises(TypeError):
        _core.parse_rationale("yes")


def test_prepare_sets_the_items_options():
    prep = _core.prepare("p", imgs(3), rationale=[True, None, {"max_tokens": 3, "seed": 5, "top_p": 0.5}])
    a, b, c = prep.items
    assert a.HasField("rationale") and not b.HasField("rationale")
    assert a.rationale == pb.RationaleOptions(top_p=1.0)
    assert c.rationale == pb.RationaleOptions(max_tokens=3, seed=5, top_p=0.5)
    streamed = _core.prepare("p", imgs(2), rationale={"max_tokens": 2}, stream_rationale=True)
    assert all(it.rationale.stream and it.rationale.max_tokens == 2 for it in streamed.items)
    assert not any(it.HasField("rationale") for it in _core.prepare("p", imgs(2)).items)
    with pytest.raises(ValueError, match="2 entries for 3 items"):
        _core.prepare("p", imgs(3), rationale=[True, True])


def test_bad_options_raise_before_any_call(fake):
    with RewardClient(fake.target) as c:
        with pytest.raises(ValueError, match="temperature"):
            c.score("p", imgs(2), rationale={"temperature": -1})
        with pytest.raises(ValueError, match="top_p"):
            c.stream_rationales("p", imgs(2), rationale=[None, {"top_p": 2}])
    assert fake.service.calls == [] and fake.service.stream_calls == 0


def test_score_returns_rationales_in_input_order(fake):
    images = imgs(5)
    rationale = [{"max_tokens": 3}, None, True, {"max_tokens": 100}, RationaleOptions(max_tokens=2, temperature=1)]
    with RewardClient(fake.target, chunk_size=2) as c:
        r = c.score("p", images, rationale=rationale)
        plain = c.score("p", images)
    assert r.ok_mask.tolist() == [True, True, True, False, True]
    np.testing.assert_allclose(r.scores[r.ok_mask], plain.scores[r.ok_mask])
    assert plain.rationales == [None] * 5
    assert r.rationales[1] is None and r.rationales[3] is None
    assert r.errors[3].reason == "invalid_input" and r.errors[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    want = {0: (3, "max_tokens"), 2: (4, "end_of_turn"), 4: (2, "max_tokens")}
    for i, (n, stop) in want.items():
        rat = r.rationales[i]
        assert isinstance(rat, RationaleResult) and rat.complete
        assert (rat.text, rat.token_ids, rat.stop) == (fake_text(images[i], n), tuple(range(100, 100 + n)), stop)
        assert str(rat) == rat.text
        assert r.timings[i].decode_ms == 0.5 * n


def test_stream_maps_deltas_across_chunks(fake):
    images = imgs(5)
    with RewardClient(fake.target, chunk_size=2) as c:
        stream = c.stream_rationales("p", images, rationale=[{"max_tokens": 3}, None, True, {"max_tokens": 2},
                                                            {"max_tokens": 5}])
        assert isinstance(stream, RationaleStream)
        events = list(stream)
        want = c.score("p", images, rationale=[{"max_tokens": 3}, None, True, {"max_tokens": 2}, {"max_tokens": 5}])
    assert fake.service.stream_calls == 1 and fake.service.calls[:3] == [2, 2, 1]
    *deltas, result = events
    assert isinstance(result, ScoreResult) and stream.result is result
    assert all(isinstance(d, RationaleDelta) for d in deltas)
    texts = [""] * 5
    for i, text in deltas:
        texts[i] += text
    assert texts[1] == "" and stream.texts == texts
    for i in (0, 2, 3, 4):
        assert texts[i] == result.rationales[i].text == want.rationales[i].text
    assert result.rationales[1] is None and result.ok_mask.all()
    np.testing.assert_allclose(result.scores, want.scores)
    assert [d.index for d in deltas] == sorted(d.index for d in deltas)  # the fake answers in order


def test_stream_without_rationales_and_with_bad_items(fake):
    images = imgs(3)
    images[1] = b"junk"
    with RewardClient(fake.target) as c:
        events = list(c.stream_rationales("p", images, rationale=None))
        assert len(events) == 1 and events[0].ok_mask.tolist() == [True, False, True]
        bad = list(c.stream_rationales("p", [images[1]], rationale=True))
        assert len(bad) == 1 and bad[0].errors[0].reason == "invalid_image"


def test_breaking_out_of_the_stream_cancels_it(fake):
    fake.service.token_delay = 0.02
    with RewardClient(fake.target) as c:
        seen = 0
        for ev in c.stream_rationales("p", imgs(1), rationale={"max_tokens": 64}):
            seen += 1
            if seen == 3:
                break
        time.sleep(0.2)
        sent = fake.service.tokens_streamed
        time.sleep(0.2)
        assert fake.service.tokens_streamed == sent < 20
        assert c.score("p", imgs(1)).ok_mask.all()  # the client is fine afterwards


def test_with_block_and_cancel_from_another_thread(fake):
    fake.service.token_delay = 0.02
    with RewardClient(fake.target) as c:
        with c.stream_rationales("p", imgs(1), rationale={"max_tokens": 64}) as s:
            assert isinstance(next(s), RationaleDelta)
        assert s.cancelled and s.result is None
        with pytest.raises(StopIteration):
            next(s)
        s = c.stream_rationales("p", imgs(1), rationale={"max_tokens": 64})
        threading.Timer(0.15, s.cancel).start()
        events = list(s)  # ends quietly
        assert 0 < len(events) < 64 and s.cancelled and s.result is None
        assert all(isinstance(e, RationaleDelta) for e in events)
        assert "".join(e.text for e in events) == s.texts[0]


def test_stream_retries_until_the_first_message(fake):
    fake.service.fail_next = [grpc.StatusCode.UNAVAILABLE]
    with RewardClient(fake.target, retry=FAST) as c:
        *deltas, result = c.stream_rationales("p", imgs(2), rationale=True)
    assert result.ok_mask.all() and len(deltas) == 8 and fake.service.stream_calls == 2
    fake.service.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
    with RewardClient(fake.target, retry=FAST) as c:
        with pytest.raises(RewardError) as ei:
            list(c.stream_rationales("p", imgs(2)))
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT and ei.value.attempts == 1


def test_stream_deadline(fake):
    fake.service.delay = lambda req: 1.0
    with RewardClient(fake.target) as c:
        t0 = time.monotonic()
        with pytest.raises(RewardError) as ei:
            list(c.stream_rationales("p", imgs(2), timeout=0.2))
        assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 0.9
        (result,) = list(c.stream_rationales("p", imgs(2), timeout=0.2, mask_call_errors=True))
    assert not result.ok_mask.any() and all(e.reason == "call_failed" for e in result.errors)


def test_async_stream(fake):
    images = imgs(3)

    async def main():
        async with AsyncRewardClient(fake.target, chunk_size=2) as c:
            stream = c.stream_rationales("p", images, rationale={"max_tokens": 3})
            assert isinstance(stream, AsyncRationaleStream)
            events = [ev async for ev in stream]
            scored = await c.score("p", images, rationale={"max_tokens": 3})
            with pytest.raises(ValueError):
                c.stream_rationales("p", images, rationale={"top_p": 0})
            fake.service.token_delay = 0.02
            async with c.stream_rationales("p", images[:1], rationale={"max_tokens": 64}) as s:
                async for ev in s:
                    break
            await asyncio.sleep(0.2)
            sent = fake.service.tokens_streamed
            await asyncio.sleep(0.2)
            return events, scored, s, sent

    events, scored, s, sent = asyncio.run(main())
    *deltas, result = events
    texts = [""] * 3
    for i, t in deltas:
        texts[i] += t
    assert texts == [r.text for r in result.rationales] == [r.text for r in scored.rationales]
    assert s.cancelled and s.result is None and fake.service.tokens_streamed == sent < 20
