"""A server restart in the middle of a GRPO-style training loop, against the real binary.

Several trainer threads share one `RewardClient` with default settings and score a batch of
images per step; part-way through, the only server gets SIGTERM (it drains and exits) and a new
one is started on the same port. With the client's retries bounded by the call's deadline, no
call may fail: the calls made while no server answers wait (retrying with backoff) until the new
one serves. Each test also checks that the restart really hit calls in flight (some retried),
else it could not fail.
"""
import asyncio
import logging
import threading
import time

import numpy as np
import pytest
from conftest import FIXTURE_IMAGES, free_port, start_real_server

from rewarddance import AsyncRewardClient, RewardClient, RewardError

PROMPT = "a red fox in the snow"
THREADS = 4
STEPS = 16          # calls per thread
RESTART_AFTER = 12  # calls completed (all threads together) before SIGTERM


class Loop:
    """THREADS trainers (threads sharing a `RewardClient`, or tasks sharing an
    `AsyncRewardClient`), STEPS `score()` calls each, every call a batch of 8 images; `restart()`
    runs in a thread once RESTART_AFTER calls are done."""

    def __init__(self, batch):
        self.batch = batch
        self.lock = threading.Lock()
        self.done = 0
        self.failed: list = []
        self.results: list = []
        self.restart_at = threading.Event()

    def _record(self, k, step, t0, result=None, error=None) -> None:
        with self.lock:
            if error is None:
                self.results.append((t0, time.monotonic(), result))
            else:
                self.failed.append((k, step, error.code.name, error.attempts, round(time.monotonic() - t0, 2)))
            self.done += 1
            if self.done >= RESTART_AFTER:
                self.restart_at.set()

    def _worker(self, client: RewardClient, k: int) -> None:
        for step in range(STEPS):
            t0 = time.monotonic()
            try:
                self._record(k, step, t0, client.score(PROMPT, self.batch))
            except RewardError as e:
                self._record(k, step, t0, error=e)

    async def _task(self, client: AsyncRewardClient, k: int) -> None:
        for step in range(STEPS):
            t0 = time.monotonic()
            try:
                self._record(k, step, t0, await client.score(PROMPT, self.batch))
            except RewardError as e:
                self._record(k, step, t0, error=e)

    def run(self, kind: str, target: str, restart) -> tuple:
        """Runs the loop; returns (scores of one call before it, seconds it took)."""
        errors = []

        def restart_when_due():
            try:
                if self.restart_at.wait(120):
                    restart()
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(e)

        restarter = threading.Thread(target=restart_when_due)
        if kind == "sync":
            with RewardClient(target) as client:
                want = client.score(PROMPT, self.batch).scores
                t0 = time.monotonic()
                restarter.start()
                threads = [threading.Thread(target=self._worker, args=(client, k)) for k in range(THREADS)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(300)
                assert not any(t.is_alive() for t in threads), "a trainer thread hung"
        else:
            async def main():
                async with AsyncRewardClient(target) as client:
                    scores = (await client.score(PROMPT, self.batch)).scores
                    restarter.start()
                    await asyncio.wait_for(asyncio.gather(*(self._task(client, k) for k in range(THREADS))), 300)
                    return scores

            t0 = time.monotonic()
            want = asyncio.run(main())
        restarter.join(120)
        if errors:
            raise errors[0]
        assert self.restart_at.is_set() and not restarter.is_alive(), "the loop never reached the restart point"
        return want, time.monotonic() - t0


# restart-at-once is a guard for the drain alone: on this machine it fails no call with the old
# client either, and the old server's goaway can be absorbed without any retry.
@pytest.mark.parametrize("kind,gap_s", [("sync", 2.0), ("async", 2.0), ("sync", 0.0)],
                         ids=["sync-restart-after-2s", "async-restart-after-2s", "sync-restart-at-once"])
def test_server_restart_mid_loop_fails_no_call(tmp_path, caplog, kind, gap_s):
    port = free_port()
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, stop_old = start_real_server(tmp_path / "old", "--no-metrics", port=port)
    stops = [stop_old]
    batch = [str(p) for p in sorted(FIXTURE_IMAGES.glob("*.png"))[:8]]
    times = {}
    try:
        with caplog.at_level(logging.INFO, logger="rewarddance"):
            loop = Loop(batch)

            def restart():
                # SIGTERM: the old server drains (answers what it accepted, refuses new calls
                # with UNAVAILABLE) and exits; it holds the port until then, so a supervisor's
                # restart comes after its exit, `gap_s` later.
                times["sigterm"] = time.monotonic()
                old.proc.terminate()
                old.proc.wait(30)
                times["old_exited"] = time.monotonic()
                time.sleep(gap_s)
                _, stop_new = start_real_server(tmp_path / "new", "--no-metrics", port=port)
                stops.append(stop_new)
                times["new_serving"] = time.monotonic()

            want, took = loop.run(kind, old.target, restart)
        summary = (f"{len(loop.failed)} of {THREADS * STEPS} calls failed ({loop.failed[:6]}); loop {took:.1f} s; "
                   f"SIGTERM to new SERVING {times['new_serving'] - times['sigterm']:.2f} s")
        print(summary)
        assert not loop.failed, summary
        assert len(loop.results) == THREADS * STEPS
        for _, _, r in loop.results:
            assert r.ok_mask.all(), r.errors
            np.testing.assert_allclose(r.scores, want, atol=1e-6)
        # With a gap, the restart hit the loop: calls were in flight while no server was there to
        # answer them, and they retried.
        retried = [x for x in caplog.records if x.levelno == logging.WARNING and "retrying" in x.getMessage()]
        waited = [1 for t0, t1, _ in loop.results if t0 < times["new_serving"] and t1 > times["old_exited"]]
        if gap_s:
            assert retried and waited, f"the restart did not hit the loop ({summary})"
    finally:
        for stop in reversed(stops):
            stop()
