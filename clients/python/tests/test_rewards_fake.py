"""Named rewards (`reward=`) against the in-process fake server (tests/fake_server.py: reward k of
its list scores p ** (k + 1)): the names on the wire, the items x rewards matrix assembled from
`ItemResult.rewards` in order, per-cell and per-item errors, unknown and repeated names, a server
that predates named rewards, rationales and streams, Rank and ScoreGrad, sync and async. Runs
without the real server."""
import asyncio

import grpc
import numpy as np
import pytest
from fake_grad import expected as grad_expected
from fake_server import FakeRewardService, FakeServer

from rewarddance import (AsyncRewardClient, RationaleDelta, RetryPolicy, RewardClient, RewardError, RewardScores,
                         ScoreResult, _core)
from rewarddance.v1 import reward_pb2 as pb

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)
REWARDS = ["align", "aesthetic", "ocr"]  # fake rewards 0, 1, 2: p, p ** 2, p ** 3
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def imgs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8 + i, 9, 3), dtype=np.uint8) for i in range(n)]


def plain(images):
    return np.array([im.astype(np.float64).mean() / 255.0 for im in images])


def under(images, name):
    return plain(images) ** (REWARDS.index(name) + 1)


@pytest.fixture
def fake():
    service = FakeRewardService()
    service.rewards = list(REWARDS)
    with FakeServer(service) as s:
        yield s


@pytest.fixture
def client(fake):
    with RewardClient(fake.target, retry=FAST) as c:
        yield c


def test_info_lists_the_rewards(client):
    assert client.reward_names() == REWARDS
    info = client.info()
    assert [r.name for r in info.rewards] == REWARDS
    assert not info.rewards[0].HasField("adapter") and info.rewards[1].adapter.rank == 8


def test_names_go_on_every_item_and_none_by_default(fake, client):
    images = imgs(3)
    client.score("p", images)
    client.score("p", images, reward="ocr")
    client.score("p", images, reward=["ocr", "align"])
    client.score("p", images, reward=("aesthetic",))
    sent = [[list(it.rewards) for it in req.items] for req in fake.service.score_requests]
    assert sent == [[[]] * 3, [["ocr"]] * 3, [["ocr", "align"]] * 3, [["aesthetic"]] * 3]


def test_the_matrix_follows_the_order_asked(client):
    images = imgs(5)
    r = client.score("p", images, reward=["ocr", "align", "aesthetic"])
    assert isinstance(r, RewardScores) and r.rewards == ("ocr", "align", "aesthetic")
    scores, ok, errors = r  # unpacks like ScoreResult
    assert scores.shape == ok.shape == (5, 3) and ok.all() and r.num_failed == 0
    assert errors == [[None] * 3] * 5
    for k, name in enumerate(r.rewards):
        np.testing.assert_allclose(scores[:, k], under(images, name), rtol=1e-12)
        np.testing.assert_allclose(r.p_yes_vocab[:, k], under(images, name) / 2, rtol=1e-12)
        assert (r.logit_yes[:, k] == REWARDS.index(name)).all()  # the fake's marker: its index
    assert r.model_id == "fake" and len(r.timings) == 5 and r.rationales == [None] * 5
    # One column as a ScoreResult, equal to scoring with that one reward.
    col = r.reward("align")
    assert isinstance(col, ScoreResult) and col.reward == "align" and r.column("align") == 1
    one = client.score("p", images, reward="align")
    assert isinstance(one, ScoreResult) and one.reward == "align"
    np.testing.assert_array_equal(col.scores, one.scores)
    np.testing.assert_array_equal(one.scores, client.score("p", images).scores)  # align is the first
    np.testing.assert_array_equal(r.reward(-1).scores, r.scores[:, 2])
    with pytest.raises(KeyError, match="nope"):
        r.reward("nope")
    assert client.score("p", images).reward is None


def test_a_list_of_one_is_a_matrix_of_one_column(client):
    images = imgs(2)
    r = client.score("p", images, reward=["ocr"])
    assert isinstance(r, RewardScores) and r.scores.shape == (2, 1)
    np.testing.assert_allclose(r.scores[:, 0], under(images, "ocr"), rtol=1e-12)


def test_a_failed_cell_leaves_its_row_and_column_alone(fake, client):
    images = [np.full((4, 4, 3), v, np.uint8) for v in (200, 60, 220, 30)]  # p ~ .78 .24 .86 .12
    fake.service.failing_rewards = {"aesthetic": 0.5}  # fails the dark items under aesthetic only
    r = client.score("p", images, reward=["align", "aesthetic", "ocr"])
    assert r.ok_mask.tolist() == [[True, True, True], [True, False, True], [True, True, True], [True, False, True]]
    for i in (1, 3):
        assert np.isnan(r.scores[i, 1]) and r.errors[i][0] is None and r.errors[i][2] is None
        e = r.errors[i][1]
        assert e.status_code == grpc.StatusCode.INTERNAL and e.reason == "internal" and "aesthetic" in e.message
    np.testing.assert_allclose(r.scores[:, 2], under(images, "ocr"), rtol=1e-12)
    assert r.num_failed == 2
    # With the failing reward first, the item's own outcome (its first reward's) is the error:
    # the single-reward result sees it as the item's error.
    one = client.score("p", images, reward="aesthetic")
    assert one.ok_mask.tolist() == [True, False, True, False] and one.errors[1].reason == "internal"
    first = client.score("p", images, reward=["aesthetic", "align"])
    assert first.ok_mask[:, 1].all() and first.ok_mask[:, 0].tolist() == [True, False, True, False]


def test_an_unknown_or_repeated_name_fails_the_items_under_every_name(client):
    images = imgs(3)
    r = client.score("p", images, reward=["align", "nope"])
    assert not r.ok_mask.any() and np.isnan(r.scores).all()
    for row in r.errors:
        assert [(e.code, e.reason) for e in row] == [(INVALID, "unknown_reward")] * 2
        assert "nope" in row[1].message
    one = client.score("p", images, reward="nope")  # a per-item error, never an exception
    assert not one.ok_mask.any() and {e.reason for e in one.errors} == {"unknown_reward"}


def test_names_checked_on_the_client(fake, client):
    for bad, exc, match in [(["align", "align"], ValueError, "named twice"), ([], ValueError, "names no reward"),
                            ("", ValueError, "non-empty"), (["align", ""], ValueError, "non-empty"),
                            (["align", 3], TypeError, "str"), (3, TypeError, "reward")]:
        with pytest.raises(exc, match=match):
            client.score("p", imgs(1), reward=bad)
        with pytest.raises(exc, match=match):
            client.stream_rationales("p", imgs(1), reward=bad)
    assert fake.service.score_requests == []  # nothing was sent


def test_client_errors_and_failed_calls_fill_the_row(fake, client):
    images = imgs(4)
    images[2] = b"not an image"
    images[3] = np.zeros((0, 3, 3), np.uint8)
    r = client.score("p", images, reward=["ocr", "align"])
    assert r.ok_mask.tolist() == [[True, True], [True, True], [False, False], [False, False]]
    assert [e.reason for e in r.errors[2]] == ["invalid_image"] * 2  # the server's item error
    assert [e.reason for e in r.errors[3]] == ["client_invalid_input"] * 2  # never sent
    assert len(fake.service.score_requests[0].items) == 3
    fake.service.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
    r = client.score("p", imgs(4), reward=["ocr", "align"], chunk_size=2, mask_call_errors=True)
    failed = [i for i in range(4) if not r.ok_mask[i].any()]
    assert len(failed) == 2 and r.ok_mask.sum() == 4
    assert all(e.reason == "call_failed" for i in failed for e in r.errors[i])


def test_chunks_come_back_in_input_order(fake, client):
    images = imgs(7)
    fake.service.delay = lambda req: 0.05 * (10 - int(req.items[0].id)) / 10  # later chunks answer first
    r = client.score("p", images, reward=["aesthetic", "align"], chunk_size=2)
    assert sorted(fake.service.calls) == [1, 2, 2, 2] and r.ok_mask.all()
    np.testing.assert_allclose(r.scores, np.stack([under(images, "aesthetic"), under(images, "align")], 1),
                               rtol=1e-12)


class _Shuffled(FakeRewardService):
    """Answers item 1's per-reward outcomes in the wrong order, item 2's with one missing."""

    def Score(self, request, context):
        resp = super().Score(request, context)
        outs = list(resp.results[1].rewards)
        del resp.results[1].rewards[:]
        resp.results[1].rewards.extend(outs[::-1])
        del resp.results[2].rewards[-1]
        return resp


def test_outcomes_that_break_the_contract_are_bad_responses():
    service = _Shuffled()
    service.rewards = list(REWARDS)
    with FakeServer(service) as s, RewardClient(s.target) as c:
        r = c.score("p", imgs(3), reward=["ocr", "align"])
    assert r.ok_mask.tolist() == [[True, True], [False, False], [False, False]]
    assert all(e.reason == "bad_response" for i in (1, 2) for e in r.errors[i])
    assert "['align', 'ocr']" in r.errors[1][0].message


def test_a_server_without_named_rewards_never_passes_its_scores_off(fake, client):
    fake.service.named_rewards = False
    assert client.reward_names(refresh=True) == []
    images = imgs(2)
    images.append(b"junk")
    for reward in ("aesthetic", ["aesthetic", "ocr"]):
        r = client.score("p", images, reward=reward)
        assert not np.asarray(r.ok_mask).any()
        rows = r.errors if isinstance(r, RewardScores) else [[e] for e in r.errors]
        assert all(e.reason == "bad_response" and "named rewards" in e.message for row in rows[:2] for e in row)
        assert all(e.reason == "invalid_image" for e in rows[2])  # an item error stays the item's
    assert client.score("p", images[:2]).ok_mask.all()


def test_rationales_come_with_the_first_reward(client):
    images = [np.full((4, 4, 3), v, np.uint8) for v in (200, 60)]
    r = client.score("p", images, reward=["ocr", "align"], rationale={"max_tokens": 3})
    assert [x.text for x in r.rationales] == ["yes t1 t2", "no t1 t2"]
    assert r.reward("ocr").rationales == r.rationales and r.reward("align").rationales == [None, None]


def test_rationale_stream_ends_with_the_matrix(fake, client):
    images = imgs(5)
    events = list(client.stream_rationales("p", images, reward=["aesthetic", "ocr"], chunk_size=2,
                                           rationale={"max_tokens": 2}))
    final = events[-1]
    assert isinstance(final, RewardScores) and final.rewards == ("aesthetic", "ocr") and final.ok_mask.all()
    assert all(isinstance(e, RationaleDelta) for e in events[:-1]) and len(events) == 11
    np.testing.assert_allclose(final.scores[:, 1], under(images, "ocr"), rtol=1e-12)
    assert [list(it.rewards) for req in fake.service.score_requests for it in req.items] == [["aesthetic", "ocr"]] * 5
    last = list(client.stream_rationales("p", images, reward="ocr", rationale=True))[-1]
    assert isinstance(last, ScoreResult) and last.reward == "ocr"
    np.testing.assert_allclose(last.scores, final.scores[:, 1], rtol=1e-12)


def test_rank_by_a_reward(fake, client):
    images = imgs(4)
    r = client.rank("p", images, method="pointwise", reward="ocr")
    assert fake.service.rank_requests[-1].reward == "ocr" and r.reward == "ocr"
    np.testing.assert_allclose(r.p_yes, under(images, "ocr"), rtol=1e-12)
    assert r.order == list(np.argsort(-under(images, "ocr"), kind="stable"))
    base = client.rank("p", images, method="pointwise")
    assert fake.service.rank_requests[-1].reward == "" and base.reward is None
    np.testing.assert_allclose(base.p_yes, plain(images), rtol=1e-12)
    with pytest.raises(RewardError) as ei:
        client.rank("p", images, method="pointwise", reward="nope")
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT and "nope" in ei.value.details
    n = len(fake.service.rank_requests)
    with pytest.raises(ValueError, match="one reward"):
        client.rank("p", images, method="pointwise", reward=["ocr", "align"])
    assert len(fake.service.rank_requests) == n


def test_score_grad_takes_one_reward(fake, client):
    x = np.random.default_rng(0).random((3, 5, 7, 3)).astype(np.float32)
    r = client.score_grad("p", x, reward="aesthetic")
    assert [list(it.rewards) for it in fake.service.grad_requests[-1].items] == [["aesthetic"]] * 3
    assert r.ok_mask.all() and r.reward == "aesthetic"
    p, obj, g = grad_expected(x, "hwc", "0,1", reward=1)
    np.testing.assert_allclose(r.scores, p, rtol=1e-12)
    np.testing.assert_allclose(r.gradients, g, rtol=1e-6, atol=1e-9 * np.abs(g).max())
    base = client.score_grad("p", x)
    assert [list(it.rewards) for it in fake.service.grad_requests[-1].items] == [[]] * 3 and base.reward is None
    np.testing.assert_allclose(base.scores, grad_expected(x, "hwc", "0,1")[0], rtol=1e-12)
    assert client.score_grad("p", x, reward=["ocr"]).reward == "ocr"  # a list of one name is one name
    sent = len(fake.service.grad_requests)
    with pytest.raises(ValueError, match="ScoreGrad takes one reward"):
        client.score_grad("p", x, reward=["ocr", "align"])
    with pytest.raises(ValueError, match="named twice"):
        client.score_grad("p", x, reward=["ocr", "ocr"])
    assert len(fake.service.grad_requests) == sent
    bad = client.score_grad("p", x, reward="nope")
    assert not bad.ok_mask.any() and {e.reason for e in bad.errors} == {"unknown_reward"} and not bad.gradients.any()


def test_prepare_puts_the_names_on_each_item():
    prep = _core.prepare(["a", "b"], imgs(2), rewards=["x", "y"])
    assert [list(it.rewards) for it in prep.items] == [["x", "y"]] * 2
    assert _core.parse_reward(None) == ([], False)
    assert _core.parse_reward("x") == (["x"], False)
    assert _core.parse_reward(("x", "y")) == (["x", "y"], True)
    assert _core.parse_one_reward(["x"], "Rank") == "x" and _core.parse_one_reward(None, "Rank") is None


def test_async_mirrors_sync(fake):
    images = imgs(5)
    x = np.random.default_rng(1).random((2, 4, 6, 3)).astype(np.float32)
    with RewardClient(fake.target) as c:
        want = c.score("p", images, reward=["ocr", "align"], chunk_size=2)

    async def main():
        async with AsyncRewardClient(fake.target) as c:
            names = await c.reward_names()
            got = await c.score("p", images, reward=["ocr", "align"], chunk_size=2)
            one = await c.score("p", images, reward="aesthetic")
            rank = await c.rank("p", images, method="pointwise", reward="aesthetic")
            grad = await c.score_grad("p", x, reward="ocr")
            events = [ev async for ev in c.stream_rationales("p", images, reward=["ocr", "align"])]
            with pytest.raises(ValueError, match="named twice"):
                c.stream_rationales("p", images, reward=["ocr", "ocr"])
            with pytest.raises(ValueError, match="one reward"):
                await c.score_grad("p", x, reward=["ocr", "align"])
            return names, got, one, rank, grad, events[-1]

    names, got, one, rank, grad, streamed = asyncio.run(main())
    assert names == REWARDS
    assert isinstance(got, RewardScores) and got.rewards == ("ocr", "align")
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(streamed.scores, want.scores)
    assert one.reward == "aesthetic"
    np.testing.assert_allclose(one.scores, under(images, "aesthetic"), rtol=1e-12)
    assert rank.reward == "aesthetic" and fake.service.rank_requests[-1].reward == "aesthetic"
    assert grad.reward == "ocr" and [list(it.rewards) for it in fake.service.grad_requests[-1].items] == [["ocr"]] * 2
    np.testing.assert_allclose(grad.scores, grad_expected(x, "hwc", "0,1", reward=2)[0], rtol=1e-12)
