"""Wake-ups on the vector fast path, across real processes.

A doorbell several processes ring (a vector client's, rung by every worker)
never loses a ring, and a step of several workers wakes its client once: the
last worker to finish rings, the others do not.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

import rlmesh.numpy as rnp
from rlmesh.shm import Segment
from rlmesh.vector import _layout as L

U32 = struct.Struct("<I")
#: Enough rings per process that the two overlap for milliseconds (a
#: load-and-store ring loses about a fifth of them then).
RINGS = 200_000

RINGER = """
import sys
from rlmesh import _native
from rlmesh.shm import Segment
seg = Segment.attach(sys.argv[1], int(sys.argv[2]))
try:
    import struct, time
    # Say ready, then wait for the go word: both ringers start together and overlap.
    struct.pack_into("<I", seg.buf, 260 + 4 * int(sys.argv[4]), 1)
    deadline = time.monotonic() + 30
    while struct.unpack_from("<I", seg.buf, 256)[0] == 0 and time.monotonic() < deadline:
        pass
    for _ in range(int(sys.argv[3])):
        _native.bell_ring(seg.buf, 128)
finally:
    seg.close()
"""


@pytest.mark.timeout(120)
def test_two_processes_ringing_one_doorbell_never_lose_a_ring() -> None:
    # A ring is an increment of the bell's sequence word: two ringers doing a
    # load and a store (the old Python ring) lose increments, and a sleeper whose
    # futex value a lost increment left unchanged misses its wake-up.
    seg = Segment.create(4096)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", RINGER, seg.name, str(seg.size), str(RINGS), str(i)],
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
            )
        deadline = time.monotonic() + 60
        while not all(U32.unpack_from(seg.buf, 260 + 4 * i)[0] for i in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "ringers not ready"
            time.sleep(0.001)
        U32.pack_into(seg.buf, 256, 1)
        for proc in procs:
            assert proc.wait(timeout=90) == 0
        assert U32.unpack_from(seg.buf, 128)[0] == 2 * RINGS
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        seg.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [2, 3])
def test_a_step_of_several_workers_wakes_the_client_once(serve: Any, workers: int) -> None:
    served = serve("CartPole-v1", num_envs=2 * workers, workers=workers)
    env = served.client(rnp.RemoteVectorEnv)
    lanes = env._lanes
    assert lanes is not None and lanes.layout.workers == workers
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    steps = 300
    before = U32.unpack_from(lanes._buf, L.CLIENT_BELL)[0]
    for _ in range(steps):
        env.step(rng.integers(0, 2, 2 * workers))
    rings = (U32.unpack_from(lanes._buf, L.CLIENT_BELL)[0] - before) & 0xFFFFFFFF
    # The last worker to finish always rings; another rings too only when two
    # finish at the same instant (each sees the other done). Ringing per worker
    # would make it `workers * steps`.
    assert steps <= rings <= steps * 1.25, rings


@pytest.mark.timeout(120)
def test_send_and_recv_still_wake_the_client_per_worker(serve: Any) -> None:
    # recv(min_envs) must hear about the first worker done, not only the last.
    served = serve("CartPole-v1", num_envs=4, workers=2)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=5)
    lanes = env._lanes
    before = U32.unpack_from(lanes._buf, L.CLIENT_BELL)[0]
    rounds = 100
    for _ in range(rounds):
        env.send(np.zeros(4, dtype=np.int64))
        got = 0
        while got < 4:
            *_, ids = env.recv(min_envs=1, timeout=10)
            got += len(ids)
    rings = (U32.unpack_from(lanes._buf, L.CLIENT_BELL)[0] - before) & 0xFFFFFFFF
    assert rings == 2 * rounds
