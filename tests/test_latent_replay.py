"""Latent replay: activations of a hidden layer stored instead of states, the layers above replayed from
them, the layers below frozen (or slowed) after the first task."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import DEVICE, make_model
from test_modules import learn_two_tasks, params_of

import clrl
from clrl.modules.distill import distillation_losses, network_outputs
from clrl.modules.latent_replay import _splits

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3"]


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("algo", ALGOS)
def test_the_layers_above_the_cut_compute_the_networks_outputs(algo: str, layer: int) -> None:
    model, _ = make_model(algo)
    model.learn(64)
    obs = torch.as_tensor(
        np.stack([model.observation_space.sample() for _ in range(32)]), device=DEVICE, dtype=torch.float32
    )
    rows: Any = {"obs": obs, "action": torch.zeros(32, 1, device=DEVICE)}
    with torch.no_grad():
        for part, split in _splits(model, layer).items():
            whole = network_outputs(model, rows, (part,))
            cut = split.upper(split.lower(obs))
            assert set(cut) == set(whole)
            for key in whole:
                assert torch.allclose(cut[key], whole[key], atol=1e-6), (part, key)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_memory_holds_the_activations_the_network_still_computes(algo: str) -> None:
    states: list[np.ndarray] = []

    class Seen(clrl.LatentReplay):
        def on_task_end(self, task: clrl.TaskInfo) -> None:
            assert self.memory.current is not None
            states.append(self.memory.current.rows()["obs"])  # the states, before they are dropped
            super().on_task_end(task)

    model, stream = make_model(algo)
    module = Seen(layer=1, budget="all")  # nothing subsampled: rows stay in step with the states
    clrl.train(model, stream, [module], seed=0, eval_episodes=1)
    first = module.memory.tasks[0].rows()
    assert not any(k.startswith("obs") for k in first)
    parts = ("actor", "critic") if algo == "ppo" else ("actor",)
    assert {k for k in first if k.startswith("lat.")} == {f"lat.{p}" for p in parts}
    # After the second task, the frozen layers below the cut still map task 0's states to what was stored.
    obs = torch.as_tensor(states[0], device=DEVICE)
    with torch.no_grad():
        for part, split in _splits(model, 1).items():
            now = split.lower(obs).cpu().numpy()
            assert now.shape[1] == 16 and np.allclose(now, first[f"lat.{part}"], atol=1e-6), part


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_layers_below_the_cut_are_frozen_after_the_first_task(algo: str) -> None:
    module = clrl.LatentReplay(layer=1, budget=200)
    model, stream = make_model(algo)
    model.set_env(stream.make_vec_env(0, seed=10))
    model.learn(stream.steps(0), callback=module)
    below = {id(p): p for split in _splits(model, 1).values() for p in split.below}
    frozen = {k: p.detach().clone() for k, p in below.items()}
    others = {n: p.detach().clone() for n, p in model.policy.named_parameters() if id(p) not in below}
    model.set_env(stream.make_vec_env(1, seed=11))
    model.learn(stream.steps(1), callback=module, reset_num_timesteps=False)
    assert frozen and all(torch.equal(p, frozen[k]) for k, p in below.items())
    moved = {
        n: p for n, p in model.policy.named_parameters() if n in others and not torch.equal(p, others[n])
    }
    assert moved  # the layers above trained


def test_a_scale_of_one_and_zero_weights_equal_plain_sb3() -> None:
    plain = params_of(learn_two_tasks("ppo", None))
    module = clrl.LatentReplay(policy_coef=0.0, value_coef=0.0, below_lr_scale=1.0, budget=200)
    replayed = params_of(learn_two_tasks("ppo", module))
    for name in plain:
        assert torch.equal(plain[name], replayed[name]), name


def test_a_scale_between_takes_that_share_of_each_step() -> None:
    model, _ = make_model("ppo")
    module = clrl.LatentReplay(layer=1, below_lr_scale=0.25)
    module.init_callback(model)
    group: Any = type("Group", (), {"params": list(model.policy.parameters())})()
    below = _splits(model, 1)["actor"].below
    module.adjust_gradients(group)
    before = [p.detach().clone() for p in below]
    with torch.no_grad():
        for p in below:
            p.add_(1.0)  # the optimiser's step
    module.after_update(group)
    for p, b in zip(below, before, strict=True):
        assert torch.allclose(p, b + 0.25)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_replaying_activations_keeps_the_old_policy(algo: str) -> None:
    def kl_after_second_task(module: clrl.LatentReplay) -> float:
        model, stream = make_model(algo, learning_rate=0.01)  # a policy that moves within 128 steps
        for i in range(2):
            model.set_env(stream.make_vec_env(i, seed=10 + i))
            model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
        rows = module.memory.tasks[0].rows()
        split = _splits(model, module.layer)["actor"]
        old = {k[4:]: torch.as_tensor(v) for k, v in rows.items() if k.startswith("out.")}
        with torch.no_grad():
            new = split.upper(torch.as_tensor(rows["lat.actor"], device=DEVICE))
            return float(distillation_losses(model, {k: v for k, v in old.items() if k in new}, new)["actor"])

    free = kl_after_second_task(
        clrl.LatentReplay(budget=200, policy_coef=0.0, value_coef=0.0, below_lr_scale=1.0)
    )
    cloned = kl_after_second_task(clrl.LatentReplay(budget=200, policy_coef=100.0, batch_size=64))
    assert free > 0
    assert cloned < 0.5 * free


@pytest.mark.parametrize(
    ("algo", "kwargs", "message"),
    [
        ("ppo", {"layer": 2}, "has 1 hidden layer"),
        ("recurrentppo", {}, "feed-forward"),
        ("ppo", {"layer": -1}, "layer"),
        ("ppo", {"below_lr_scale": 2.0}, "below_lr_scale"),
    ],
)
def test_what_it_cannot_cut_is_refused_before_training(
    algo: str, kwargs: dict[str, Any], message: str
) -> None:
    model, stream = make_model(algo)
    with pytest.raises(clrl.ConfigError, match=message):
        clrl.train(model, stream, [clrl.LatentReplay(**kwargs)], eval_episodes=1)
    assert model.num_timesteps == 0
