"""Targets, retry policy, chunking, health encoding: no server."""
import grpc
import numpy as np
import pytest

from rewarddance import RetryPolicy, _core
from rewarddance.v1 import reward_pb2 as pb


def test_targets():
    assert _core.normalize_targets("a:1") == ["a:1"]
    assert _core.normalize_targets("a:1, b:2") == ["a:1", "b:2"]
    assert _core.normalize_targets(["a:1", "b:2"]) == ["a:1", "b:2"]
    assert _core.normalize_targets("dns:///svc.ns.svc.cluster.local:50051") == ["dns:///svc.ns.svc.cluster.local:50051"]
    assert _core.normalize_targets("ipv4:10.0.0.1:1,10.0.0.2:1") == ["ipv4:10.0.0.1:1,10.0.0.2:1"]
    with pytest.raises(ValueError):
        _core.normalize_targets([])
    with pytest.raises(ValueError):
        _core.normalize_targets(" , ")


def test_backoff_grows_jittered_and_capped():
    p = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=1.0, jitter=0.5)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        ds = [p.backoff(attempt) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in ds)
        assert max(ds) - min(ds) > 0.1 * base  # jittered
    # No cap on tries by default: the call's deadline bounds them.
    assert p.should_retry(grpc.StatusCode.UNAVAILABLE, 1)
    assert p.should_retry(grpc.StatusCode.RESOURCE_EXHAUSTED, 10_000)
    assert 0.5 <= p.backoff(10_000) <= 1.0
    capped = RetryPolicy(max_attempts=5)
    assert capped.should_retry(grpc.StatusCode.UNAVAILABLE, 4) and not capped.should_retry(grpc.StatusCode.UNAVAILABLE, 5)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL):
        assert not p.should_retry(code, 1)


def test_default_backoff_is_50ms_doubling_to_2s():
    p = RetryPolicy()
    assert (p.initial_backoff, p.multiplier, p.max_backoff, p.max_attempts) == (0.05, 2.0, 2.0, None)
    assert not p.wait_for_ready
    for bad in ({"max_attempts": 0}, {"initial_backoff": 0}, {"initial_backoff": 3.0}, {"jitter": 1.5},
                {"multiplier": 0.5}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_prepare_broadcasts_and_checks_lengths():
    img = np.zeros((4, 4, 3), np.uint8)
    prep = _core.prepare("p", [img, img, img], img, instructions="judge {prompt}", mode="pairwise")
    assert prep.n == 3 and all(prep.items)
    assert [it.prompt for it in prep.items] == ["p"] * 3
    assert all(it.mode == pb.MODE_PAIRWISE and it.HasField("reference") for it in prep.items)
    assert all(it.instruction == "judge {prompt}" for it in prep.items)
    with pytest.raises(ValueError, match="prompts has 2 entries for 3 items"):
        _core.prepare(["a", "b"], [img, img, img])
    with pytest.raises(ValueError, match="exactly one"):
        _core.prepare("p")
    with pytest.raises(ValueError, match="unknown mode"):
        _core.prepare("p", [img], mode="listwise")
    # A 4-D batch is split into items; videos are lists of frames or 4-D arrays.
    assert _core.prepare("p", np.zeros((5, 4, 4, 3), np.uint8)).n == 5
    v = _core.prepare("p", videos=[[img, img], np.zeros((3, 4, 4, 3), np.uint8)])
    assert [len(it.video.frames) for it in v.items] == [2, 3]


def test_prepare_reports_client_side_bad_items():
    img = np.zeros((4, 4, 3), np.uint8)
    prep = _core.prepare("p", [img, "/nonexistent.png", img])
    assert prep.items[1] is None and prep.items[0] is not None
    assert prep.errors[1].reason == "client_invalid_input" and prep.errors[1].code == 3


def test_chunks_by_items_and_bytes():
    items = [pb.ScoreItem(prompt="p", image=pb.Image(encoded=b"x" * 1000)) for _ in range(7)]
    assert _core.make_chunks(items, 2, 1 << 20) == [[0, 1], [2, 3], [4, 5], [6]]
    assert _core.make_chunks(items, 100, 2500) == [[0, 1], [2, 3], [4, 5], [6]]
    items[3] = None
    assert _core.make_chunks(items, 3, 1 << 20) == [[0, 1, 2], [4, 5, 6]]


def test_health_messages():
    assert _core.encode_health_request("") == b""
    assert _core.encode_health_request("rewarddance.v1.RewardService") == b"\n\x1crewarddance.v1.RewardService"
    assert _core.decode_health_response(b"\x08\x01") == "SERVING"
    assert _core.decode_health_response(b"\x08\x02") == "NOT_SERVING"
    assert _core.decode_health_response(b"") == "UNKNOWN"


def test_default_chunk_size_from_info():
    info = pb.InfoResponse(limits=pb.Limits(max_items_per_request=1024, max_queue_items=4096, max_message_bytes=1000))
    assert _core.limits_from_info(info, None) == (1024, 1000)
    info.limits.max_queue_items = 2  # a request bigger than the queue could never be admitted
    assert _core.limits_from_info(info, None) == (2, 1000)
    assert _core.limits_from_info(info, 7) == (7, 1000)  # explicit wins
    assert _core.limits_from_info(None, None) == (_core.DEFAULT_CHUNK_SIZE, _core.DEFAULT_MAX_MESSAGE_BYTES)


def test_rank_result_alignment():
    from rewarddance._types import ItemErrorInfo

    resp = pb.RankResponse(order=[1, 0, 2], best=1, comparisons=2, model_id="m")
    resp.candidates.add(index=0, wins=0.0, strength=-0.5)
    resp.candidates.add(index=1, wins=1.0, strength=0.5)
    resp.candidates.add(index=2, error=pb.ItemError(code=3, reason="invalid_input", message="candidate 2: empty"))
    for _ in range(3):
        resp.preference.add(p=[float("nan")] * 3)
    client_err = ItemErrorInfo(3, "client_invalid_input", "cannot read x")
    r = _core.rank_result(resp, 3, [None, None, client_err])
    assert r.order == [1, 0, 2] and r.best == 1 and r.ok_mask.tolist() == [True, True, False]
    assert r.errors[2] is client_err and r.strength.tolist()[:2] == [-0.5, 0.5] and np.isnan(r.p_yes).all()
    assert r.preference.shape == (3, 3)
    assert _core.rank_result(pb.RankResponse(), 2, [None, None]).best is None
    assert not _core.rank_result(pb.RankResponse(), 2, [None, None]).ok_mask.any()
    req, errs = _core.rank_request("p", [b"x", "/nonexistent.png", b"y"], method="pointwise")
    assert len(req.candidates) == 3 and errs[1].reason == "client_invalid_input"
    assert req.method == pb.RANK_METHOD_POINTWISE and not req.candidates[1].WhichOneof("source")
