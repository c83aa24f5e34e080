"""The retry contract against the in-process fake server, for both clients (sync and asyncio):
UNAVAILABLE / RESOURCE_EXHAUSTED are retried until the call's deadline and no longer, other codes
are not retried, an outage is logged once, a stream is not retried after its first message, and
wait_for_ready waits for a server that is not there yet."""
import asyncio
import logging
import threading
import time

import grpc
import pytest
from conftest import free_port
from fake_server import FakeServer

from rewarddance import AsyncRewardClient, RetryPolicy, RewardClient, RewardError

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def imgs(n):
    import numpy as np

    return [np.full((8, 8, 3), 10 * (i + 1), np.uint8) for i in range(n)]


def score(kind, target, n=2, *, timeout=None, **client_kw):
    """One `score()` call with a fresh client of `kind` ("sync" or "async")."""
    if kind == "sync":
        with RewardClient(target, chunk_size=8, **client_kw) as c:
            return c.score("p", imgs(n), timeout=timeout)

    async def main():
        async with AsyncRewardClient(target, chunk_size=8, **client_kw) as c:
            return await c.score("p", imgs(n), timeout=timeout)

    return asyncio.run(main())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


def messages(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "rewarddance" and r.levelno == level]


@KINDS
@pytest.mark.parametrize("code", [UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_retryable_codes_are_retried_then_succeed(fake, kind, code):
    fake.service.fail_next = [code] * 7  # more than the 5 tries the client used to stop at
    r = score(kind, fake.target, 3, retry=FAST)
    assert r.ok_mask.all() and fake.service.calls == [3] * 8


@KINDS
@pytest.mark.parametrize("policy,timeout", [(None, 2.5), (FAST, 1.0)], ids=["default-policy", "fast-backoff"])
def test_unavailable_is_retried_until_the_deadline_and_no_longer(fake, caplog, kind, policy, timeout):
    fake.service.fail_next = [UNAVAILABLE] * 10_000
    p = policy or RetryPolicy()
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="rewarddance"), pytest.raises(RewardError) as ei:
        score(kind, fake.target, timeout=timeout, retry=policy)
    took = time.monotonic() - t0
    assert ei.value.code == UNAVAILABLE
    # Until the deadline: the last retry is the one whose backoff would pass it (<= max_backoff).
    assert took > timeout - p.max_backoff, (took, ei.value.attempts)
    # And no longer (a little slack for the fake's own answer and interpreter overhead).
    assert took < timeout + 0.2, (took, ei.value.attempts)
    assert ei.value.attempts == len(fake.service.calls) > 5
    # One WARNING when the retries start, one when the call gives up; every retry between at DEBUG.
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 2 and "retrying with backoff until each call's deadline" in warnings[0], warnings
    assert warnings[1].startswith(f"giving up a call after {ei.value.attempts} tries"), warnings
    assert len(messages(caplog, logging.DEBUG)) == ei.value.attempts - 2
    assert not messages(caplog, logging.INFO)


@KINDS
@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.FAILED_PRECONDITION])
def test_other_codes_are_not_retried(fake, caplog, kind, code):
    fake.service.fail_next = [code, code]
    with caplog.at_level(logging.DEBUG, logger="rewarddance"), pytest.raises(RewardError) as ei:
        score(kind, fake.target, retry=FAST)
    assert ei.value.code == code and ei.value.attempts == 1
    assert len(fake.service.calls) == 1 and not caplog.records


@KINDS
def test_an_outage_is_logged_once_and_its_end_once(fake, caplog, kind):
    fake.service.fail_next = [UNAVAILABLE] * 6
    with caplog.at_level(logging.DEBUG, logger="rewarddance"):
        assert score(kind, fake.target, retry=FAST).ok_mask.all()
    warnings, infos = messages(caplog, logging.WARNING), messages(caplog, logging.INFO)
    assert len(warnings) == 1 and warnings[0].startswith("server unavailable (UNAVAILABLE from"), warnings
    assert len(infos) == 1 and infos[0].startswith("server answering again") and "(6 retries)" in infos[0], infos
    assert len(messages(caplog, logging.DEBUG)) == 5


def test_one_warning_per_outage_across_threads_and_again_for_the_next(fake, caplog):
    """Calls of several threads in one outage share its WARNING; a later outage gets its own."""
    with caplog.at_level(logging.INFO, logger="rewarddance"), RewardClient(fake.target, retry=FAST,
                                                                           chunk_size=8) as c:
        for _ in range(2):
            fake.service.fail_next = [UNAVAILABLE] * 8
            errors = []

            def work():
                try:
                    assert c.score("p", imgs(1)).ok_mask.all()
                except Exception as e:  # noqa: BLE001
                    errors.append(e)

            ts = [threading.Thread(target=work) for _ in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert not errors
            assert c.score("p", imgs(1)).ok_mask.all()  # the server answers: the outage is over
    warnings, infos = messages(caplog, logging.WARNING), messages(caplog, logging.INFO)
    # Threads retry concurrently, so an outage may be seen to end and restart; never one line per try.
    assert 2 <= len(warnings) <= 4 and len(infos) == len(warnings), (warnings, infos)


@KINDS
def test_max_attempts_still_caps_the_tries(fake, kind):
    fake.service.fail_next = [UNAVAILABLE] * 10
    with pytest.raises(RewardError) as ei:
        score(kind, fake.target, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    assert ei.value.code == UNAVAILABLE and ei.value.attempts == 3 == len(fake.service.calls)


def test_timeouts_are_finite_and_positive(fake):
    for bad in (float("inf"), float("nan"), 0, -1, None, "10"):
        with pytest.raises(ValueError):
            RewardClient(fake.target, timeout=bad)
        with pytest.raises(ValueError):
            AsyncRewardClient(fake.target, timeout=bad)
    with RewardClient(fake.target, chunk_size=8) as c:
        with pytest.raises(ValueError):
            c.score("p", imgs(1), timeout=float("inf"))
    assert fake.service.calls == []


def test_stream_is_not_retried_after_its_first_message(fake):
    fake.service.stream_abort = UNAVAILABLE
    with RewardClient(fake.target, retry=FAST, chunk_size=8) as c:
        with pytest.raises(RewardError) as ei:
            list(c.stream_rationales("p", imgs(2), rationale=True))
        assert ei.value.code == UNAVAILABLE and ei.value.attempts == 1
        (delta, result) = list(c.stream_rationales("p", imgs(2), rationale=True, mask_call_errors=True))
    assert delta.index == 0 and not result.ok_mask.any()
    assert all(e.reason == "call_failed" and e.code == UNAVAILABLE.value[0] for e in result.errors)
    assert fake.service.stream_calls == 2  # one per stream: neither was sent again

    async def main():
        async with AsyncRewardClient(fake.target, retry=FAST, chunk_size=8) as ac:
            return [ev async for ev in ac.stream_rationales("p", imgs(2), rationale=True, mask_call_errors=True)]

    _, result = asyncio.run(main())
    assert not result.ok_mask.any() and fake.service.stream_calls == 3


@KINDS
@pytest.mark.parametrize("wait_for_ready", [True, False])
def test_a_server_that_comes_up_late(caplog, kind, wait_for_ready):
    """No server yet on the port: the call waits (wait_for_ready: one try; else: retries) and
    succeeds once one is started there, 0.7 s later."""
    port = free_port()
    servers = []
    starter = threading.Timer(0.7, lambda: servers.append(FakeServer(port=port)))
    starter.start()
    try:
        with caplog.at_level(logging.INFO, logger="rewarddance"):
            r = score(kind, f"127.0.0.1:{port}", timeout=10,
                      retry=RetryPolicy(wait_for_ready=wait_for_ready, max_backoff=0.2))
        assert r.ok_mask.all()
        retried = messages(caplog, logging.WARNING)
        assert len(servers[0].service.calls) == 1
        assert (not retried) if wait_for_ready else (len(retried) == 1), retried
    finally:
        starter.join()
        for s in servers:
            s.stop()
