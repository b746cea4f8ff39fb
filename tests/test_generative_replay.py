"""Generative replay: a VAE of the states of every task so far (kept by its own replay), earlier tasks cloned
on generated states labelled by the previous policy, and no earlier data kept for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DEVICE, make_model
from test_modules import learn_two_tasks, params_of

import clrl
from clrl.modules.distill import Frozen, distillation_losses, network_outputs


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_weights_zero_equal_plain_sb3(algo: str) -> None:
    plain = params_of(learn_two_tasks(algo, None))
    module = clrl.GenerativeReplay(policy_coef=0.0, value_coef=0.0, generator_steps=20)
    replayed = params_of(learn_two_tasks(algo, module))
    assert module.generator is not None  # it did learn the states, without touching training's generators
    for name in plain:
        assert torch.equal(plain[name], replayed[name]), name


def two_clusters(module: clrl.GenerativeReplay, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the generator on states around one point, then on states around another, as two task ends
    would; returns its samples after each."""
    features = module._features()
    rng = np.random.default_rng(0)
    first = rng.normal(-1.0, 0.05, (2000, features)).astype(np.float32)
    second = rng.normal(1.0, 0.05, (2000, features)).astype(np.float32)
    samples = []
    for states in (first, second):
        module._train_generator(states)
        module.tasks_learned += 1
        assert module.generator is not None
        with torch.no_grad():
            samples.append(module.generator.sample(2000, module._torch_rng))
    return samples[0], samples[1]


def test_the_generator_keeps_generating_earlier_tasks_states() -> None:
    model, _ = make_model("ppo")
    module = clrl.GenerativeReplay(generator_steps=1500)
    module.init_callback(model)
    module.on_task_start(clrl.TaskInfo(0, "a"))
    after_first, after_second = two_clusters(module, model)
    near = lambda x, c: float(((x.mean(1) - c).abs() < 0.5).float().mean())  # noqa: E731
    assert near(after_first, -1.0) > 0.8  # it learned the first task's states
    # After the second task it generates both, in about the share of tasks (1/2 each), thanks to its replay.
    assert 0.25 < near(after_second, -1.0) < 0.75
    assert 0.25 < near(after_second, 1.0) < 0.75
    fresh = clrl.GenerativeReplay(generator_steps=1500)  # without an earlier generator: the second only
    fresh.init_callback(model)
    fresh.on_task_start(clrl.TaskInfo(0, "a"))
    fresh._train_generator(
        np.random.default_rng(1).normal(1.0, 0.05, (2000, module._features())).astype(np.float32)
    )
    assert fresh.generator is not None
    with torch.no_grad():
        assert near(fresh.generator.sample(2000, fresh._torch_rng), -1.0) < 0.05


def test_no_earlier_data_is_kept_and_fidelity_is_measured() -> None:
    model, stream = make_model("dqn")
    module = clrl.GenerativeReplay(holdout=8, generator_steps=50)
    clrl.train(model, stream, [module], seed=0, eval_episodes=1)
    assert module._reservoir is None  # emptied at each task end
    assert [len(h) for h in module._held] == [8, 8]  # the held-out states only measure the generator
    scalars = module.log_scalars()
    assert np.isfinite(scalars["fidelity"]) and scalars["fidelity"] >= 0
    assert np.isfinite(scalars["reconstruction"]) and scalars["generator_seconds"] > 0
    assert scalars["parameters"] == sum(p.numel() for p in module.generator.parameters())  # type: ignore[union-attr]


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_cloning_on_generated_states_keeps_the_labellers_policy(algo: str) -> None:
    def kl_after_second_task(module: clrl.GenerativeReplay) -> float:
        model, stream = make_model(algo, learning_rate=0.01)  # a policy that moves within 128 steps
        for i in range(2):
            model.set_env(stream.make_vec_env(i, seed=10 + i))
            model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
            if i == 0:
                teacher = Frozen(module.labeller, model.device)  # the policy at the end of task 0
        assert module.generator is not None
        with torch.no_grad():
            obs = module._clip(module.generator.sample(512, torch.Generator(DEVICE).manual_seed(5)))
            rows: Any = {"obs": obs, "action": torch.zeros(512, 1, device=model.device)}
            old = network_outputs(teacher, rows, ("actor",))  # type: ignore[arg-type]
            return float(distillation_losses(model, old, network_outputs(model, rows, ("actor",)))["actor"])

    free = kl_after_second_task(clrl.GenerativeReplay(policy_coef=0.0, value_coef=0.0, generator_steps=300))
    cloned = kl_after_second_task(clrl.GenerativeReplay(policy_coef=100.0, generator_steps=300))
    assert free > 0
    assert cloned < 0.5 * free


def test_save_and_load_restore_the_generator_and_the_labeller(tmp_path: Path) -> None:
    model, stream = make_model("ppo")
    module = clrl.GenerativeReplay(generator_steps=30)
    clrl.train(model, stream, [module], seed=0, eval_episodes=1, logdir=tmp_path / "run")
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("*.zip"))[-1]
    _, (loaded,) = clrl.load(checkpoint)
    assert isinstance(loaded, clrl.GenerativeReplay)
    loaded.on_task_start(clrl.TaskInfo(2, "next"))  # attached to a model: the networks are built
    assert loaded.generator is not None and loaded.labeller is not None and module.generator is not None
    for a, b in zip(
        module.generator.state_dict().values(), loaded.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert module.labeller is not None
    for a, b in zip(
        module.labeller.state_dict().values(), loaded.labeller.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert loaded.tasks_learned == 2 and [len(h) for h in loaded._held] == [len(h) for h in module._held]


def test_it_is_reproducible() -> None:
    first = params_of(learn_two_tasks("dqn", clrl.GenerativeReplay(generator_steps=20)))
    second = params_of(learn_two_tasks("dqn", clrl.GenerativeReplay(generator_steps=20)))
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"states": 0}, "states"), ({"beta": -1.0}, "beta"), ({"generator_lr": 0.0}, "generator_lr")],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(clrl.ConfigError, match=message):
        clrl.GenerativeReplay(**kwargs)
