"""Against the real `rewarddance serve` on the bundled tiny model (random weights: the scores
mean nothing, but they are deterministic, which is what these tests compare).

The session fixture `real_server` (conftest.py) starts the binary from $REWARDDANCE_BIN or
<repo>/target/debug/rewarddance; these tests skip when it has no `serve` subcommand, unless
REWARDDANCE_REQUIRE_SERVER=1 (ci.sh sets it), which turns that into a failure.
"""
import asyncio
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from conftest import CLIENT_ROOT, FIXTURE_IMAGES, SUBPROCESS_KW, free_port, start_real_server

from rewarddance import AsyncRewardClient, RetryPolicy, RewardClient, RewardError

PIL = pytest.importorskip("PIL.Image")
PROMPT = "a red fox in the snow"
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.02, max_backoff=0.2)


@pytest.fixture(scope="module")
def client(real_server):
    with RewardClient(real_server.target, retry=FAST, timeout=60) as c:
        yield c


def pngs():
    return sorted(FIXTURE_IMAGES.glob("*.png"))


def test_health_and_info(client):
    assert client.health()
    assert client.health_status("rewarddance.v1.RewardService")[client.targets[0]] == "SERVING"
    info = client.info()
    assert info.model_id
    assert info.limits.max_items_per_request > 0
    assert info.limits.max_message_bytes > 0


def test_input_kinds_agree(client):
    """Path, bytes, PIL, numpy uint8 and numpy float of the same PNG give the server the same
    pixels, so the same score (the server decodes PNGs exactly like Pillow)."""
    paths = pngs()
    kinds = {
        "path": [str(p) for p in paths],
        "bytes": [p.read_bytes() for p in paths],
        "pil": [PIL.open(p) for p in paths],
        "numpy_u8": [np.asarray(PIL.open(p).convert("RGBA")) for p in paths],  # alpha flattened by the client
        "numpy_f32": [np.asarray(PIL.open(p).convert("RGBA")).astype(np.float32) / 255.0 for p in paths],
    }
    try:
        import torch

        kinds["torch_01"] = [torch.from_numpy(np.asarray(PIL.open(p).convert("RGB")).copy()).permute(2, 0, 1)
                             .float() / 255.0 for p in paths if PIL.open(p).mode not in ("RGBA", "P")]
        kinds["torch_11"] = [t * 2.0 - 1.0 for t in kinds["torch_01"]]
    except ImportError:
        pass
    results = {k: client.score(PROMPT, v) for k, v in kinds.items()}
    ref = results["path"]
    assert ref.ok_mask.all(), ref.errors
    assert ((ref.scores >= 0) & (ref.scores <= 1)).all()
    opaque = [i for i, p in enumerate(paths) if PIL.open(p).mode not in ("RGBA", "P")]
    for k, r in results.items():
        assert r.ok_mask.all(), (k, r.errors)
        if k.startswith("torch"):
            np.testing.assert_allclose(r.scores, ref.scores[opaque], atol=1e-6, err_msg=k)
        else:
            np.testing.assert_allclose(r.scores, ref.scores, atol=1e-6, err_msg=k)


def test_raw_and_png_encoded_in_memory_agree(real_server):
    images = [np.asarray(PIL.open(p).convert("RGB")) for p in pngs()]
    with RewardClient(real_server.target) as raw, RewardClient(real_server.target, raw_max_bytes=0) as enc:
        a, b = raw.score(PROMPT, images), enc.score(PROMPT, images)
    assert a.ok_mask.all() and b.ok_mask.all()
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_bad_item_among_good_ones(client):
    paths = [str(p) for p in pngs()[:4]]
    items = paths[:2] + [b"\x89PNG\r\n\x1a\n truncated"] + paths[2:] + [np.zeros((0, 4, 3), np.uint8)]
    scores, ok, errors = client.score(PROMPT, items)
    assert ok.tolist() == [True, True, False, True, True, False]
    assert np.isnan(scores[[2, 5]]).all() and not np.isnan(scores[ok]).any()
    assert errors[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and errors[2].reason == "invalid_image"
    assert errors[2].message
    assert errors[5].reason == "client_invalid_input"
    good = client.score(PROMPT, paths)
    np.testing.assert_allclose(scores[ok], good.scores, atol=1e-6)


def test_chunked_results_in_input_order(client):
    paths = [str(p) for p in pngs()[:7]]
    assert len(paths) == 7
    whole = client.score(PROMPT, paths, chunk_size=8)
    chunked = client.score(PROMPT, paths, chunk_size=2)
    one_by_one = [client.score(PROMPT, [p]).scores[0] for p in paths]
    assert whole.ok_mask.all() and chunked.ok_mask.all()
    np.testing.assert_allclose(chunked.scores, whole.scores, atol=1e-6)
    np.testing.assert_allclose(chunked.scores, one_by_one, atol=1e-6)
    assert len(set(np.round(whole.scores, 9))) > 1  # distinct images, distinct scores: order is observable


def test_pairwise_and_video(client):
    fox = str(FIXTURE_IMAGES / "fox_100x60.png")
    frames = [str(FIXTURE_IMAGES / f"frame{i}_70x50.png") for i in (1, 2, 3)]
    r = client.score(PROMPT, [fox, frames[0]], references=frames[1])
    assert r.ok_mask.all(), r.errors
    r = client.score(PROMPT, [fox], references=[fox], mode="pointwise")  # reference refused in pointwise
    assert not r.ok_mask[0] and r.errors[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    r = client.score(PROMPT, videos=[frames, frames[::-1]])
    assert r.ok_mask.all(), r.errors


def test_retry_past_a_dead_target(real_server):
    dead = f"127.0.0.1:{free_port()}"
    with RewardClient([dead, real_server.target], retry=FAST, chunk_size=4) as c:
        for _ in range(3):
            assert c.score(PROMPT, [str(p) for p in pngs()[:2]]).ok_mask.all()


def test_no_retry_on_invalid_argument(client):
    too_many = client.info().limits.max_items_per_request + 1
    with pytest.raises(RewardError) as ei:
        client.score(PROMPT, [str(pngs()[0])] * too_many, chunk_size=too_many)
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT and ei.value.attempts == 1


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    server, stop = start_real_server(tmp_path_factory.mktemp("auth"), "--auth-token", "s3cret", "--no-metrics")
    try:
        yield server
    finally:
        stop()


def test_bearer_token(auth_server):
    path = str(pngs()[0])
    with RewardClient(auth_server.target, retry=FAST) as anon:
        assert anon.health()  # health never needs the token
        with pytest.raises(RewardError) as ei:
            anon.score(PROMPT, [path], chunk_size=1)
        assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED and ei.value.attempts == 1
    with RewardClient(auth_server.target, token="wrong") as bad:
        with pytest.raises(RewardError) as ei:
            bad.info()
        assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED
    with RewardClient(auth_server.target, token="s3cret") as good:
        assert good.info().model_id
        assert good.score(PROMPT, [path]).ok_mask.all()


@pytest.fixture(scope="module")
def tiny_queue_server(tmp_path_factory):
    server, stop = start_real_server(tmp_path_factory.mktemp("queue"), "--max-queue-items", "2",
                                     "--max-batch-items", "1", "--no-metrics")
    try:
        yield server
    finally:
        stop()


def test_queue_full_is_retried(tiny_queue_server, caplog):
    """A server that holds 2 items at once answers most of 16 concurrent 2-item requests with
    RESOURCE_EXHAUSTED; the client backs off and retries until every item is scored."""
    paths = [str(p) for p in pngs()]
    items = (paths * 3)[:32]
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.02, max_backoff=0.1)
    with caplog.at_level("INFO", logger="rewarddance"):
        with RewardClient(tiny_queue_server.target, retry=patient, chunk_size=2, max_workers=16) as c:
            r = c.score(PROMPT, items, timeout=120)
    assert r.ok_mask.all(), [e for e in r.errors if e]
    retried = [x for x in caplog.records if "server busy (RESOURCE_EXHAUSTED" in x.getMessage()]
    assert retried, "the server never pushed back: test did not exercise the retry"
    with RewardClient(tiny_queue_server.target, retry=patient) as ref:
        # No chunk size: the default is capped by the server's queue (2), or this could never pass.
        want = ref.score(PROMPT, paths).scores
    np.testing.assert_allclose(r.scores, (list(want) * 3)[:32], atol=1e-6)


def test_token_is_ignored_without_auth(real_server):
    with RewardClient(real_server.target, token="unused") as c:
        assert c.score(PROMPT, [str(pngs()[0])]).ok_mask.all()


def test_eight_threads(real_server):
    paths = [str(p) for p in pngs()]
    with RewardClient(real_server.target, chunk_size=3) as c:
        want = c.score(PROMPT, paths).scores
        got, errs = [None] * 8, []

        def work(k):
            try:
                got[k] = c.score(PROMPT, paths[k % 3:] + paths[:k % 3])
            except Exception as e:  # noqa: BLE001
                errs.append(e)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errs
    for k in range(8):
        s = k % 3
        np.testing.assert_allclose(got[k].scores, np.concatenate([want[s:], want[:s]]), atol=1e-6)



def test_async_client(real_server):
    paths = [str(p) for p in pngs()]
    client = AsyncRewardClient(real_server.target, retry=FAST)  # no loop yet

    async def main():
        status = await client.health_status()
        assert all(v == "SERVING" for v in status.values()), status
        info = await client.info()
        r = await client.score(PROMPT, paths, chunk_size=2)
        rs = await asyncio.gather(*(client.score(PROMPT, paths[:3]) for _ in range(4)))
        return info, r, rs

    info, r, rs = asyncio.run(main())
    asyncio.run(client.close())
    with RewardClient(real_server.target) as sync:
        want = sync.score(PROMPT, paths).scores
    assert info.model_id, info
    assert r.ok_mask.all(), r.errors
    np.testing.assert_allclose(r.scores, want, atol=1e-6)
    for x in rs:
        np.testing.assert_allclose(x.scores, want[:3], atol=1e-6)


def test_grpo_example_runs(real_server):
    p = subprocess.run([sys.executable, str(CLIENT_ROOT / "examples" / "grpo_rewards.py"), "--target",
                        real_server.target, "--steps", "2"], capture_output=True, text=True, timeout=120,
                       **SUBPROCESS_KW)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "advantages" in p.stdout


def test_rolling_restart_is_invisible(tmp_path):
    """Two servers; one is stopped (SIGTERM: drain, then gone) while a client keeps scoring:
    every call still succeeds, through retries on the other server."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, stop_a = start_real_server(tmp_path / "a", "--no-metrics")
    try:
        b, stop_b = start_real_server(tmp_path / "b", "--no-metrics")
    except BaseException:
        stop_a()
        raise
    paths = [str(p) for p in pngs()[:4]]
    try:
        with RewardClient([a.target, b.target], retry=FAST, chunk_size=2, timeout=30) as c:
            want = c.score(PROMPT, paths).scores
            stopper = threading.Thread(target=stop_a)
            stopper.start()
            for _ in range(20):
                r = c.score(PROMPT, paths)
                assert r.ok_mask.all(), r.errors
                np.testing.assert_allclose(r.scores, want, atol=1e-6)
            stopper.join()
            assert a.proc.poll() is not None
            for _ in range(5):  # chunks keep alternating targets: half of them retry on b
                assert c.score(PROMPT, paths).ok_mask.all()
    finally:
        stop_a()
        stop_b()


def test_rank_pairwise_and_pointwise(client):
    paths = [str(p) for p in pngs()[:4]]
    r = client.rank(PROMPT, paths)
    assert r.ok_mask.all() and r.errors == [None] * 4
    assert sorted(r.order) == [0, 1, 2, 3] and r.best == r.order[0]
    assert r.comparisons == 4 * 3  # every ordered pair
    pref = r.preference
    assert pref.shape == (4, 4) and np.isnan(np.diag(pref)).all()
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose((pref + pref.T)[off], 1.0, atol=1e-6)  # both orders averaged
    assert not np.isnan(r.strength).any() and not np.isnan(r.wins).any()

    pw = client.rank(PROMPT, paths, method="pointwise")
    want = client.score(PROMPT, paths).scores
    np.testing.assert_allclose(pw.p_yes, want, atol=1e-6)
    assert pw.order == list(np.argsort(-want, kind="stable")) and pw.best == int(np.argmax(want))
    assert pw.preference is None or np.isnan(pw.preference).all()


def test_rank_reports_bad_candidates(client):
    paths = [str(p) for p in pngs()[:3]]
    r = client.rank(PROMPT, paths + [b"junk", FIXTURE_IMAGES / "missing.png"], opponents=1, seed=7)
    assert r.ok_mask.tolist() == [True, True, True, False, False]
    assert r.errors[3].code == 3 and "invalid image" in r.errors[3].message
    assert r.errors[4].reason == "client_invalid_input"
    assert r.order[-2:] == [3, 4] or sorted(r.order[-2:]) == [3, 4]
    assert r.best in (0, 1, 2)
    with pytest.raises(RewardError) as ei:
        client.rank(PROMPT, paths[:1])
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT and ei.value.attempts == 1


def test_async_rank(real_server):
    paths = [str(p) for p in pngs()[:3]]

    async def main():
        async with AsyncRewardClient(real_server.target) as c:
            return await c.rank(PROMPT, paths, method="pointwise")

    r = asyncio.run(main())
    assert r.ok_mask.all() and sorted(r.order) == [0, 1, 2]
