"""Run as a script by test_client_fake.py: a fresh process (no gRPC activity yet) builds both
clients, forks workers that score with them, and prints what the workers got as JSON.

    python fork_check.py TARGET [--parent-uses-client]
"""
import asyncio
import json
import multiprocessing as mp
import sys

import numpy as np

from rewarddance import AsyncRewardClient, RewardClient

IMG = [np.full((4, 4, 3), 51, np.uint8)]
client = RewardClient(sys.argv[1], timeout=20)  # module level, before any fork and any loop
aclient = AsyncRewardClient(sys.argv[1], timeout=20)


def worker(q):
    try:
        r1 = client.score("p", IMG).scores.tolist()

        async def main():
            return (await aclient.score("p", IMG)).scores.tolist()

        q.put([r1, asyncio.run(main())])
    except Exception as e:  # noqa: BLE001
        q.put(repr(e))


if __name__ == "__main__":
    if "--parent-uses-client" in sys.argv:
        client.score("p", IMG)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(q,)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    if "--parent-uses-client" in sys.argv:
        got.append([client.score("p", IMG).scores.tolist()])
    print(json.dumps(got))
