"""Client behaviour against the in-process fake server: deadlines, ordering, targets, threads,
async (retries: test_retry_fake.py). Runs without the real server."""
import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import free_port
from fake_server import FakeServer

from rewarddance import AsyncRewardClient, RetryPolicy, RewardClient, RewardError

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)


def imgs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8 + i, 9, 3), dtype=np.uint8) for i in range(n)]


def expected(images):
    return np.array([im.astype(np.float64).mean() / 255.0 for im in images])


def test_scores_in_input_order_when_chunked(fake):
    images = imgs(7)
    # Earlier chunks answer later, so completion order is the reverse of input order.
    fake.service.delay = lambda req: 0.05 * (10 - int(req.items[0].id)) / 10
    with RewardClient(fake.target, retry=FAST) as c:
        scores, ok, errors = c.score("p", images, chunk_size=2)
    assert fake.service.calls == [2, 2, 2, 1] or sorted(fake.service.calls) == [1, 2, 2, 2]
    assert ok.all() and errors == [None] * 7
    np.testing.assert_allclose(scores, expected(images), atol=1e-12)


def test_default_chunk_size_comes_from_info(fake):
    fake.service.max_items = 3
    with RewardClient(fake.target) as c:
        r = c.score("p", imgs(8))
    assert r.ok_mask.all() and sorted(fake.service.calls) == [2, 3, 3]


def test_bad_item_is_masked_alone(fake):
    images = imgs(5)
    images[2] = b"not an image"
    with RewardClient(fake.target) as c:
        scores, ok, errors = c.score("p", images)
    assert ok.tolist() == [True, True, False, True, True]
    assert np.isnan(scores[2]) and not np.isnan(np.delete(scores, 2)).any()
    assert errors[2].reason == "invalid_image" and errors[2].status_code == grpc.StatusCode.INVALID_ARGUMENT
    assert [e is None for e in errors] == ok.tolist()


def test_deadline_applies_to_the_call(fake):
    fake.service.delay = lambda req: 1.0
    with RewardClient(fake.target, chunk_size=8) as c:
        t0 = time.monotonic()
        with pytest.raises(RewardError) as ei:
            c.score("p", imgs(1), timeout=0.2)
    assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 0.9


def test_mask_call_errors(fake):
    fake.service.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
    with RewardClient(fake.target, chunk_size=2, max_workers=1) as c:
        scores, ok, errors = c.score("p", imgs(4), mask_call_errors=True)
    assert ok.sum() == 2 and sum(e is not None and e.reason == "call_failed" for e in errors) == 2


def test_dead_first_target_is_skipped():
    dead = f"127.0.0.1:{free_port()}"
    with FakeServer() as live:
        with RewardClient([dead, live.target], retry=FAST, chunk_size=8) as c:
            for _ in range(4):
                assert c.score("p", imgs(2)).ok_mask.all()
        assert len(live.service.calls) == 4


def test_round_robin_over_targets():
    with FakeServer() as a, FakeServer() as b:
        with RewardClient(f"{a.target},{b.target}", chunk_size=1) as c:
            assert c.score("p", imgs(6)).ok_mask.all()
        assert len(a.service.calls) == 3 and len(b.service.calls) == 3


def test_default_chunks_spread_a_batch_over_targets():
    with FakeServer() as a, FakeServer() as b:
        with RewardClient([a.target, b.target]) as c:
            assert c.score("p", imgs(7)).ok_mask.all()
        assert sorted(a.service.calls + b.service.calls) == [3, 4]
        assert len(a.service.calls) == 1 and len(b.service.calls) == 1

        async def main():
            async with AsyncRewardClient([a.target, b.target]) as ac:
                assert (await ac.score("p", imgs(4))).ok_mask.all()

        asyncio.run(main())
        assert a.service.calls[1:] == [2] and b.service.calls[1:] == [2]


def test_ipv4_multi_address_target_balances():
    with FakeServer() as a, FakeServer() as b:
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        with RewardClient(target, chunk_size=1) as c:
            c.wait_ready(10)
            end = time.monotonic() + 10
            # round_robin only picks READY subchannels: give the second one time to connect.
            while not (a.service.calls and b.service.calls) and time.monotonic() < end:
                assert c.score("p", imgs(8)).ok_mask.all()
        assert a.service.calls and b.service.calls


def test_dns_target_passes_through(fake):
    with RewardClient(f"dns:///localhost:{fake.port}") as c:
        assert c.score("p", imgs(2)).ok_mask.all()


def test_token_and_metadata(fake):
    with RewardClient(fake.target, token="s3cret", metadata=[("x-rank", "3")], chunk_size=8) as c:
        c.score("p", imgs(1))
    md = fake.service.metadata[0]
    assert md["authorization"] == "Bearer s3cret" and md["x-rank"] == "3"


def test_health_and_info(fake):
    with RewardClient([fake.target, f"127.0.0.1:{free_port()}"]) as c:
        st = c.health_status(timeout=1.0)
        assert st[fake.target] == "SERVING" and st[c.targets[1]].startswith("UNREACHABLE")
        assert not c.health(timeout=1.0)
    with RewardClient(fake.target) as c:
        assert c.health()
        assert c.info().model_id == "fake"


def test_eight_threads_share_a_client(fake):
    sets = [imgs(5, seed=s) for s in range(8)]
    results = [None] * 8
    errors = []
    with RewardClient(fake.target, chunk_size=2) as c:
        def work(k):
            try:
                for _ in range(5):
                    results[k] = c.score(f"p{k}", sets[k])
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for k in range(8):
        assert results[k].ok_mask.all()
        np.testing.assert_allclose(results[k].scores, expected(sets[k]), atol=1e-12)


# Created at import time, before any event loop exists (what a trainer module would do).
MODULE_LEVEL_ASYNC = AsyncRewardClient("127.0.0.1:1")


def test_async_client_created_before_loop(fake):
    client = AsyncRewardClient(fake.target, retry=FAST)
    images = imgs(7)

    async def main():
        r = await client.score("p", images, chunk_size=2)
        assert await client.health()
        return r

    r1 = asyncio.run(main())
    # A second event loop: the client makes fresh channels for it.
    r2 = asyncio.run(main())
    asyncio.run(client.close())
    for r in (r1, r2):
        assert r.ok_mask.all()
        np.testing.assert_allclose(r.scores, expected(images), atol=1e-12)
    assert MODULE_LEVEL_ASYNC._channels == []


def test_async_retries_and_errors(fake):
    async def main():
        async with AsyncRewardClient(fake.target, retry=FAST, chunk_size=8) as c:
            fake.service.fail_next = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
            r = await c.score("p", imgs(2))
            assert r.ok_mask.all()
            fake.service.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
            with pytest.raises(RewardError) as ei:
                await c.score("p", imgs(2))
            assert ei.value.attempts == 1
            bad = imgs(3)
            bad[1] = b"junk"
            scores, ok, errors = await c.score("p", bad)
            assert ok.tolist() == [True, False, True] and errors[1].reason == "invalid_image"

    asyncio.run(main())
    assert fake.service.calls == [2, 2, 2, 2, 3]


def test_async_concurrent_calls(fake):
    async def main():
        async with AsyncRewardClient(fake.target, chunk_size=2) as c:
            sets = [imgs(5, seed=s) for s in range(8)]
            rs = await asyncio.gather(*(c.score("p", s) for s in sets))
            for s, r in zip(sets, rs):
                np.testing.assert_allclose(r.scores, expected(s), atol=1e-12)

    asyncio.run(main())


def test_async_client_needs_a_running_loop():
    c = AsyncRewardClient("127.0.0.1:1")
    with pytest.raises(RuntimeError):
        c._ensure()


def test_video_and_pairwise(fake):
    frames = imgs(3)
    ref = np.full((8, 9, 3), 100, np.uint8)
    with RewardClient(fake.target) as c:
        r = c.score("p", videos=[frames, frames[:1]])
        assert r.ok_mask.all()
        assert r.scores[0] == pytest.approx(np.mean([f.mean() for f in frames]) / 255)
        r = c.score("p", imgs(2), references=ref, mode="pairwise")
        assert r.ok_mask.all()
        assert r.scores[0] == pytest.approx(0.5 + (imgs(2)[0].mean() - 100) / 510)


def test_closed_client_refuses(fake):
    c = RewardClient(fake.target)
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.score("p", imgs(1))


def _grpc_version():
    return tuple(int(x) for x in grpc.__version__.split(".")[:2])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
@pytest.mark.parametrize("parent_uses_client", [False, True])
def test_clients_made_before_fork_work_in_children(fake, parent_uses_client):
    """Both clients built at module level of a trainer script, then forked workers use them."""
    import json
    import subprocess
    import sys

    from conftest import HERE, SUBPROCESS_KW

    if parent_uses_client and _grpc_version() < (1, 80):
        pytest.skip("gRPC used in the parent before fork: grpcio < 1.80 crashes in grpc's own fork handlers")
    args = [sys.executable, str(HERE / "fork_check.py"), fake.target]
    if parent_uses_client:
        args.append("--parent-uses-client")
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, **SUBPROCESS_KW)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got[:2] == [[[0.2], [0.2]]] * 2, got
    if parent_uses_client:
        assert got[2] == [[0.2]]
