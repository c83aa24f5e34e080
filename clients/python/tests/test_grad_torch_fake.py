"""Torch inputs of `score_grad` and the autograd Function `rewarddance.torch.remote_reward`,
against the fake server's analytic reward (fake_grad.py). Skipped without torch."""
import warnings

import numpy as np
import pytest
from fake_grad import bf16_bits, expected

from rewarddance import AsyncRewardClient, RewardClient, _core, _grad
from rewarddance.v1 import reward_pb2 as pb

torch = pytest.importorskip("torch")
from rewarddance.torch import RewardItemsFailed, remote_reward  # noqa: E402


def images(n=3, h=5, w=7, seed=0, dtype=None):
    """(n, 3, h, w) in [-1, 1], what a VAE decoder gives."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g, dtype=torch.float64) * 2 - 1).to(dtype or torch.float32)


@pytest.fixture
def client(fake):
    with RewardClient(fake.target) as c:
        yield c


def test_chw_signed_is_the_default(fake, client):
    x = images()
    r = client.score_grad("p", x)
    f = fake.service.grad_requests[0].items[2].image.float
    assert (f.layout, f.range, f.dtype) == (pb.PIXEL_LAYOUT_CHW, pb.PIXEL_RANGE_SIGNED, pb.PIXEL_DTYPE_F32)
    assert f.data == x[2].numpy().astype("<f4").tobytes()
    p, _, g = expected(x.numpy(), "chw", "-1,1")
    np.testing.assert_allclose(r.scores, p, rtol=1e-12)
    assert isinstance(r.gradients, torch.Tensor) and r.gradients.shape == x.shape
    assert r.gradients.dtype == torch.float32 and r.gradients.device == x.device
    np.testing.assert_allclose(r.gradients.numpy(), g, rtol=1e-6, atol=1e-12)


def test_bf16_goes_as_bf16_and_comes_back_as_bf16(fake, client):
    x = images(dtype=torch.bfloat16)
    r = client.score_grad("p", x, objective="logit_margin")
    f = fake.service.grad_requests[0].items[0].image.float
    assert f.dtype == pb.PIXEL_DTYPE_BF16 and f.data == x[0].view(torch.int16).numpy().astype("<i2").tobytes()
    assert r.gradients.dtype == torch.bfloat16
    _, obj, g = expected(x.float().numpy(), "chw", "-1,1", pb.OBJECTIVE_LOGIT_MARGIN)
    np.testing.assert_allclose(r.objectives, obj, rtol=1e-12)
    # The fake rounds its f32 gradient to bf16 (nearest even); the client must not change a bit.
    want_bits = bf16_bits(g.astype(np.float32))
    np.testing.assert_array_equal(r.gradients.view(torch.int16).numpy().view(np.uint16), want_bits)
    r32 = client.score_grad("p", x, objective="logit_margin", f32_gradients=True)
    assert fake.service.grad_requests[1].f32_gradients and r32.gradients.dtype == torch.float32
    np.testing.assert_allclose(r32.gradients.numpy(), g, rtol=1e-6, atol=1e-12)


def test_requests_leave_room_for_f32_answers_to_bf16(fake):
    """bf16 in, f32 gradients out: answers are twice their request, and both must fit the
    server's max_grad_message_bytes, so requests get half of it."""
    fake.service.max_grad_message_bytes = 8000  # 16 x 16 x 3 bf16 = 1536 bytes an item
    x = images(8, 16, 16, dtype=torch.bfloat16)
    with RewardClient(fake.target) as c:
        same = c.score_grad("p", x)
        assert fake.service.calls == [4, 4]
        fake.service.calls.clear()
        f32 = c.score_grad("p", x, f32_gradients=True)
    assert fake.service.calls == [2, 2, 2, 2] and same.ok_mask.all() and f32.ok_mask.all()
    # Without Info (an explicit chunk size never costs a call): the default message limit.
    assert _grad.request_budget(None, _core.DEFAULT_MAX_MESSAGE_BYTES, 2) == _core.DEFAULT_MAX_MESSAGE_BYTES // 2


def test_hwc_views_f64_and_grad_requiring_tensors(client):
    x = images(2)
    want = client.score_grad("p", x)
    hwc = x.permute(0, 2, 3, 1)  # a non-contiguous (B, H, W, 3) view
    r = client.score_grad("p", hwc, layout="hwc")
    torch.testing.assert_close(r.gradients, want.gradients.permute(0, 2, 3, 1), rtol=0, atol=0)
    r64 = client.score_grad("p", x.double().requires_grad_())
    assert r64.gradients.dtype == torch.float64 and not r64.gradients.requires_grad
    torch.testing.assert_close(r64.gradients.float(), want.gradients, rtol=0, atol=0)
    u = client.score_grad("p", (x + 1) / 2, value_range="0,1")
    torch.testing.assert_close(u.gradients / 2, want.gradients, rtol=1e-5, atol=1e-9)


def test_remote_reward_backward_matches_finite_differences(client):
    x = images(2, 3, 4, dtype=torch.float64).requires_grad_()
    for objective in ("p_yes", "log_p_yes", "logit_margin"):
        # The values travel as f32: eps 1e-3 keeps the rounding (1e-7) far below the tolerance.
        assert torch.autograd.gradcheck(lambda t: remote_reward(t, "p", client, objective), (x,), eps=1e-3,
                                        atol=1e-5, rtol=1e-3)


def test_remote_reward_weights_by_grad_output(client):
    x = images(3).requires_grad_()
    rewards = remote_reward(x, ["a", "b", "c"], client, "log_p_yes")
    r = client.score_grad(["a", "b", "c"], x, objective="log_p_yes")
    assert rewards.shape == (3,) and rewards.dtype == torch.float32 and rewards.requires_grad
    np.testing.assert_allclose(rewards.detach().numpy(), r.objectives, rtol=1e-6)
    w = torch.tensor([1.0, -2.0, 0.5])
    (w * rewards).sum().backward()
    torch.testing.assert_close(x.grad, w[:, None, None, None] * r.gradients)


def test_remote_reward_keeps_dtype_through_a_decoder(client):
    torch.manual_seed(0)
    dec = torch.nn.Sequential(torch.nn.Linear(4, 3 * 4 * 6), torch.nn.Tanh()).to(torch.bfloat16)
    z = torch.randn(2, 4, dtype=torch.bfloat16)
    x = dec(z).reshape(2, 3, 4, 6)
    rewards = remote_reward(x, "p", client, f32_gradients=True)
    assert rewards.dtype == torch.bfloat16
    (-rewards.mean()).backward()
    for p in dec.parameters():
        assert p.grad is not None and p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_remote_reward_failed_items(client):
    x = images(3)
    x[1, 0, 0, 0] = float("nan")
    x.requires_grad_()
    with pytest.raises(RewardItemsFailed) as ei:
        remote_reward(x, "p", client)
    assert ei.value.result.ok_mask.tolist() == [True, False, True] and ei.value.errors[0][0] == 1
    assert "1 of 3 items" in str(ei.value)
    with pytest.warns(RuntimeWarning, match="1 of 3 items got no reward"):
        rewards, result = remote_reward(x, "p", client, on_error="zero", return_result=True)
    assert result.ok_mask.tolist() == [True, False, True] and rewards[1] == 0 and rewards[0] > 0
    rewards.sum().backward()
    assert not x.grad[1].any() and x.grad[0].any() and x.grad[2].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remote_reward(images(2), "p", client)  # no failure, no warning
    with pytest.raises(ValueError, match="on_error"):
        remote_reward(x, "p", client, on_error="skip")


def test_remote_reward_needs_a_sync_client(fake):
    with pytest.raises(TypeError, match="synchronous"):
        remote_reward(images(1), "p", AsyncRewardClient(fake.target))


def test_remote_reward_trains_on_the_named_reward(fake, client):
    fake.service.rewards = ["align", "aesthetic"]  # fake reward 1: the logit shifted by REWARD_OFFSET
    x = images(2).requires_grad_()
    rewards, result = remote_reward(x, ["a", "b"], client, reward="aesthetic", return_result=True)
    assert [list(it.rewards) for it in fake.service.grad_requests[-1].items] == [["aesthetic"]] * 2
    assert result.reward == "aesthetic"
    p, _, g = expected(x.detach().numpy(), "chw", "-1,1", reward=1)
    np.testing.assert_allclose(rewards.detach().numpy(), p, rtol=1e-6)
    rewards.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="one reward"):
        remote_reward(x, "p", client, reward=["align", "aesthetic"])
