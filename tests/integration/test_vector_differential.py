"""A served vector env replays a local Gymnasium vector env bit for bit, in every autoreset mode.

Failure-matrix rows R31 and R34. The same ``CartPole-v1`` vector env (three
lanes, ``sync`` vectorization) is built twice from one factory: once served by
an ``rlmesh.EnvServer`` and driven with ``rlmesh.numpy.RemoteVectorEnv``, once
stepped in-process. Both get the same seeds and the same seeded actions, for
each autoreset mode (NextStep, SameStep, Disabled) over every transport (Unix
and TCP, shared memory and inline). Every reset and step must agree exactly:
observation bytes, dtypes and shapes; rewards, terminations and truncations;
and the info keys the env itself produces, SameStep's final observations
included. The remote run is then repeated with a fresh client (and so, with a
factory, a fresh env) and must reproduce itself, and lane ``i`` of
``reset(seed=7)`` must start where a single env reset with ``seed=7 + i`` does.

Why: a served env is only a drop-in replacement if the trajectory an agent sees
is the one it would see in-process; a lost bit, a dtype change, a reordered
lane or a mishandled autoreset silently changes training data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import rlmesh.numpy as rnp
from tests.conftest import TRANSPORTS

pytestmark = pytest.mark.timeout(120)

NUM_ENVS = 3
SEED = 7
STEPS = 300
# Short episodes so that the 300 steps cross many autoresets and both ways an
# episode can end occur: random CartPole actions usually fall over (terminated)
# within 10-30 steps, and the time limit cuts the rest (truncated).
MAX_EPISODE_STEPS = 20
# Keys the client adds to every step's info; everything else comes from the env.
CLIENT_KEYS = ("episode_ids", "completed_episodes")

Record = tuple[Any, ...]


def make_factory(mode: AutoresetMode) -> Callable[[], gym.vector.VectorEnv]:
    """A factory for the env under test; the server calls it once per client."""

    def factory() -> gym.vector.VectorEnv:
        return gym.make_vec(
            "CartPole-v1",
            num_envs=NUM_ENVS,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": mode},
            max_episode_steps=MAX_EPISODE_STEPS,
        )

    return factory


def the_actions() -> list[np.ndarray]:
    """The same seeded action batches for every run."""
    rng = np.random.default_rng(20240607)
    return [rng.integers(0, 2, size=NUM_ENVS) for _ in range(STEPS)]


def typed(value: Any) -> Any:
    """A tree of (type name, value) leaves, so that 1 vs True or 1 vs 1.0 compare unequal.

    numpy arrays become nested lists first (object arrays element by element),
    which is how rlmesh carries info values: float32 widens to a Python float
    exactly, so equal leaves here mean equal bits.
    """
    if isinstance(value, np.ndarray):
        return typed(value.tolist() if value.dtype != object else list(value))
    if isinstance(value, np.generic):
        return typed(value.item())
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def array_record(value: Any) -> tuple[str, tuple[int, ...], bytes]:
    """Dtype, shape and raw bytes: equal records mean bit-identical arrays."""
    arr = np.asarray(value)
    return (arr.dtype.str, arr.shape, arr.tobytes())


def env_info(info: dict[str, Any]) -> dict[str, Any]:
    """The info keys the env produced, without the client's bookkeeping."""
    return {key: item for key, item in info.items() if key not in CLIENT_KEYS}


def check_same_step_finals(mode: AutoresetMode, done: np.ndarray, info: dict[str, Any], remote: bool) -> None:
    """Check the shape in which SameStep reports finished lanes.

    Gymnasium puts them in ``info["final_obs"]``, an object array holding each
    finished lane's last observation (None for the others), with the boolean
    mask ``info["_final_obs"]``, and ``final_info`` / ``_final_info`` likewise.
    rlmesh sends info through its metadata rules, so the client receives plain
    lists: ``final_obs`` is a list of ``num_envs`` entries, None or the last
    observation as a list of Python floats, and the masks are lists of bools.
    The differential comparison checks the values; this checks the form, and
    that the floats rebuild the float32 observation of the right size.
    """
    if mode != AutoresetMode.SAME_STEP:
        assert "final_obs" not in info
        return
    if not done.any():
        assert "final_obs" not in info
        return
    finals, mask = info["final_obs"], info["_final_obs"]
    assert len(finals) == NUM_ENVS
    assert [bool(m) for m in mask] == done.tolist()
    for lane in range(NUM_ENVS):
        if not done[lane]:
            assert finals[lane] is None
            continue
        if remote:
            assert type(finals) is list and type(mask) is list
            assert all(type(x) is float for x in finals[lane])
        rebuilt = np.asarray(finals[lane], dtype=np.float32)
        assert rebuilt.shape == (4,)
        assert np.array_equal(rebuilt.astype(np.float64), np.asarray(finals[lane], dtype=np.float64))


def rollout(env: Any, mode: AutoresetMode, actions: list[np.ndarray], *, remote: bool) -> list[Record]:
    """Reset with SEED and step through ``actions``, recording everything exactly.

    With autoreset disabled a finished lane cannot be stepped again, so as soon
    as any lane ends every lane is reset with the next seed of a counter.
    """
    records: list[Record] = []
    obs, info = env.reset(seed=SEED)
    records.append(("reset", SEED, array_record(obs), typed(env_info(info))))
    if remote:
        ids = info["episode_ids"]
        assert len(ids) == NUM_ENVS and len(set(ids)) == NUM_ENVS
    ended = np.zeros(NUM_ENVS, dtype=bool)
    reseed = 1000
    for step, batch in enumerate(actions):
        obs, rewards, terminations, truncations, info = env.step(batch)
        done = np.asarray(terminations) | np.asarray(truncations)
        check_same_step_finals(mode, done, info, remote)
        records.append(
            (
                "step",
                step,
                array_record(obs),
                array_record(rewards),
                array_record(terminations),
                array_record(truncations),
                typed(env_info(info)),
            )
        )
        if remote:
            for key in CLIENT_KEYS:
                assert key in info, f"step {step}: the client did not add {key!r}"
            assert info["completed_episodes"] == int(done.sum())
            # A lane gets a new episode id on the first step after its episode
            # ended (and every lane on a reset); the ending step still reports
            # the finished episode's id.
            new_ids = info["episode_ids"]
            assert len(new_ids) == NUM_ENVS
            changed = [a != b for a, b in zip(ids, new_ids, strict=True)]
            assert changed == ended.tolist(), f"step {step}: episode ids changed for {changed}"
            ids = new_ids
        ended = done
        if mode == AutoresetMode.DISABLED and done.any():
            reseed += 1
            obs, info = env.reset(seed=reseed)
            records.append(("reset", reseed, array_record(obs), typed(env_info(info))))
            ended = np.zeros(NUM_ENVS, dtype=bool)
            if remote:
                assert all(a != b for a, b in zip(ids, info["episode_ids"], strict=True))
                ids = info["episode_ids"]
    return records


def assert_same(got: list[Record], want: list[Record], what: str) -> None:
    """Equal record lists, naming the first record that differs."""
    for index, (a, b) in enumerate(zip(got, want, strict=False)):
        assert a == b, f"{what}: record {index} ({b[0]} {b[1]}) differs"
    assert len(got) == len(want), f"{what}: {len(got)} records, expected {len(want)}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_vector_env_matches_a_local_twin_bit_for_bit(serve, transport: str, mode: AutoresetMode) -> None:
    factory = make_factory(mode)
    actions = the_actions()

    local = factory()
    expected = rollout(local, mode, actions, remote=False)
    local.close()
    steps = [r for r in expected if r[0] == "step"]
    terms = sum(np.frombuffer(r[4][2], dtype=bool).sum() for r in steps)
    truncs = sum(np.frombuffer(r[5][2], dtype=bool).sum() for r in steps)
    # The comparison is only worth something if episodes end, both ways, many times.
    assert terms >= 10 and truncs >= 5, (terms, truncs)

    served = serve(factory, transport)
    assert served.server.env_contract.num_envs == NUM_ENVS
    assert served.server.env_contract.autoreset_mode == mode.value

    first = served.client(rnp.RemoteVectorEnv)
    assert first.data_plane == ("shm" if served.shm else "inline")
    assert first.autoreset_mode == mode.value
    assert first.metadata["autoreset_mode"] == mode
    got = rollout(first, mode, actions, remote=True)
    first.close()
    assert_same(got, expected, f"remote vs local ({mode.value}, {transport})")

    # Determinism: a fresh client gets a fresh env from the factory; the same
    # seeds and actions must reproduce the same trajectory, across autoresets.
    second = served.client(rnp.RemoteVectorEnv)
    again = rollout(second, mode, actions, remote=True)
    second.close()
    assert_same(again, got, f"second remote run ({mode.value}, {transport})")


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_lane_i_is_seeded_with_seed_plus_i(serve, transport: str) -> None:
    # Gymnasium seeds lane i of reset(seed=s) with s + i; the served env must
    # keep that, so each lane starts where a single env reset with s + i does.
    served = serve(make_factory(AutoresetMode.NEXT_STEP), transport)
    remote = served.client(rnp.RemoteVectorEnv)
    obs, _ = remote.reset(seed=SEED)
    assert obs.shape == (NUM_ENVS, 4) and obs.dtype == np.float32
    for lane in range(NUM_ENVS):
        single = gym.make("CartPole-v1")
        want = single.reset(seed=SEED + lane)[0]
        single.close()
        assert array_record(obs[lane]) == array_record(want), f"lane {lane}"
    # And the lanes really differ, so the check above could not pass by accident.
    assert len({obs[lane].tobytes() for lane in range(NUM_ENVS)}) == NUM_ENVS
