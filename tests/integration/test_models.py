"""The model runtime: Model, run, session, RunResult, hooks, caps and counting rules."""

from __future__ import annotations

import io
import time
import warnings
from typing import Any

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import EpisodeResult, RunHooks, RunResult, models as M
from rlmesh._results import Progress
from tests.conftest import run_python
from tests.envs import FailingEnv, TinyEnv, TinyVectorEnv

pytestmark = pytest.mark.timeout(90)


class EndlessEnv(TinyEnv):
    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        return 0, 1.0, False, False, {}


class SuccessEnv(TinyEnv):
    """Ends after one step; the action chooses which success key the info carries."""

    def __init__(self) -> None:
        super().__init__(limit=1)
        self.episode = 0

    def reset(self, *, seed=None, options=None):
        self.episode += 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        infos = [{"is_success": False, "success": True}, {"success": True}, {}]
        return 0, 1.0, self.episode != 3, self.episode == 3, infos[(self.episode - 1) % 3]


def test_seeds_set_the_episode_count_and_reach_the_env(serve) -> None:
    env = TinyEnv(limit=3)
    served = serve(env)
    result = rlmesh.Model(lambda obs: 1).run(served.server.address, seeds=[7, 8])
    assert result.num_episodes == 2 and [e.seed for e in result.episodes] == [7, 8]
    assert env.seen_seeds[:2] == [7, 8]
    for i, episode in enumerate(result.episodes):
        assert (episode.index, episode.steps, episode.reward) == (i, 3, 3.0)
        assert episode.terminated and not episode.truncated
        assert episode.predict_ms > 0 and episode.step_ms > 0 and episode.duration_s > 0
    assert result.total_steps == 6 and result.mean_reward == 3.0
    assert repr(result) == "RunResult(episodes=2, mean_reward=3.000, total_steps=6)"


@pytest.mark.parametrize(
    ("seeds", "max_episodes", "expected"),
    [
        ([1, 2], 4, [1, 2, None, None]),
        ([5, 6, 7], 1, [5]),
        (None, 3, [None, None, None]),
        (None, None, [None]),
        ([4], None, [4]),
        ([], None, []),
        ([3], 0, []),
    ],
)
def test_counting_rules(serve, seeds, max_episodes, expected) -> None:
    env = TinyEnv(limit=1)
    served = serve(env)
    result = rlmesh.run(lambda obs: 0, served.server.address, seeds=seeds, max_episodes=max_episodes)
    assert [e.seed for e in result.episodes] == expected
    assert env.seen_seeds == expected
    if not expected:
        assert result.num_episodes == 0 and result.mean_reward == 0.0 and result.success_rate == 0.0


def test_success_rules_and_the_single_warning(serve) -> None:
    served = serve(SuccessEnv())
    result = rlmesh.run(lambda obs: 0, served.server.address, max_episodes=3)
    assert [e.success for e in result.episodes] == [False, True, None]
    assert [e.succeeded for e in result.episodes] == [False, True, False]  # the third: truncated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert result.success_rate == pytest.approx(1 / 3)
    no_signal = RunResult(
        (EpisodeResult(0, None, 1, 1.0, True, False), EpisodeResult(1, None, 1, 1.0, False, True))
    )
    with pytest.warns(UserWarning, match="fell back to `terminated`") as caught:
        assert no_signal.success_rate == 0.5
    assert len(caught) == 1
    mixed = RunResult(
        (
            EpisodeResult(0, None, 1, 0.0, True, False, success=False),
            EpisodeResult(1, None, 1, 0.0, False, True, success=True),
            EpisodeResult(2, None, 1, 0.0, True, False),
        )
    )
    assert mixed.success_rate == pytest.approx(2 / 3)


def test_caps_truncate_and_invalid_caps_are_value_errors(serve, monkeypatch) -> None:
    served = serve(EndlessEnv())
    address = served.server.address
    result = rlmesh.run(lambda obs: 0, address, max_episodes=2, max_episode_steps=4)
    assert [(e.steps, e.truncated, e.terminated) for e in result.episodes] == [(4, True, False)] * 2
    timed = rlmesh.run(lambda obs: 0, address, max_episode_seconds=0.05)
    assert timed.episodes[0].truncated and 0.04 < timed.episodes[0].duration_s < 2
    monkeypatch.setattr(M, "MAX_EPISODE_STEPS", 25)  # the 100,000-step cap, scaled down
    capped = rlmesh.run(lambda obs: 0, address)
    assert capped.episodes[0].steps == 25 and capped.episodes[0].truncated
    for bad in (
        {"max_episode_steps": 0},
        {"max_episode_seconds": 0},
        {"max_episode_seconds": -1.0},
        {"max_episodes": -1},
        {"seeds": [-1]},
        {"seeds": [1.5]},
    ):
        with pytest.raises(ValueError):
            rlmesh.run(lambda obs: 0, address, **bad)


def test_hooks_fire_in_order_with_indices_and_seeds(serve) -> None:
    served = serve(TinyEnv(limit=2))
    calls: list[tuple] = []

    class Hooks(RunHooks):
        def on_run_start(self, session) -> None:
            calls.append(("run_start", type(session).__name__))

        def on_episode_start(self, *, episode, seed) -> None:
            calls.append(("episode_start", episode, seed))

        def on_step(self, event) -> None:
            calls.append(("step", event.episode, event.step, event.observation, event.action, event.reward))

        def on_episode_end(self, result) -> None:
            calls.append(("episode_end", result.index, result.steps))

        def on_run_end(self, result) -> None:
            calls.append(("run_end", result.num_episodes))

    rlmesh.run(lambda obs: 1, served.server.address, seeds=[3, 4], hooks=Hooks())
    # Steps count from 0 and carry the observation the action was chosen from:
    # TinyEnv resets to 0, then observes the last action.
    assert calls == [
        ("run_start", "Session"),
        ("episode_start", 0, 3),
        ("step", 0, 0, 0, 1, 1.0),
        ("step", 0, 1, 1, 1, 1.0),
        ("episode_end", 0, 2),
        ("episode_start", 1, 4),
        ("step", 1, 0, 0, 1, 1.0),
        ("step", 1, 1, 1, 1, 1.0),
        ("episode_end", 1, 2),
        ("run_end", 2),
    ]


def test_hook_errors_abort_and_the_original_exception_wins(serve) -> None:
    address = serve(TinyEnv(limit=2)).server.address
    ended: list[int] = []

    class Boom(RunHooks):
        def on_step(self, event) -> None:
            if event.episode == 1:
                raise KeyError("hook failed")

        def on_run_end(self, result) -> None:
            ended.append(result.num_episodes)
            raise RuntimeError("run_end failed too")

    with pytest.raises(KeyError, match="hook failed") as caught:
        rlmesh.run(lambda obs: 0, address, max_episodes=3, hooks=Boom())
    assert ended == [1] and caught.value.partial_result.num_episodes == 1

    class LoneRunEnd(RunHooks):
        def on_run_end(self, result) -> None:
            raise RuntimeError("only run_end failed")

    with pytest.raises(RuntimeError, match="only run_end failed"):
        rlmesh.run(lambda obs: 0, address, hooks=LoneRunEnd())


def test_an_env_error_mid_run_keeps_the_finished_episodes(serve) -> None:
    served = serve(FailingEnv(limit=1))
    actions = iter([0, 0, 1])
    with pytest.raises(rlmesh.RemoteError, match="division by zero") as caught:
        rlmesh.run(lambda obs: next(actions), served.server.address, max_episodes=5)
    partial = caught.value.partial_result
    assert partial.num_episodes == 2 and all(e.steps == 1 for e in partial.episodes)
    assert any("partial_result" in note for note in caught.value.__notes__)


def test_close_env_for_addresses_handles_and_local_envs(serve) -> None:
    order: list[str] = []
    model = rlmesh.Model(
        lambda obs: 0,
        on_episode_end=lambda: order.append("episode_end"),
        on_close=lambda: order.append("close"),
    )
    served = serve(TinyEnv(limit=1), options=rlmesh.ServeOptions(allow_remote_shutdown=True))
    model.run(served.server.address, close_env=True)
    assert order == ["episode_end", "close"]
    assert served.server.wait(5)
    handle_server = serve(TinyEnv(limit=1), options=rlmesh.ServeOptions(allow_remote_shutdown=True))
    handle = handle_server.client()
    rlmesh.run(lambda obs: 0, handle, close_env=True)
    assert handle_server.server.wait(5)
    local = TinyEnv(limit=1)
    rlmesh.run(lambda obs: 0, local)
    assert local.close_calls == 0
    rlmesh.run(lambda obs: 0, local, close_env=True)
    assert local.close_calls == 1


def test_local_targets_are_served_for_the_run() -> None:
    result = rnp.Model(lambda obs: int(obs[2] + 0.5 * obs[3] > 0)).run("CartPole-v1", seeds=[0, 1])
    assert result.num_episodes == 2 and all(e.steps > 100 for e in result.episodes)
    factory_result = rlmesh.run(lambda obs: 0, lambda: TinyEnv(limit=2), max_episodes=2)
    assert [e.steps for e in factory_result.episodes] == [2, 2]


def test_model_subclasses_hooks_and_context(serve) -> None:
    calls: list[str] = []

    class Policy(rnp.Model):
        def load(self) -> None:
            calls.append("load")

        def reset(self) -> None:
            calls.append("reset")

        def predict(self, observation, context=None):
            calls.append(f"predict seed={context['episode_seed']} id={bool(context['episode_id'])}")
            return 0

        def close(self) -> None:
            calls.append("close")

    served = serve(TinyEnv(limit=1))
    Policy().run(served.server.address, seeds=[9, 10])
    assert calls == ["load", "reset", "predict seed=9 id=True", "reset", "predict seed=10 id=True", "close"]
    with pytest.raises(TypeError, match="predict"):
        rlmesh.Model()

    class Nothing(rlmesh.Model):
        pass

    with pytest.raises(TypeError):
        Nothing()
    seen: list[Any] = []
    rlmesh.run(
        lambda obs, context: seen.append(context["episode_seed"]) or 0, served.server.address, seeds=[5]
    )
    assert seen == [5]


def test_vector_envs_give_the_whole_batch_to_one_call(serve) -> None:
    served = serve(TinyVectorEnv(num_envs=3, limit=2))

    class Batched(rnp.Model):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[tuple[int, ...]] = []

        def predict_batch(self, observations):
            self.batches.append(observations.shape)
            return np.full(len(observations), 1)

    model = Batched()
    result = model.run(served.server.address, max_episodes=7)
    assert result.num_episodes == 7 and all(e.steps == 2 for e in result.episodes)
    assert set(model.batches) == {(3, 3)} and len(model.batches) >= 5
    batches: list[Any] = []
    plain = rnp.Model(lambda obs: batches.append(obs.shape) or np.full(len(obs), 2))
    lanes = plain.run(served.server.address, seeds=[1, 2, 3])
    assert [e.seed for e in lanes.episodes] == [1, 2, 3] and set(batches) == {(3, 3)}
    assert len(batches) == 2  # one call per step: every lane ends after 2 steps
    # Caps cut single lanes (seeds past the first episode of each lane: test_model_vector_seeds.py).
    cut = plain.run(served.server.address, max_episodes=3, max_episode_steps=1)
    assert [(e.steps, e.terminated, e.truncated) for e in cut.episodes] == [(1, False, True)] * 3


def test_random_sample_policy(serve) -> None:
    served = serve(TinyEnv(limit=4))
    result = rlmesh.run(rlmesh.RANDOM_SAMPLE, served.server.address, max_episodes=2)
    assert result.num_episodes == 2 and result.total_steps == 8


def test_hand_driven_session(serve) -> None:
    served = serve(TinyEnv(limit=2))
    order: list[str] = []
    model = rlmesh.Model(
        lambda obs: 1, on_episode_end=lambda: order.append("end"), on_close=lambda: order.append("close")
    )
    with rlmesh.session(model, served.server.address) as session:
        assert session.done
        obs, info = session.reset(seed=1)
        assert not session.done and "episode_ids" in info
        obs, reward, terminated, truncated, info = session.step(session.predict(obs))
        assert obs == 1 and not terminated
        session.reset(seed=2)  # ends the first episode early
        assert order == ["end"]
        session.step(1)
        _, _, terminated, _, _ = session.step(1)
        assert terminated and session.done and order == ["end", "end"]
        result = session.run(seeds=[5])  # Session.run leaves the session open
        assert result.num_episodes == 1 and not session.closed
    assert order == ["end", "end", "end", "close"]
    session.close()
    assert order.count("close") == 1
    for call in (
        lambda: session.reset(),
        lambda: session.step(0),
        lambda: session.run(),
        lambda: session.done,
    ):
        with pytest.raises(RuntimeError, match="session is closed"):
            call()
    with pytest.raises(TypeError):
        rlmesh.Session()
    vector = serve(TinyVectorEnv(num_envs=4))
    with pytest.raises(ValueError, match="num_envs=4"):
        rlmesh.session(rlmesh.Model(lambda obs: 0), vector.server.address)


def test_a_quiet_run_never_imports_tqdm() -> None:
    out = run_python(
        "import sys, rlmesh.numpy as rnp\n"
        "result = rnp.Model(lambda obs: 0).run('CartPole-v1', seeds=[0, 1])\n"  # stderr is a pipe
        "print(result.num_episodes, 'tqdm' in sys.modules)"
    )
    assert out.split() == ["2", "False"]


def test_progress_line_on_a_terminal(monkeypatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    stream = Tty()
    progress = Progress(stream, None, 10)
    progress.update(1, 50)
    assert stream.getvalue() == ""  # nothing for short runs
    clock[0] += 3.0
    progress.update(2, 3000)
    assert "2/10" in stream.getvalue() and "3,000 steps, 1,000 steps/s" in stream.getvalue()
    progress.finish(10, 3000)
    assert stream.getvalue().endswith("\n")
    quiet = io.StringIO()
    silent = Progress(quiet, None, 10)
    clock[0] += 10
    silent.update(1, 1)
    silent.finish(1, 1)
    assert quiet.getvalue() == ""
