"""rlmesh.jax: conversions, the version floor, and zero-copy observations from shared memory."""

from __future__ import annotations

import gc
import json

import ml_dtypes
import numpy as np
import pytest

import rlmesh
import rlmesh.jax as rjax
import rlmesh.numpy as rnp
from rlmesh import Tensor
from tests.conftest import run_python
from tests.envs import CountEnv

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

pytestmark = pytest.mark.timeout(120)

X32_DTYPES = ["bool", "int8", "int16", "int32", "uint8", "uint16", "uint32", "float16", "bfloat16", "float32"]


def shm_mapping(address: int) -> str | None:
    with open("/proc/self/maps") as maps:
        for line in maps:
            span = line.split()[0]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return line.strip()
    return None


@pytest.mark.parametrize("name", X32_DTYPES)
def test_asarray_is_zero_copy_and_from_array_copies(name: str) -> None:
    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    source = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    tensor = Tensor(source.tobytes(), (3, 4), name)
    array = rjax.asarray(tensor)
    assert isinstance(array, jax.Array) and array.dtype == dtype
    assert array.unsafe_buffer_pointer() == tensor.address
    back = rjax.from_array(array)
    assert isinstance(back, Tensor) and back.dtype == name and back.address != tensor.address
    assert back.tobytes() == source.tobytes()


def test_scalars_types_and_errors() -> None:
    assert rjax.from_array(jnp.array(3)) == 3 and type(rjax.from_array(jnp.array(3))) is int
    assert rjax.from_array(jnp.float32(1.5)) == 1.5
    with pytest.raises(TypeError, match="jax.Array"):
        rjax.from_array(np.zeros(2))
    with pytest.raises(TypeError):
        rjax.asarray(np.zeros(2))
    # Python scalars (a decoded Discrete leaf) become 0-d arrays, as jnp.asarray makes them.
    for scalar in (1.5, True, 3):
        array = rjax.asarray(scalar)
        assert isinstance(array, jax.Array) and array.shape == ()
        assert array.item() == scalar
    assert rjax.asarray(True).dtype == jnp.bool_
    with pytest.raises(TypeError, match="Python scalar"):
        rjax.asarray("3")
    assert rjax.asarray(Tensor(np.float32(2.5).tobytes(), (), "float32")).shape == ()


def test_bfloat16_crosses_bit_for_bit_both_ways() -> None:
    bits = np.array([0x0000, 0x8000, 0x3F80, 0x7F80, 0xFF80, 0x7FC0, 0x7FC1, 0x0001, 0xFFFF], np.uint16)
    tensor = Tensor(bits.tobytes(), bits.shape, "bfloat16")
    array = rjax.asarray(tensor)
    assert array.dtype == jnp.bfloat16
    assert np.asarray(array).view(np.uint16).tolist() == bits.tolist()
    made = jnp.asarray(bits.view(ml_dtypes.bfloat16))
    assert rjax.from_array(made).tobytes() == bits.tobytes()


def test_64_bit_dtypes_need_x64_mode() -> None:
    # Without x64 (this process): JAX demotes int64 to int32 (a copy), values intact.
    tensor = Tensor(np.arange(4, dtype=np.int64).tobytes(), (4,), "int64")
    demoted = rjax.asarray(tensor)
    assert demoted.dtype == jnp.int32 and demoted.tolist() == [0, 1, 2, 3]
    assert demoted.unsafe_buffer_pointer() != tensor.address
    # With x64 (a fresh process): int64, uint64, float64 are shared, not copied.
    out = run_python(
        """
import json, jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import rlmesh.jax as rjax
from rlmesh import Tensor
result = {}
for name in ["int64", "uint64", "float64"]:
    src = (np.arange(8) * 3).astype(name)
    t = Tensor(src.tobytes(), (8,), name)
    a = rjax.asarray(t)
    back = rjax.from_array(a)
    result[name] = [str(a.dtype), a.unsafe_buffer_pointer() == t.address, back.tobytes() == src.tobytes()]
print(json.dumps(result))
"""
    )
    assert json.loads(out) == {n: [n, True, True] for n in ["int64", "uint64", "float64"]}


def test_ensure_available_enforces_the_floor(monkeypatch) -> None:
    rjax.ensure_available()
    monkeypatch.setattr(jax, "__version__", "0.4.23")
    with pytest.raises(ImportError, match="0.4.24"):
        rjax.ensure_available()
    with pytest.raises(ImportError, match="0.4.24"):
        rjax.Model(lambda obs: 0)
    monkeypatch.undo()
    rjax.ensure_available()


def test_spaces_sample_jax_arrays() -> None:
    space = rjax.space_from_spec(rlmesh.spaces.Box(-1.0, 1.0, (3,)).spec)
    space.seed(0)
    sample = space.sample()
    assert isinstance(sample, jax.Array) and sample.shape == (3,) and space.contains(sample)
    assert rjax.space_from_spec(rlmesh.spaces.Discrete(3)).sample() in (0, 1, 2)


def test_a_jax_policy_drives_a_served_env_over_shared_memory_without_copies(serve) -> None:
    served = serve(CountEnv(limit=1000, width=4096))  # 16 KiB: zero-copy slab blocks
    pointers: list[int] = []
    held: list[jax.Array] = []

    def policy(obs: jax.Array) -> int:
        assert isinstance(obs, jax.Array) and obs.dtype == jnp.float32
        pointers.append(obs.unsafe_buffer_pointer())
        held.append(obs)
        return 1

    result = rjax.Model(policy).run(served.server.address, max_episodes=1, max_episode_steps=60)
    assert result.episodes[0].steps == 60
    mappings = {shm_mapping(p) for p in pointers}
    # A Unix session's slab is a sealed memfd (named /dev/shm segments are TCP's).
    assert all(m is not None and "/memfd:rlm-" in m for m in mappings), mappings
    assert all(p % 64 == 0 for p in pointers)
    # 60 observations held past the ring depth: every one still shows its own step.
    assert [float(obs[0]) for obs in held] == [float(i) for i in range(60)]
    assert len(set(pointers)) == 60  # no slot was reused while held


def test_jax_observations_held_across_steps_stay_unchanged(serve) -> None:
    served = serve(CountEnv(limit=10_000, width=4096))  # 16 KiB: zero-copy slab blocks
    env = served.client(rjax.RemoteEnv)
    assert env.data_plane == "shm"
    obs, _ = env.reset(seed=2)
    held = [env.step(1)[0] for _ in range(50)]
    for _ in range(100):
        env.step(0)
    assert [float(o[0]) for o in held] == [float(i + 1) for i in range(50)]
    assert held[10].unsafe_buffer_pointer() != held[11].unsafe_buffer_pointer()
    leases = served.server.stats()["sessions"][0]["leases"]
    assert leases >= 50
    del held, obs
    gc.collect()
    env.step(0)  # releases travel with this request
    assert served.server.stats()["sessions"][0]["leases"] <= 2
    frame = env.render()
    assert isinstance(frame, jax.Array) and frame.shape == (6, 8, 3) and frame.dtype == jnp.uint8


def test_numpy_and_jax_policies_reach_the_same_results_on_cartpole() -> None:
    def numpy_policy(obs: np.ndarray) -> int:
        return int(obs[2] + 0.5 * obs[3] > 0)

    def jax_policy(obs: jax.Array) -> jax.Array:
        return (obs[2] + 0.5 * obs[3] > 0).astype(jnp.int32)

    seeds = [0, 3, 11]
    numpy_result = rnp.Model(numpy_policy).run("CartPole-v1", seeds=seeds)
    jax_result = rjax.Model(jax_policy).run("CartPole-v1", seeds=seeds)
    summary = [(e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in numpy_result.episodes]
    assert summary == [(e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in jax_result.episodes]
    assert all(e.steps > 50 for e in numpy_result.episodes)


def test_jax_vector_client_and_batched_model(serve) -> None:
    from tests.envs import TinyVectorEnv

    served = serve(TinyVectorEnv(num_envs=2, limit=3))
    env = served.client(rjax.RemoteVectorEnv)
    obs, _ = env.reset(seed=[1, 2])
    assert isinstance(obs, jax.Array) and obs.shape == (2, 3)
    obs, rewards, terms, truncs, _ = env.step(jnp.array([1, 2]))
    assert rewards.dtype == jnp.float32 or rewards.dtype == jnp.float64
    assert obs[:, 2].tolist() == [1.0, 2.0]
    env.close()

    class Batched(rjax.Model):
        def predict_batch(self, observations):
            return jnp.zeros(observations.shape[0], jnp.int32)

    result = Batched().run(served.server.address, max_episodes=4)
    assert result.num_episodes == 4 and all(e.steps == 3 for e in result.episodes)


@pytest.mark.parametrize("name", X32_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4)])
def test_the_fast_import_matches_jnp_from_dlpack(name: str, shape: tuple[int, ...]) -> None:
    from rlmesh.backends import jax as backend

    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    source = (np.arange(int(np.prod(shape))) % 3).astype(dtype).reshape(shape)
    tensor = Tensor(source.tobytes(), shape, name)
    fast = rjax.asarray(tensor)
    assert callable(backend._fast)  # this jaxlib has the entry point, and it passed its check
    public = jnp.from_dlpack(tensor)
    assert isinstance(fast, jax.Array)
    assert fast.dtype == public.dtype and fast.shape == public.shape == shape
    assert np.array_equal(np.asarray(fast), np.asarray(public))
    if source.size:
        assert fast.unsafe_buffer_pointer() == tensor.address  # zero-copy, small leaves too
    del fast, public
    gc.collect()


def test_without_the_fast_import_the_public_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlmesh.backends import jax as backend

    monkeypatch.setattr(backend, "_fast", None)  # as on a jaxlib without the entry point
    tensor = Tensor(np.arange(6, dtype=np.float32).tobytes(), (2, 3), "float32")
    array = rjax.asarray(tensor)
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert array.unsafe_buffer_pointer() == tensor.address
    rjax.ensure_available()  # probes again on the next import
    assert backend._fast is False
    assert rjax.asarray(tensor).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert callable(backend._fast)


@pytest.mark.parametrize("name", X32_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4)])
def test_the_bytes_importer_copies_like_jnp_asarray(name: str, shape: tuple[int, ...]) -> None:
    from rlmesh.backends import jax as backend

    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    source = (np.arange(int(np.prod(shape))) % 3).astype(dtype).reshape(shape)
    make = backend.bytes_importer(shape, name)
    assert make is not None  # this jaxlib has the entry point, and it passed its check
    data = bytearray(source.tobytes())
    array = make(data)
    public = jnp.asarray(source)
    assert isinstance(array, jax.Array)
    assert array.dtype == public.dtype and array.shape == public.shape == shape
    assert array.sharding == public.sharding and array.committed == public.committed
    assert np.array_equal(np.asarray(array), source)
    if data:
        data[:] = bytes(len(data)) if source.any() else b"\x01" * len(data)
        assert np.array_equal(np.asarray(array), source)  # a copy: later writes to the bytes never show


def test_the_bytes_importer_leaves_64_bit_leaves_and_a_missing_entry_point_to_the_public_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlmesh.backends import jax as backend

    assert backend.bytes_importer((3,), "float64") is None  # JAX demotes it without x64 mode
    monkeypatch.setattr(backend, "_put", None)  # as on a jaxlib without the entry point
    assert backend.bytes_importer((3,), "float32") is None
    rjax.ensure_available()  # probes again on the next use
    assert backend.bytes_importer((3,), "float32") is not None


@pytest.mark.parametrize("name", [*X32_DTYPES, "float64", "int64", "uint64"])
@pytest.mark.parametrize("x64", [False, True])
def test_the_array_importer_copies_like_jnp_asarray_in_either_x64_mode(name: str, x64: bool) -> None:
    from jax._src import config

    from rlmesh.backends import jax as backend

    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    # Values that a 64-bit to 32-bit conversion rounds (float64) or wraps (int64, uint64).
    wide = {"float64": [0.1, 1e300, -2.5], "int64": [2**40 + 3, -1, 7], "uint64": [2**63 + 5, 1, 0]}
    source = np.array(wide.get(name, [0, 1, 2]), dtype=dtype)
    make = backend.array_importer((3,), name, committed=True)
    assert make is not None
    with config.enable_x64(x64):
        array = make(source.copy())
        with np.errstate(over="ignore"):
            public = jnp.asarray(source)
    assert isinstance(array, jax.Array) and array.committed
    assert array.dtype == public.dtype and array.shape == public.shape == (3,)
    assert array.sharding == public.sharding
    assert np.asarray(array).tobytes() == np.asarray(public).tobytes()
    assert backend.array_importer((3,), "complex64", committed=True) is None  # the public path's


def test_the_jax_vector_clients_small_arrays_match_the_numpy_clients(serve) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=1)
    jenv, nenv = served.client(rjax.RemoteVectorEnv), served.client(rnp.RemoteVectorEnv)
    assert jenv.fast_path and nenv.fast_path
    jenv.reset(seed=5)
    nenv.reset(seed=5)
    actions = np.array([0, 1, 1, 0])
    for _ in range(30):  # past the first episode ends: terminations set, rewards after resets
        jout = jenv.step(actions)
        nout = nenv.step(actions)
        for j, n in zip(jout[1:4], nout[1:4], strict=True):
            assert isinstance(j, jax.Array) and j.committed
            # float64 rewards: float32 here (x64 off), as JAX demotes them.
            assert j.dtype == jnp.asarray(n).dtype and np.array_equal(np.asarray(j), n)
    assert jenv._array_makers  # the fast maker took them, not the public path
    assert all(make is not None for make in jenv._array_makers.values())


def test_small_jax_observations_arrive_by_the_step_codec_as_the_numpy_clients(serve) -> None:
    served = serve("CartPole-v1")  # 16-byte observations, empty infos: the fixed-shape step codec
    jenv, nenv = served.client(rjax.RemoteEnv), served.client(rnp.RemoteEnv)
    assert jenv._conn.step_layout is not None  # the session took the codec
    # ... and its observations go straight from the record's bytes into jax.Arrays.
    assert jenv._compact_obs.__qualname__ == "bytes_importer.<locals>.make"
    jobs, _ = jenv.reset(seed=3)
    nobs, _ = nenv.reset(seed=3)
    held = [jobs]
    expected = [nobs]
    for i in range(60):
        jobs, jreward, jterm, jtrunc, _ = jenv.step(i % 2)
        nobs, nreward, nterm, ntrunc, _ = nenv.step(i % 2)
        assert isinstance(jobs, jax.Array) and jobs.dtype == jnp.float32 and jobs.shape == (4,)
        assert np.array_equal(np.asarray(jobs), nobs)
        assert (jreward, jterm, jtrunc) == (nreward, nterm, ntrunc)
        held.append(jobs)
        expected.append(nobs)
        if jterm or jtrunc:
            jenv.reset(seed=i)
            nenv.reset(seed=i)
    # Every array kept its own step's values while later steps came in.
    assert all(np.array_equal(np.asarray(j), n) for j, n in zip(held, expected, strict=True))
