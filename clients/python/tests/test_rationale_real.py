"""Rationales against the real `rewarddance serve` on the bundled tiny model (random weights: the
text means nothing, but greedy decoding and seeded sampling are deterministic, which is what these
tests compare). Uses the session fixture `real_server` (conftest.py)."""
import asyncio
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import FIXTURE_IMAGES

from rewarddance import AsyncRewardClient, RationaleDelta, RetryPolicy, RewardClient, ScoreResult

PROMPT = "a red fox in the snow"
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.02, max_backoff=0.2)
GREEDY = {"max_tokens": 24}
# Sampling at temperature 1 over the random model's vocabulary practically never ends the turn.
LONG = {"max_tokens": 1024, "temperature": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def client(real_server):
    with RewardClient(real_server.target, retry=FAST, timeout=60) as c:
        yield c


def paths(n=3):
    return [str(p) for p in sorted(FIXTURE_IMAGES.glob("*.png"))[:n]]


def joined(deltas, n):
    texts = [""] * n
    for d in deltas:
        assert isinstance(d, RationaleDelta)
        texts[d.index] += d.text
    return texts


def test_greedy_is_deterministic_and_streams_the_same_text(client):
    ps = paths(3)
    a = client.score(PROMPT, ps, rationale=GREEDY)
    b = client.score(PROMPT, ps, rationale=GREEDY, chunk_size=1)
    plain = client.score(PROMPT, ps)
    assert a.ok_mask.all(), a.errors
    np.testing.assert_allclose(a.scores, plain.scores, atol=1e-6)  # the score is the same either way
    assert plain.rationales == [None] * 3
    for ra, rb in zip(a.rationales, b.rationales):
        assert ra is not None and ra == rb
        assert ra.text and 0 < len(ra.token_ids) <= 24
        assert ra.stop in ("end_of_turn", "max_tokens") and ra.complete
    assert all(t.decode_ms > 0 for t in a.timings)

    stream = client.stream_rationales(PROMPT, ps, rationale=GREEDY, chunk_size=2)
    *deltas, result = stream
    assert isinstance(result, ScoreResult) and stream.result is result
    assert joined(deltas, 3) == [r.text for r in result.rationales] == [r.text for r in a.rationales]
    assert result.rationales == a.rationales
    np.testing.assert_allclose(result.scores, a.scores, atol=1e-6)


def test_seeded_sampling_is_deterministic(client):
    ps = paths(1)
    opts = dict(LONG, max_tokens=32)
    a, b = (client.score(PROMPT, ps, rationale=opts).rationales[0] for _ in range(2))
    assert a == b and len(a.token_ids) == 32 and a.stop == "max_tokens"
    other = client.score(PROMPT, ps, rationale=dict(opts, seed=8)).rationales[0]
    assert other.token_ids != a.token_ids


def test_items_without_rationale_and_server_side_errors(client):
    info = client.info()
    too_many = info.limits.max_rationale_tokens + 1
    r = client.score(PROMPT, paths(3), rationale=[True, None, {"max_tokens": too_many}])
    assert r.ok_mask.tolist() == [True, True, False]
    assert r.rationales[0] is not None and len(r.rationales[0].token_ids) <= info.limits.default_rationale_tokens
    assert r.rationales[1] is None and r.rationales[2] is None
    assert r.errors[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "rationale" in r.errors[2].message
    *deltas, result = client.stream_rationales(PROMPT, paths(3), rationale=[None, GREEDY, {"max_tokens": too_many}])
    assert {d.index for d in deltas} == {1}
    assert result.ok_mask.tolist() == [True, True, False] and result.rationales[0] is None
    assert result.errors[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _metric(server, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_breaking_out_of_the_stream_cancels_decoding(client, real_server):
    steps = "rewarddance_decode_step_seconds_count"
    before = _metric(real_server, steps)
    seen = 0
    for ev in client.stream_rationales(PROMPT, paths(1), rationale=LONG):
        assert isinstance(ev, RationaleDelta)
        seen += 1
        if seen == 5:
            break
    end = time.monotonic() + 10
    while _metric(real_server, "rewarddance_decoding_sequences") > 0:
        assert time.monotonic() < end, "still decoding after the stream was dropped"
        time.sleep(0.05)
    after = _metric(real_server, steps)
    time.sleep(0.3)
    assert _metric(real_server, steps) == after, "decode steps after cancel"
    assert after - before < 1000, "stopped mid-way"
    assert client.score(PROMPT, paths(1)).ok_mask.all()

    with client.stream_rationales(PROMPT, paths(1), rationale=LONG) as s:
        first = next(s)
    assert isinstance(first, RationaleDelta) and s.cancelled and s.result is None


def test_deadline_keeps_the_score_and_the_text_so_far(client):
    r = client.score(PROMPT, paths(1), rationale=LONG, timeout=1.0)
    assert r.ok_mask.all(), r.errors
    rat = r.rationales[0]
    if rat.stop == "deadline":  # a fast (release) server may finish 1024 tokens in time
        assert not rat.complete and 0 < len(rat.token_ids) < 1024
    else:
        assert len(rat.token_ids) == 1024


def test_async_stream_matches_score(real_server):
    ps = paths(2)

    async def main():
        async with AsyncRewardClient(real_server.target, retry=FAST) as c:
            scored = await c.score(PROMPT, ps, rationale=GREEDY)
            events = [ev async for ev in c.stream_rationales(PROMPT, ps, rationale=GREEDY)]
            async with c.stream_rationales(PROMPT, ps[:1], rationale=LONG) as s:
                async for _ in s:
                    break
            return scored, events, s

    scored, events, s = asyncio.run(main())
    *deltas, result = events
    assert joined(deltas, 2) == [r.text for r in scored.rationales]
    assert result.rationales == scored.rationales
    assert s.cancelled and s.result is None
