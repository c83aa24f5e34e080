"""ScoreGrad against the real `rewarddance serve` on the bundled tiny model (random weights: the
rewards mean nothing, but they are deterministic and differentiable, which is what is checked).

Requests are built both by the client (`score_grad`, `remote_reward`) and by hand from the
proto contract (`_float_image`, raw stub), so that the client's packing is checked against the
server and not against itself. The `real_server` fixture (conftest.py) skips without a binary
that has `serve` (fails with REWARDDANCE_REQUIRE_SERVER=1).
"""
import asyncio
import io
import subprocess
import sys

import grpc
import numpy as np
import pytest
from conftest import CLIENT_ROOT, FIXTURE_IMAGES, SUBPROCESS_KW
from fake_grad import bf16_bits

from rewarddance import AsyncRewardClient, RetryPolicy, RewardClient
from rewarddance.v1 import reward_pb2 as pb
from rewarddance.v1 import reward_pb2_grpc as pb_grpc

PIL = pytest.importorskip("PIL.Image")
PROMPT = "a red fox in the snow"
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.02, max_backoff=0.2)
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture(scope="module")
def client(real_server):
    with RewardClient(real_server.target, retry=FAST, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def stub(real_server):
    with grpc.insecure_channel(real_server.target) as ch:
        yield pb_grpc.RewardServiceStub(ch)


@pytest.fixture(scope="module")
def tile(client):
    t = client.info().tile_size
    assert t > 0
    return t


def _pixels(h, w, seed):
    """uint8 (h, w, 3): a smooth gradient plus noise, so that the image is not flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0 * x], axis=2) * 160 + 48
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _png(rgb):
    buf = io.BytesIO()
    PIL.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _float_image(hwc01, layout="hwc", dtype="f32", signed=False):
    """An `Image.float` built by hand from the proto: little-endian, R, G, B."""
    x = hwc01 * 2.0 - 1.0 if signed else hwc01
    x = np.asarray(x, np.float32)
    if layout == "chw":
        x = x.transpose(2, 0, 1)
    x = np.ascontiguousarray(x)
    data = bf16_bits(x).astype("<u2").tobytes() if dtype == "bf16" else x.astype("<f4").tobytes()
    return pb.Image(float=pb.FloatImage(
        width=hwc01.shape[1], height=hwc01.shape[0],
        layout=pb.PIXEL_LAYOUT_CHW if layout == "chw" else pb.PIXEL_LAYOUT_HWC,
        dtype=pb.PIXEL_DTYPE_BF16 if dtype == "bf16" else pb.PIXEL_DTYPE_F32,
        range=pb.PIXEL_RANGE_SIGNED if signed else pb.PIXEL_RANGE_UNIT, data=data))


def _decode(f: pb.FloatImage):
    """A gradient `FloatImage` as float32, in its own layout."""
    if f.dtype == pb.PIXEL_DTYPE_BF16:
        v = (np.frombuffer(f.data, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        v = np.frombuffer(f.data, "<f4")
    shape = (3, f.height, f.width) if f.layout == pb.PIXEL_LAYOUT_CHW else (f.height, f.width, 3)
    return v.reshape(shape)


def _close(a, b, rel):
    """max |a - b| within rel * max |b| (b not all zero)."""
    scale = float(np.abs(b).max())
    assert scale > 0, "zero gradient: the test would prove nothing"
    err = float(np.abs(np.asarray(a, np.float64) - b).max())
    assert err <= rel * scale, f"max diff {err:.3g} > {rel:g} x {scale:.3g}"


def test_float_path_agrees_with_score_without_resize(client, tile):
    """An image of exactly one tile is not resized: its exact floats (png / 255) through
    ScoreGrad give the p_yes that Score gives its PNG."""
    rgb = _pixels(tile, tile, 1)
    want = client.score(PROMPT, [_png(rgb)])
    r = client.score_grad(PROMPT, (rgb.astype(np.float32) / 255.0)[None], value_range="0,1")
    assert want.ok_mask.all() and r.ok_mask.all(), (want.errors, r.errors)
    assert abs(r.scores[0] - want.scores[0]) <= 1e-4, (r.scores[0], want.scores[0])
    assert abs(r.objectives[0] - r.scores[0]) <= 1e-6  # objective p_yes is the score
    g = r.gradients[0]
    assert g.shape == (tile, tile, 3) and g.dtype == np.float32 and np.isfinite(g).all() and np.abs(g).max() > 0


def test_numpy_gradient_ascent_raises_p_yes(client, tile):
    x = (_pixels(tile, tile, 2).astype(np.float32) / 255.0)[None] * 0.5 + 0.25  # away from the clip bounds
    p = []
    for _ in range(20):
        r = client.score_grad(PROMPT, x, value_range="0,1")
        assert r.ok_mask.all(), r.errors
        p.append(r.scores[0])
        g = r.gradients
        lr = 0.01 / float(np.abs(g).max())  # normalised: no pixel moves more than 0.01 a step
        x = np.clip(x + lr * g, 0.0, 1.0)
    final = client.score_grad(PROMPT, x, value_range="0,1").scores[0]
    rises = int((np.diff(p + [final]) > 0).sum())
    # The same loop on the PyTorch reference of this checkpoint (tools/fixtures) goes from 0.920
    # to 0.9998, rising at every step.
    assert final > p[0] + 0.01 and rises >= 15, (p, final)


def test_remote_reward_with_a_torch_optimiser(client, tile):
    torch = pytest.importorskip("torch")
    from rewarddance.torch import remote_reward

    start = torch.from_numpy(_pixels(tile, tile, 3).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    theta = torch.nn.Parameter(torch.atanh((start * 2 - 1) * 0.5))  # images = tanh(theta), in [-1, 1]
    opt = torch.optim.Adam([theta], lr=0.01)
    p = []
    for _ in range(20):
        reward = remote_reward(torch.tanh(theta), [PROMPT], client)
        p.append(float(reward[0].detach()))
        opt.zero_grad()
        (-reward.mean()).backward()
        assert theta.grad is not None and torch.isfinite(theta.grad).all() and theta.grad.abs().max() > 0
        opt.step()
    with torch.no_grad():
        final = float(remote_reward(torch.tanh(theta), [PROMPT], client)[0])
    assert final > p[0] + 0.01, (p, final)  # the PyTorch reference: 0.920 to 0.998


def test_ranges_layouts_and_dtypes_agree(client, stub, tile):
    """The same pixels as [0, 1] or [-1, 1] (gradient halved), CHW or HWC (transposed), f32 or
    bf16 (gradient rounded to bf16; f32 with f32_gradients)."""
    u = np.asarray(_pixels(tile, tile, 4), np.float32) / 255.0
    u = ((bf16_bits(u).astype(np.uint32) << 16).view(np.float32))  # bf16-representable values
    cases = {"unit": _float_image(u), "signed": _float_image(u, signed=True), "chw": _float_image(u, "chw"),
             "bf16": _float_image(u, dtype="bf16")}
    items = [pb.ScoreItem(id=k, prompt=PROMPT, image=img) for k, img in cases.items()]
    resp = stub.ScoreGrad(pb.ScoreGradRequest(items=items), timeout=300)
    got = {r.id: r for r in resp.results}
    for k, r in got.items():
        assert r.WhichOneof("outcome") == "score", (k, r.error)
        assert len(r.gradients) == 1
    g = _decode(got["unit"].gradients[0])
    for k in cases:
        assert abs(got[k].score.p_yes - got["unit"].score.p_yes) <= 1e-5, k
    assert got["signed"].gradients[0].range == pb.PIXEL_RANGE_SIGNED
    _close(_decode(got["signed"].gradients[0]), g / 2.0, 1e-4)
    assert got["chw"].gradients[0].layout == pb.PIXEL_LAYOUT_CHW
    _close(_decode(got["chw"].gradients[0]).transpose(1, 2, 0), g, 1e-5)
    gb = got["bf16"].gradients[0]
    assert gb.dtype == pb.PIXEL_DTYPE_BF16 and len(gb.data) == tile * tile * 3 * 2
    assert (np.abs(_decode(gb) - g) <= 2.0 ** -8 * np.abs(g) + 1e-4 * np.abs(g).max()).all()
    resp32 = stub.ScoreGrad(pb.ScoreGradRequest(items=[items[3]], f32_gradients=True), timeout=300)
    g32 = resp32.results[0].gradients[0]
    assert g32.dtype == pb.PIXEL_DTYPE_F32
    _close(_decode(g32), g, 1e-5)


def test_an_items_gradient_does_not_depend_on_its_batch(client, stub, tile):
    u = _pixels(tile, tile, 5).astype(np.float32) / 255.0
    alone = client.score_grad(PROMPT, u[None], value_range="0,1")
    assert alone.ok_mask.all(), alone.errors
    fox = np.asarray(PIL.open(FIXTURE_IMAGES / "fox_100x60.png").convert("RGB"))
    items = [
        pb.ScoreItem(id="big", prompt="a fox", image=_float_image(fox.astype(np.float32) / 255.0, "chw")),
        pb.ScoreItem(id="pair", prompt=PROMPT, image=_float_image(_pixels(40, 70, 6) / 255.0, dtype="bf16"),
                     reference=pb.Image(encoded=_png(_pixels(tile, tile, 7)))),
        pb.ScoreItem(id="it", prompt=PROMPT, image=_float_image(u)),
        pb.ScoreItem(id="signed", prompt="a lighthouse", image=_float_image(u[::-1].copy(), signed=True)),
    ]
    resp = stub.ScoreGrad(pb.ScoreGradRequest(items=items), timeout=300)
    assert [r.WhichOneof("outcome") for r in resp.results] == ["score"] * 4, [r.error for r in resp.results]
    r = resp.results[2]
    assert (r.id, r.index) == ("it", 2)
    assert abs(r.score.p_yes - alone.scores[0]) <= 1e-5 * max(1e-3, alone.scores[0])
    _close(_decode(r.gradients[0]), alone.gradients[0], 1e-5)


def test_bad_items_fail_alone(client, stub, tile):
    u = _pixels(tile, tile, 8).astype(np.float32) / 255.0
    good = _float_image(u)
    short = pb.Image(float=pb.FloatImage(width=tile, height=tile, layout=pb.PIXEL_LAYOUT_HWC,
                                         data=good.float.data[:-4]))
    no_layout = pb.Image(float=pb.FloatImage(width=tile, height=tile, data=good.float.data))
    items = [
        pb.ScoreItem(id="0", prompt=PROMPT, image=good),
        pb.ScoreItem(id="png", prompt=PROMPT, image=pb.Image(encoded=_png(_pixels(tile, tile, 8)))),
        pb.ScoreItem(id="2", prompt=PROMPT, image=good),
        pb.ScoreItem(id="rationale", prompt=PROMPT, image=good, rationale=pb.RationaleOptions(max_tokens=4)),
        pb.ScoreItem(id="short", prompt=PROMPT, image=short),
        pb.ScoreItem(id="no_layout", prompt=PROMPT, image=no_layout),
    ]
    resp = stub.ScoreGrad(pb.ScoreGradRequest(items=items), timeout=300)
    by_id = {r.id: r for r in resp.results}
    assert [r.id for r in resp.results] == [it.id for it in items]
    for k in ("png", "rationale", "short", "no_layout"):
        assert by_id[k].WhichOneof("outcome") == "error" and by_id[k].error.code == INVALID, (k, by_id[k])
        assert by_id[k].error.message and not by_id[k].gradients
    for k in ("0", "2"):
        assert by_id[k].WhichOneof("outcome") == "score" and len(by_id[k].gradients) == 1
    np.testing.assert_array_equal(_decode(by_id["0"].gradients[0]), _decode(by_id["2"].gradients[0]))
    # Through the client: a NaN pixel is refused before sending; its neighbours are answered.
    x = np.stack([u, u, u])
    x[1, 0, 0, 0] = np.nan
    r = client.score_grad(PROMPT, x, value_range="0,1")
    assert r.ok_mask.tolist() == [True, False, True] and r.errors[1].reason == "client_invalid_input"
    np.testing.assert_array_equal(r.gradients[0], r.gradients[2])


def test_async_score_grad(real_server, client, tile):
    x = np.stack([_pixels(tile, tile, s) for s in (9, 10)]).astype(np.float32) / 255.0

    async def main():
        async with AsyncRewardClient(real_server.target, retry=FAST, timeout=300) as c:
            return await c.score_grad(PROMPT, x, objective="log_p_yes", value_range="0,1")

    got = asyncio.run(main())
    want = client.score_grad(PROMPT, x, objective="log_p_yes", value_range="0,1")
    assert got.ok_mask.all() and want.ok_mask.all(), (got.errors, want.errors)
    np.testing.assert_allclose(got.objectives, want.objectives, rtol=1e-6)
    np.testing.assert_allclose(got.objectives, np.log(want.scores), rtol=1e-4)
    _close(got.gradients, want.gradients, 1e-5)


def test_refl_example_runs(real_server):
    pytest.importorskip("torch")
    p = subprocess.run([sys.executable, str(CLIENT_ROOT / "examples" / "refl_step.py"), "--server",
                        real_server.target, "--steps", "2"], capture_output=True, text=True, timeout=600,
                       **SUBPROCESS_KW)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "step 2:" in p.stdout and "after 2 steps" in p.stdout
