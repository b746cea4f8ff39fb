"""LwF: the teacher is frozen, strength 0 is plain SB3, the loss pulls toward the teacher, state is saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE, cartpole_stream, make_model
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from test_modules import params_of

import clrl
from clrl.algorithms import optimizers
from clrl.modules.distill import Frozen, distillation_losses, network_outputs

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3", "recurrentppo", "qrdqn", "tqc"]
ACTOR_PARTS = ("actor",)


def two_tasks(algo: str, lwf: clrl.LwF | None) -> BaseAlgorithm:
    model, stream = make_model(algo)
    clrl.train(model, stream, [lwf] if lwf else [], seed=0, eval_episodes=1)
    return model


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_strength_zero_equals_plain_sb3(algo: str) -> None:
    plain = params_of(two_tasks(algo, None))
    lwf = params_of(two_tasks(algo, clrl.LwF(strength=0.0, networks="all")))
    for name in plain:
        assert torch.equal(plain[name], lwf[name]), name


@pytest.mark.parametrize("algo", ALGOS)
def test_teacher_is_the_frozen_policy_of_the_previous_task(algo: str) -> None:
    model, stream = make_model(algo)
    lwf = clrl.LwF(strength=1.0, networks="all")
    model.set_env(stream.make_vec_env(0, seed=10))
    model.learn(stream.steps(0), callback=lwf)
    first = lwf.teacher
    assert first is not None
    at_end = {k: v.clone() for k, v in model.policy.state_dict().items()}
    stepped = {id(p) for opt in optimizers(model).values() for g in opt.param_groups for p in g["params"]}
    assert not stepped & {id(p) for p in first.parameters()}
    model.set_env(stream.make_vec_env(1, seed=11))
    model.learn(stream.steps(1), callback=lwf, reset_num_timesteps=False)
    teacher = dict(first.state_dict())
    for name, value in at_end.items():
        assert torch.equal(teacher[name], value), name  # task 1's training never moved the teacher
    assert all(not p.requires_grad and p.grad is None for p in first.parameters())
    assert not first.training
    assert lwf.teacher is not first  # the end of task 1 made the next teacher
    assert all(torch.equal(v, model.policy.state_dict()[k]) for k, v in lwf.teacher.state_dict().items())
    scalars = lwf.log_scalars()
    assert scalars["actor_loss"] > 0 and np.isfinite(list(scalars.values())).all()
    if algo in ("sac", "td3", "tqc", "ppo", "a2c", "recurrentppo"):
        assert scalars["critic_loss"] > 0  # networks="all" distils the values/critics too


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_distillation_keeps_the_policy_near_the_teacher(algo: str) -> None:
    def divergence(strength: float) -> float:
        """KL(teacher of task 0 ‖ policy) after task 1, on task 1's states."""
        model, stream = make_model(algo, learning_rate=0.01)  # a policy that moves within 128 steps
        lwf = clrl.LwF(strength=strength)
        model.set_env(stream.make_vec_env(0, seed=10))
        model.learn(stream.steps(0), callback=lwf)
        first = lwf.teacher
        model.set_env(stream.make_vec_env(1, seed=11))
        model.learn(stream.steps(1), callback=lwf, reset_num_timesteps=False)
        rows = lwf.current_states(256)
        with torch.no_grad():
            old = network_outputs(Frozen(first, model.device), rows, ACTOR_PARTS)  # type: ignore[arg-type]
            return float(distillation_losses(model, old, network_outputs(model, rows, ACTOR_PARTS))["actor"])

    free, held = divergence(0.0), divergence(100.0)
    assert held < 0.5 * free, (held, free)


def test_teacher_survives_save_and_load(tmp_path: Path) -> None:
    model, stream = make_model("ppo")
    lwf = clrl.LwF(strength=2.0, batch_size=16)
    model.learn(stream.steps(0), callback=lwf)
    clrl.save(model, tmp_path / "m.zip", [lwf])
    loaded, (restored,) = clrl.load(tmp_path / "m.zip")
    assert isinstance(restored, clrl.LwF) and restored.strength == 2.0 and restored.batch_size == 16
    state, original = restored.state_dict()["teacher"], lwf.state_dict()["teacher"]
    assert set(state) == set(original) and all(torch.equal(state[k], original[k]) for k in state)
    loaded.set_env(stream.make_vec_env(1, seed=1))
    loaded.learn(stream.steps(1), callback=restored, reset_num_timesteps=False)  # trains with the teacher
    assert restored.teacher is not None and restored.log_scalars()["actor_loss"] >= 0


def test_bad_arguments() -> None:
    with pytest.raises(clrl.ConfigError, match="strength"):
        clrl.LwF(strength=-1.0)
    with pytest.raises(clrl.ConfigError, match="batch_size"):
        clrl.LwF(batch_size=0)
    with pytest.raises(clrl.ConfigError, match="networks"):
        clrl.LwF(networks="critic")  # type: ignore[arg-type]


def test_a_policy_routed_by_task_is_refused_before_training() -> None:
    """multihead+lwf: the teacher would distil the new task's untrained head (Li & Hoiem distil the old)."""
    stream = cartpole_stream()
    policy = clrl.multihead_policy(PPO)
    model = PPO(
        policy, stream.make_vec_env(0), n_steps=32, batch_size=32, policy_kwargs={"n_tasks": 2}, device=DEVICE
    )
    with pytest.raises(clrl.ConfigError, match="LwF with such a policy is not supported"):
        clrl.train(model, stream, [clrl.LwF()], eval_episodes=1)
    assert model.num_timesteps == 0
