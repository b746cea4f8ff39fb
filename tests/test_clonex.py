"""ClonEx: actor cloning, the best-return exploration switch at a task's start, and its refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DEVICE, make_model
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import VecEnv
from test_modules import learn_two_tasks, params_of

import clrl
from clrl import Task, TaskStream
from clrl.modules.clonex import as_task


def three_pendulums(task_id: str = "observed") -> TaskStream:
    return TaskStream(
        "three-pendulums",
        [Task(f"g{g}", "Pendulum-v1", attributes={"g": float(g)}) for g in (10, 15, 5)],
        steps_per_task=96,
        task_id=task_id,  # type: ignore[arg-type]
    )


class Ranked(clrl.ClonEx):
    """ClonEx whose earlier policies score the given returns on every new task."""

    def __init__(self, returns: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.returns = returns

    def _mean_return(self, policy: Any, env: VecEnv) -> float:
        return self.returns[policy.index]


def test_the_best_earlier_policy_acts_for_the_first_exploration_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = three_pendulums()
    model = SAC(
        "MlpPolicy",
        stream.make_vec_env(0, seed=1),
        learning_starts=16,
        batch_size=16,
        policy_kwargs={"net_arch": [16]},
        seed=0,
        device=DEVICE,
    )
    clonex = Ranked([-500.0, -100.0], budget=100, exploration_steps=40)
    acted: list[np.ndarray] = []
    original = type(model.policy)._predict

    def spy(self: Any, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        acted.append(observation.detach().cpu().numpy()[:, -3:].copy())
        return original(self, observation, deterministic)

    monkeypatch.setattr(type(model.policy), "_predict", spy)
    for i in range(3):
        model.set_env(stream.make_vec_env(i, seed=10 + i))
        acted.clear()
        model.learn(stream.steps(i), callback=clonex, reset_num_timesteps=False)
        if i == 1:  # one earlier policy: task 0's, whatever it scores
            assert clonex.explore_with == 0 and clonex.candidate_returns == [-500.0]
        if i >= 1:
            one_hots = np.concatenate(acted).argmax(1)
            assert (one_hots[:40] == clonex.explore_with).all()  # acted as the chosen earlier task
            assert (one_hots[40:] == i).all()  # then as itself
            assert len(one_hots) == stream.steps(i)
    assert clonex.explore_with == 1 and clonex.candidate_returns == [-500.0, -100.0]  # the better return
    assert "predict" not in model.policy.__dict__  # nothing left on the policy


def test_the_best_earlier_policy_replaces_the_random_warm_up_of_clrl_train(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = three_pendulums()
    model = SAC("MlpPolicy", stream.make_vec_env(0), learning_starts=50, batch_size=16, seed=0, device=DEVICE)
    acted: list[tuple[int, int]] = []  # (task, the one-hot the actor saw) of every acting step inside learn
    learning = {"task": -1}
    original = type(model.policy)._predict

    def spy(self: Any, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if learning["task"] >= 0:
            acted.append((learning["task"], int(observation[0, -3:].argmax())))
        return original(self, observation, deterministic)

    class Watch(clrl.ContinualModule):  # marks the steps of each task's training
        def on_task_start(self, task: clrl.TaskInfo) -> None:
            learning["task"] = task.index

        def on_task_end(self, task: clrl.TaskInfo) -> None:
            learning["task"] = -1

    monkeypatch.setattr(type(model.policy), "_predict", spy)
    clonex = Ranked([-100.0, -500.0], budget=100, exploration_steps=30)
    result = clrl.train(model, stream, [clonex, Watch()], eval_episodes=1)
    assert np.isfinite(result.matrix).all()
    for task in (1, 2):  # clrl.train's warm-up (50 steps) happens again; task 0's policy acts for 30 of them
        one_hots = [k for t, k in acted if t == task]
        assert one_hots[:30] == [0] * 30  # the best earlier policy, not uniform actions
        assert set(one_hots[30:]) == {task}  # then the policy itself, after the rest of the warm-up
        assert len(one_hots) == stream.steps(task) - (50 - 30)  # the other 20 warm-up steps: uniform


def test_the_earlier_policies_are_ranked_by_their_return_on_the_new_task() -> None:
    clonex = clrl.ClonEx(budget=100, exploration_steps=20, exploration_episodes=1)
    model = learn_two_tasks("sac", clonex)
    assert len(clonex.candidate_returns) == 1 and clonex.candidate_returns[0] < 0  # pendulum's returns
    assert clonex.explore_with == 0 and clonex.explored == 20
    assert model.num_timesteps == 2 * 128  # the candidates' episodes are not counted as training steps


def test_evaluation_sees_the_policy_itself_during_exploration(tmp_path: Path) -> None:
    model, stream = make_model("sac")
    clonex = Ranked([0.0], budget=100, exploration_steps=10_000)
    model.learn(stream.steps(0), callback=clonex)
    model.set_env(stream.make_vec_env(1, seed=11))
    with clrl.training_task(model, [clonex], 1, "g15"):
        assert "predict" in model.policy.__dict__  # exploring as task 0
        obs = stream.make_vec_env(1, seed=3).reset()
        with clonex.evaluating():
            assert "predict" not in model.policy.__dict__
            itself, _ = model.predict(obs, deterministic=True)
        exploring, _ = model.predict(obs, deterministic=True)
        as_zero, _ = model.predict(as_task(obs, 0, 2), deterministic=True)
        assert np.array_equal(exploring, as_zero) and not np.array_equal(exploring, itself)
        model.save(tmp_path / "exploring.zip")  # SB3's save copies __dict__: the patch stays out of it
        loaded = SAC.load(tmp_path / "exploring.zip", device=DEVICE)
        assert "_sample_action" not in loaded.__dict__ and "predict" not in loaded.policy.__dict__
    assert "predict" not in model.policy.__dict__  # the task scope ended: the patch is gone


def test_without_an_observed_task_id_there_is_nothing_to_choose() -> None:
    stream = three_pendulums(task_id="hidden")
    cls_model = SAC("MlpPolicy", stream.make_vec_env(0), learning_starts=16, seed=0, device=DEVICE)
    clonex = clrl.ClonEx(budget=50, exploration_steps=20, require_task_id=False)
    for i in range(2):
        cls_model.set_env(stream.make_vec_env(i, seed=10 + i))
        cls_model.learn(32, callback=clonex, reset_num_timesteps=False)
    assert clonex.explore_with == -1 and clonex.candidate_returns == []


def test_no_exploration_and_no_cloning_equals_plain_sb3() -> None:
    plain = params_of(learn_two_tasks("sac", None))
    clonex = params_of(learn_two_tasks("sac", clrl.ClonEx(budget=100, policy_coef=0.0, exploration_steps=0)))
    for name in plain:
        assert torch.equal(plain[name], clonex[name]), name


def test_exploration_state_survives_save_and_load(tmp_path: Path) -> None:
    clonex = Ranked([-3.0], budget=100, exploration_steps=20)
    model = learn_two_tasks("sac", clonex)
    _, (loaded,) = clrl.load(clrl.save(model, tmp_path / "m.zip", [clonex]))
    assert isinstance(loaded, clrl.ClonEx)
    assert (loaded.explore_with, loaded.explored, loaded.candidate_returns) == (0, 20, [-3.0])


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_clonex_refuses_what_is_not_an_off_policy_actor_critic(algo: str) -> None:
    model, stream = make_model(algo)
    with pytest.raises(clrl.ConfigError, match="off-policy actor-critic"):
        model.learn(stream.steps(0), callback=clrl.ClonEx())


@pytest.mark.parametrize(
    "kwargs",
    [{"exploration_steps": -1}, {"exploration_steps": True}, {"exploration_episodes": 0}, {"networks": "x"}],
)
def test_bad_clonex_hyperparameters_raise_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(clrl.ConfigError):
        clrl.ClonEx(**kwargs)
