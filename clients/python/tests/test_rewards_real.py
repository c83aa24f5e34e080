"""Named rewards against the real `rewarddance serve --model tiny-internvl-hf --rewards FILE`
(conftest.py `rewards_server`: `default`, the base model; `strict`, the base with its own
pointwise instruction; `swift`, the ms-swift-style LLM LoRA fixture applied unmerged). Random
weights: the scores mean nothing, but they are deterministic and differ between rewards, which is
what is compared. Skips without a binary that serves `--rewards` (fails with
REWARDDANCE_REQUIRE_SERVER=1).
"""
import asyncio
import io

import grpc
import numpy as np
import pytest
from conftest import FIXTURE_IMAGES, STRICT_INSTRUCTION, SWIFT_ADAPTER

from rewarddance import AsyncRewardClient, RetryPolicy, RewardClient, RewardError, RewardScores, ScoreResult

PIL = pytest.importorskip("PIL.Image")
PROMPT = "a red fox in the snow"
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.02, max_backoff=0.2)
NAMES = ["default", "strict", "swift"]
# Scores of one item batched with different neighbours differ by float rounding only.
ATOL = 1e-6


@pytest.fixture(scope="module")
def client(rewards_server):
    with RewardClient(rewards_server.target, retry=FAST, timeout=120) as c:
        yield c


def pngs(n=5):
    return [str(p) for p in sorted(FIXTURE_IMAGES.glob("*.png"))[:n]]


def test_info_lists_the_rewards(client):
    assert client.reward_names() == NAMES
    default, strict, swift = client.info().rewards
    assert not default.HasField("adapter") and not strict.HasField("adapter")
    a = swift.adapter
    assert a.path.rstrip("/").endswith(SWIFT_ADAPTER.name) and not a.merged
    assert a.rank == 8 and len(a.modules) == 21  # what the Rust server test sees for this fixture
    assert any("rendered exactly" in i.template for i in strict.instructions)
    assert swift.answer_tokens.yes == "yes" and swift.answer_tokens.no == "no"


def test_the_matrix_equals_each_reward_alone(client):
    paths = pngs()
    r = client.score(PROMPT, paths, reward=["swift", "default", "strict"])
    assert isinstance(r, RewardScores) and r.rewards == ("swift", "default", "strict")
    assert r.ok_mask.shape == (5, 3) and r.ok_mask.all(), r.errors
    for k, name in enumerate(r.rewards):
        alone = client.score(PROMPT, paths, reward=name)
        assert isinstance(alone, ScoreResult) and alone.reward == name and alone.ok_mask.all()
        np.testing.assert_allclose(r.scores[:, k], alone.scores, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(r.logit_yes[:, k], alone.logit_yes, atol=1e-4, err_msg=name)
    # `default` is what a call naming none gets; `strict` is the base with its instruction.
    np.testing.assert_allclose(r.reward("default").scores, client.score(PROMPT, paths).scores, atol=ATOL)
    np.testing.assert_allclose(r.reward("strict").scores,
                               client.score(PROMPT, paths, instructions=STRICT_INSTRUCTION).scores, atol=ATOL)
    # The adapter and the instruction change the scores.
    assert np.abs(r.scores[:, 0] - r.scores[:, 1]).max() > 1e-3
    assert np.abs(r.scores[:, 2] - r.scores[:, 1]).max() > 1e-3
    chunked = client.score(PROMPT, paths, reward=["swift", "default", "strict"], chunk_size=2)
    np.testing.assert_allclose(chunked.scores, r.scores, atol=ATOL)


def test_unknown_names_and_bad_items(client):
    paths = pngs(3)
    r = client.score(PROMPT, paths, reward=["swift", "nope"])
    assert not r.ok_mask.any()
    for row in r.errors:
        assert [(e.code, e.reason) for e in row] == [(grpc.StatusCode.INVALID_ARGUMENT.value[0], "unknown_reward")] * 2
        assert "nope" in row[0].message
    one = client.score(PROMPT, paths, reward="nope")
    assert not one.ok_mask.any() and {e.reason for e in one.errors} == {"unknown_reward"}
    items = paths[:1] + [b"\x89PNG\r\n\x1a\n truncated"] + paths[1:]
    r = client.score(PROMPT, items, reward=["swift", "default"])
    assert r.ok_mask.tolist() == [[True, True], [False, False], [True, True], [True, True]]
    assert [e.reason for e in r.errors[1]] == ["invalid_image"] * 2
    with pytest.raises(ValueError, match="named twice"):
        client.score(PROMPT, paths, reward=["swift", "swift"])


def test_rank_by_a_reward(client):
    paths = pngs(4)
    swift = client.rank(PROMPT, paths, method="pointwise", reward="swift")
    assert swift.ok_mask.all() and swift.reward == "swift"
    want = client.score(PROMPT, paths, reward="swift").scores
    np.testing.assert_allclose(swift.p_yes, want, atol=ATOL)
    assert swift.best == int(np.argmax(want))
    base = client.rank(PROMPT, paths, method="pointwise")
    np.testing.assert_allclose(base.p_yes, client.score(PROMPT, paths).scores, atol=ATOL)
    assert np.abs(base.p_yes - swift.p_yes).max() > 1e-3
    pairwise = client.rank(PROMPT, paths[:3], reward="swift")
    assert pairwise.ok_mask.all() and pairwise.comparisons == 6
    with pytest.raises(RewardError) as ei:
        client.rank(PROMPT, paths, method="pointwise", reward="nope")
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT and ei.value.attempts == 1
    assert "nope" in ei.value.details


def _one_tile(client, seed=1):
    """A smooth uint8 image of exactly one tile (not resized: its floats are the PNG's pixels)."""
    t = client.info().tile_size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:t, 0:t]
    base = np.stack([x / (t - 1), y / (t - 1), 0.5 + 0 * x], axis=2) * 160 + 48
    return np.clip(base + rng.normal(0, 20, (t, t, 3)), 0, 255).astype(np.uint8)


def _png(rgb):
    buf = io.BytesIO()
    PIL.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_score_grad_differentiates_the_named_reward(client):
    rgb = _one_tile(client)
    x = (rgb.astype(np.float32) / 255.0)[None]
    swift = client.score_grad(PROMPT, x, value_range="0,1", reward="swift")
    base = client.score_grad(PROMPT, x, value_range="0,1")
    assert swift.ok_mask.all() and base.ok_mask.all(), (swift.errors, base.errors)
    assert swift.reward == "swift" and base.reward is None
    # The float path gives the p_yes that Score gives the PNG, under each reward.
    want = client.score(PROMPT, [_png(rgb)], reward=["swift", "default"])
    assert abs(swift.scores[0] - want.scores[0, 0]) <= 1e-4, (swift.scores, want.scores)
    assert abs(base.scores[0] - want.scores[0, 1]) <= 1e-4, (base.scores, want.scores)
    assert abs(swift.scores[0] - base.scores[0]) > 1e-3
    g, g0 = swift.gradients[0], base.gradients[0]
    assert np.isfinite(g).all() and np.abs(g).max() > 0 and np.abs(g - g0).max() > 0
    with pytest.raises(ValueError, match="one reward"):
        client.score_grad(PROMPT, x, reward=["swift", "default"])
    bad = client.score_grad(PROMPT, x, value_range="0,1", reward="nope")
    assert not bad.ok_mask.any() and bad.errors[0].reason == "unknown_reward"


def test_rationales_and_streams_with_rewards(client):
    paths = pngs(3)
    r = client.score(PROMPT, paths, reward=["swift", "default"], rationale={"max_tokens": 4})
    assert r.ok_mask.all(), r.errors
    assert all(x is not None and x.text and len(x.token_ids) <= 4 for x in r.rationales)
    events = list(client.stream_rationales(PROMPT, paths, reward=["swift", "default"], rationale={"max_tokens": 4}))
    final = events[-1]
    assert isinstance(final, RewardScores) and final.ok_mask.all()
    np.testing.assert_allclose(final.scores, r.scores, atol=ATOL)
    assert [x.text for x in final.rationales] == [x.text for x in r.rationales]  # greedy: the same text
    plain = client.score(PROMPT, paths, reward="swift")
    np.testing.assert_allclose(r.scores[:, 0], plain.scores, atol=ATOL)  # a rationale never changes the score


def test_async_client(rewards_server):
    paths = pngs(4)
    with RewardClient(rewards_server.target) as sync:
        want = sync.score(PROMPT, paths, reward=["strict", "swift"])
        want_rank = sync.rank(PROMPT, paths, method="pointwise", reward="strict")

    async def main():
        async with AsyncRewardClient(rewards_server.target, retry=FAST) as c:
            names = await c.reward_names()
            r = await c.score(PROMPT, paths, reward=["strict", "swift"], chunk_size=2)
            rank = await c.rank(PROMPT, paths, method="pointwise", reward="strict")
            return names, r, rank

    names, r, rank = asyncio.run(main())
    assert names == NAMES and r.ok_mask.all()
    np.testing.assert_allclose(r.scores, want.scores, atol=ATOL)
    np.testing.assert_allclose(rank.p_yes, want_rank.p_yes, atol=ATOL)
