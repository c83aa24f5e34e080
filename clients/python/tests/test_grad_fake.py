"""`score_grad` against the fake server's analytic reward (fake_grad.py), numpy inputs: what goes
on the wire (raw little-endian floats, layout, range), what comes back (gradients in the input's
layout and dtype), item errors, batching, retries, async. Torch inputs: test_grad_torch_fake.py."""
import asyncio
import subprocess
import sys

import grpc
import numpy as np
import pytest
from conftest import SUBPROCESS_KW
from fake_grad import analytic, expected
from fake_server import FakeRewardService, FakeServer

from rewarddance import AsyncRewardClient, RetryPolicy, RewardClient, RewardError
from rewarddance.v1 import reward_pb2 as pb

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)
OBJECTIVES = {"p_yes": pb.OBJECTIVE_P_YES, "log_p_yes": pb.OBJECTIVE_LOG_P_YES,
              "logit_margin": pb.OBJECTIVE_LOGIT_MARGIN}


def batch(n=3, h=5, w=7, seed=0, dtype=np.float32):
    """(n, h, w, 3) values in [0, 1]; h != w so that a swapped axis cannot pass."""
    return np.random.default_rng(seed).random((n, h, w, 3)).astype(dtype)


@pytest.fixture
def client(fake):
    with RewardClient(fake.target, retry=FAST) as c:
        yield c


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_numpy_hwc_matches_the_analytic_reward(fake, client, objective):
    x = batch()
    r = client.score_grad(["a", "b", "c"], x, objective=objective)
    p, obj, g = expected(x, "hwc", "0,1", OBJECTIVES[objective])
    assert r.ok_mask.all() and r.errors == [None] * 3 and r.objective == objective
    np.testing.assert_allclose(r.scores, p, rtol=1e-12)
    np.testing.assert_allclose(r.objectives, obj, rtol=1e-12)
    assert isinstance(r.gradients, np.ndarray) and r.gradients.shape == x.shape and r.gradients.dtype == np.float32
    np.testing.assert_allclose(r.gradients, g, rtol=1e-6, atol=1e-9 * np.abs(g).max())
    req = fake.service.grad_requests[0]
    assert req.objective == OBJECTIVES[objective] and not req.f32_gradients
    assert [it.id for it in req.items] == ["0", "1", "2"] and [it.prompt for it in req.items] == ["a", "b", "c"]


def test_the_wire_is_raw_little_endian_floats(fake, client):
    x = batch(2, 4, 6)
    client.score_grad("p", x)
    client.score_grad("p", np.ascontiguousarray(x.transpose(0, 3, 1, 2)), layout="chw", value_range="-1,1")
    hwc, chw = (req.items[1].image.float for req in fake.service.grad_requests)
    assert (hwc.width, hwc.height) == (6, 4) and (chw.width, chw.height) == (6, 4)
    assert hwc.layout == pb.PIXEL_LAYOUT_HWC and chw.layout == pb.PIXEL_LAYOUT_CHW
    assert hwc.dtype == chw.dtype == pb.PIXEL_DTYPE_F32
    assert hwc.range == pb.PIXEL_RANGE_UNIT and chw.range == pb.PIXEL_RANGE_SIGNED
    assert hwc.data == x[1].astype("<f4").tobytes()
    assert chw.data == x[1].transpose(2, 0, 1).astype("<f4").tobytes()


def test_layouts_agree(client):
    x = batch(2, 4, 6)
    a = client.score_grad("p", x)
    b = client.score_grad("p", x.transpose(0, 3, 1, 2), layout="chw")  # a non-contiguous view
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.gradients, b.gradients.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="layout='chw'"):
        client.score_grad("p", x.transpose(0, 3, 1, 2))  # (B, 3, H, W) read as HWC: 6 channels


def test_signed_range_halves_the_gradient(client):
    u = batch(2)
    a = client.score_grad("p", u, value_range="0,1")
    b = client.score_grad("p", u * 2.0 - 1.0, value_range="-1,1")
    c = client.score_grad("p", u * 2.0 - 1.0, value_range=(-1, 1))
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-6)
    np.testing.assert_allclose(b.gradients, a.gradients / 2.0, rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(c.gradients, b.gradients)
    for bad in ("0,255", (0, 255), "signed"):
        with pytest.raises(ValueError, match="value_range"):
            client.score_grad("p", u, value_range=bad)


def test_dtypes_and_bad_arguments(client):
    x64 = batch(2, dtype=np.float64)
    r = client.score_grad("p", x64)
    assert r.gradients.dtype == np.float64
    assert client.score_grad("p", x64, f32_gradients=True).gradients.dtype == np.float32
    assert client.score_grad("p", x64.astype(np.float16)).gradients.dtype == np.float16
    with pytest.raises(ValueError, match="float pixels"):
        client.score_grad("p", (x64 * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="4-D"):
        client.score_grad("p", x64[0])
    with pytest.raises(TypeError, match="4-D batch"):
        client.score_grad("p", list(x64))
    with pytest.raises(ValueError, match="objective"):
        client.score_grad("p", x64, objective="reward")


def test_item_errors_fail_alone(fake, client):
    x = batch(5)
    x[1, 0, 0, 0] = np.nan
    r = client.score_grad(["p", "p", "p", "", "p"], x, references=[None, None, None, None, b"junk"])
    assert r.ok_mask.tolist() == [True, False, True, False, False]
    assert r.errors[1].reason == "client_invalid_input" and "NaN" in r.errors[1].message
    assert r.errors[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and r.errors[3].reason == "invalid_input"
    assert r.errors[4].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert np.isnan(r.scores[[1, 3, 4]]).all() and np.isnan(r.objectives[[1, 3, 4]]).all()
    assert not r.gradients[[1, 3, 4]].any() and r.num_failed == 3
    p, _, g = expected(x[[0, 2]], "hwc", "0,1")
    np.testing.assert_allclose(r.scores[[0, 2]], p, rtol=1e-12)
    np.testing.assert_allclose(r.gradients[[0, 2]], g, rtol=1e-6, atol=1e-12)
    # The client's own failure is never sent; ids stay the input positions.
    assert [it.id for it in fake.service.grad_requests[0].items] == ["0", "2", "3", "4"]
    # Nothing to send at all: no ScoreGrad call, every item failed.
    r = client.score_grad("p", np.full((2, 4, 4, 3), np.inf, np.float32))
    assert not r.ok_mask.any() and len(fake.service.grad_requests) == 1 and not r.gradients.any()


def test_pairwise_reference_is_a_constant(client):
    x = batch(2)
    gray = np.full((3, 3, 3), 200, np.uint8)
    r = client.score_grad("p", x, references=gray)
    assert r.ok_mask.all(), r.errors
    for i in range(2):
        p, _, g = analytic(x[i].transpose(2, 0, 1).astype(np.float64), pb.OBJECTIVE_P_YES, 0.5 - 200 / 255)
        assert r.scores[i] == pytest.approx(p, rel=1e-12)
        np.testing.assert_allclose(r.gradients[i], g.transpose(1, 2, 0), rtol=1e-6, atol=1e-12)


def test_batches_by_items_and_bytes_in_input_order(fake, client):
    fake.service.max_items = 3
    x = batch(8, 16, 16)
    fake.service.delay = lambda req: 0.05 * (10 - int(req.items[0].id)) / 10  # later chunks answer first
    r = client.score_grad("p", x)
    assert sorted(fake.service.calls) == [2, 3, 3]
    np.testing.assert_allclose(r.scores, expected(x, "hwc", "0,1")[0], rtol=1e-12)
    # 16 x 16 x 3 f32 = 3 KiB of pixels an item: ScoreGrad's own limit of 8000 bytes allows 2 per
    # request; Score's (max_message_bytes) does not apply to it.
    fake.service.max_grad_message_bytes = 8000
    fake.service.max_message_bytes = 1000
    fake.service.calls.clear()
    with RewardClient(fake.target) as fresh:
        r2 = fresh.score_grad("p", x)
    assert fake.service.calls == [2, 2, 2, 2] and r2.ok_mask.all()
    np.testing.assert_array_equal(r2.gradients, r.gradients)


def test_retried_like_score(fake, client):
    fake.service.fail_next = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    r = client.score_grad("p", batch(2))
    assert r.ok_mask.all() and len(fake.service.calls) == 3
    fake.service.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
    with pytest.raises(RewardError) as ei:
        client.score_grad("p", batch(2))
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT and ei.value.attempts == 1
    fake.service.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
    r = client.score_grad("p", batch(2), mask_call_errors=True)
    assert not r.ok_mask.any() and r.errors[0].reason == "call_failed" and not r.gradients.any()


class _Misbehaving(FakeRewardService):
    """Answers item 1 with a gradient of the wrong size."""

    def ScoreGrad(self, request, context):
        resp = super().ScoreGrad(request, context)
        g = resp.results[1].gradients[0]
        g.width += 1
        return resp


def test_a_malformed_gradient_is_that_items_error():
    with FakeServer(_Misbehaving()) as s, RewardClient(s.target) as c:
        r = c.score_grad("p", batch(3))
    assert r.ok_mask.tolist() == [True, False, True]
    assert r.errors[1].reason == "bad_response" and "gradient" in r.errors[1].message
    assert np.isnan(r.scores[1]) and not r.gradients[1].any() and r.gradients[0].any()


def test_async_mirrors_sync(fake):
    x = batch(5)
    with RewardClient(fake.target) as c:
        want = c.score_grad("p", x, objective="log_p_yes", chunk_size=2)

    async def main():
        async with AsyncRewardClient(fake.target) as c:
            return await c.score_grad("p", x, objective="log_p_yes", chunk_size=2)

    got = asyncio.run(main())
    assert got.ok_mask.all() and got.objective == "log_p_yes"
    np.testing.assert_array_equal(got.objectives, want.objectives)
    np.testing.assert_array_equal(got.gradients, want.gradients)


def test_importing_rewarddance_never_imports_torch():
    # Without torch (an import of it fails): rewarddance and rewarddance.torch import, and only
    # calling remote_reward says what is missing.
    code = ("import sys; sys.modules['torch'] = None\n"
            "import rewarddance, rewarddance.torch as rt\n"
            "try:\n    rt.remote_reward(None, 'p', None)\nexcept ImportError as e:\n    print('ImportError', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, **SUBPROCESS_KW)
    assert p.returncode == 0, p.stderr
    assert "ImportError" in p.stdout and "needs PyTorch" in p.stdout
    p = subprocess.run([sys.executable, "-c", "import sys, rewarddance; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=60, **SUBPROCESS_KW)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stdout + p.stderr
