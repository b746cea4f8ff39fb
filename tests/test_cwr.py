"""CWR* and AR1: per-task heads zero at a task's first visit and consolidated by experience when it comes
back; AR1's trunk under SI's penalty, its heads left to CWR*."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE
from stable_baselines3.common.base_class import BaseAlgorithm

import clrl
from clrl.modules.multihead import TaskLinear


def multihead_model(algo: str, n_tasks: int = 2) -> tuple[BaseAlgorithm, clrl.TaskStream]:
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    policy_kwargs = {**kwargs.get("policy_kwargs", {}), "n_tasks": n_tasks}
    model = cls(
        clrl.multihead_policy(cls),
        stream.make_vec_env(0, seed=0),
        seed=0,
        device=DEVICE,
        **{**kwargs, "policy_kwargs": policy_kwargs},
    )
    return model, stream


def head_params(model: BaseAlgorithm, task: int) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{kind}": getattr(m, kind)[task].detach().clone()
        for name, m in model.policy.named_modules()
        if isinstance(m, TaskLinear)
        for kind in ("weight", "bias")
    }


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac", "td3"])
def test_a_new_tasks_heads_start_at_zero_and_train(algo: str) -> None:
    model, stream = multihead_model(algo)
    cwr = clrl.CWRStar()
    clrl.train(model, stream, [cwr], seed=0, eval_episodes=1)
    for task in (0, 1):
        trained = head_params(model, task)
        assert trained and any(bool(v.abs().sum() > 0) for v in trained.values())
    assert cwr.past == {0: stream.steps(0), 1: stream.steps(1)}


def test_a_returning_task_is_consolidated_by_its_experience() -> None:
    model, stream = multihead_model("ppo")
    cwr = clrl.CWRStar()
    steps = stream.steps(0)
    with clrl.training_task(model, [cwr], 0, "normal", steps):
        model.learn(steps, callback=cwr, reset_num_timesteps=False)
    cw = head_params(model, 0)  # after one visit: what the head trained to
    with clrl.training_task(model, [cwr], 0, "normal", steps // 2):
        model.learn(steps // 2, callback=cwr, reset_num_timesteps=False)
        tw = head_params(model, 0)  # this visit's training, before consolidation
    done = head_params(model, 0)
    current = model.num_timesteps - steps
    w_past = math.sqrt(steps / current)
    for key in cw:
        assert not torch.equal(tw[key], cw[key])  # the head trained again from cw
        assert torch.allclose(done[key], (cw[key] * w_past + tw[key]) / (w_past + 1), atol=1e-6)
    assert cwr.past[0] == steps + current


def test_without_zero_init_and_a_single_visit_it_trains_as_multihead() -> None:
    def run(module: clrl.ContinualModule) -> dict[str, torch.Tensor]:
        model, stream = multihead_model("ppo")
        clrl.train(model, stream, [module], seed=0, eval_episodes=1)
        return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}

    plain, cwr = run(clrl.MultiHead()), run(clrl.CWRStar(zero_init=False))
    for key in plain:
        assert torch.equal(plain[key], cwr[key]), key


def test_ar1_penalises_the_trunk_and_leaves_the_heads_to_cwr(tmp_path: Path) -> None:
    model, stream = multihead_model("ppo")
    ar1 = clrl.AR1(strength=1.0, networks="all")
    clrl.train(model, stream, [ar1], seed=0, eval_episodes=1, logdir=tmp_path / "run")
    heads = {id(p) for m in model.policy.modules() if isinstance(m, TaskLinear) for p in m.parameters()}
    regularised = ar1.regularised()
    assert regularised and not any(id(p) in heads for p in regularised.values())
    assert set(ar1.importance) == set(regularised)
    assert any(bool(v.abs().sum() > 0) for v in ar1.importance.values())
    assert ar1.heads.past == {0: stream.steps(0), 1: stream.steps(1)}
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("*.zip"))[-1]
    _, (loaded,) = clrl.load(checkpoint)
    assert isinstance(loaded, clrl.AR1) and loaded.heads.past == ar1.heads.past


def test_the_command_line_builds_the_multihead_policy(tmp_path: Path) -> None:
    from clrl.experiment import RunSpec, run_experiment

    tiny: dict[str, Any] = {
        "n_envs": 1,
        "n_steps": 32,
        "batch_size": 32,
        "n_epochs": 1,
        "policy_kwargs": {"net_arch": [8]},
    }
    for method in ("cwr-star", "ar1"):
        spec = RunSpec("cartpole-flip", method=method, steps=32, eval_episodes=1, hyperparameters=tiny)
        result = run_experiment(spec, tmp_path, log=lambda _: None)
        assert result.matrix.shape == (5, 4)


def test_a_plain_policy_or_a_hidden_task_id_is_refused() -> None:
    cls, stream_fn, kwargs = ALGO_SETUPS["ppo"]
    stream = stream_fn()
    model = cls("MlpPolicy", stream.make_vec_env(0, seed=0), device=DEVICE, **kwargs)
    for module in (clrl.CWRStar(), clrl.AR1()):
        with pytest.raises(clrl.ConfigError, match="multi-head policy"):
            clrl.train(model, stream, [module], eval_episodes=1)
    hidden = clrl.TaskStream("hidden", list(stream.tasks), steps_per_task=64, task_id="hidden")
    with pytest.raises(clrl.ConfigError, match="hides"):
        clrl.train(multihead_model("ppo")[0], hidden, [clrl.AR1()], eval_episodes=1)
