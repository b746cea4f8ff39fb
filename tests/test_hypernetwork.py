"""HyperNetwork: every MLP generated from its task's embedding, starting as SB3's network; the output
regulariser keeps earlier tasks' generated weights near what they were; held embeddings and heads do not
move; a mixed batch runs each sample with its own task's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, TINY_RUN, cartpole_stream
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from test_masks import loads_per_task, online_outputs, task_observations, train_tasks

import clrl
from clrl.algorithms import optimizers
from clrl.cli import main
from clrl.modules.hypernetwork import HyperMLP

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3"]


def model_with(
    policy: Any, algo: str, seed: int = 0, net: dict[str, Any] | None = None, **overrides: Any
) -> tuple[BaseAlgorithm, clrl.TaskStream]:
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    policy_kwargs = {**kwargs.get("policy_kwargs", {}), "n_tasks": len(stream), **(net or {})}
    settings = {**kwargs, **overrides, "policy_kwargs": policy_kwargs}
    model = cls(policy(cls), stream.make_vec_env(0, seed=seed), seed=seed, device=DEVICE, **settings)
    return model, stream


def drift(module: clrl.HyperNetwork, task: int, before: dict[int, Any]) -> float:
    total = 0.0
    with torch.no_grad():
        for mlp in module.mlps():
            for (w, b), (w0, b0) in zip(mlp.generate(task), before[id(mlp)], strict=True):
                total += float((w - w0).square().sum() + (b - b0).square().sum())
    return total


@pytest.mark.parametrize("algo", ALGOS)
def test_every_task_starts_as_sb3s_network(algo: str) -> None:
    hyper, stream = model_with(clrl.hypernetwork_policy, algo)
    heads, _ = model_with(clrl.multihead_policy, algo)
    stepped = [id(p) for opt in optimizers(hyper).values() for g in opt.param_groups for p in g["params"]]
    assert len(stepped) == len(set(stepped))  # no parameter twice (a head inside a replaced MLP)
    for mlp in (m for m in hyper.policy.modules() if isinstance(m, HyperMLP)):
        in_optimiser = [id(p) in stepped for p in mlp.parameters()]
        assert all(in_optimiser) or not any(in_optimiser)  # a target's hypernetwork: none
    for task in range(len(stream)):
        obs = task_observations(hyper, task, len(stream))
        for a, b in zip(online_outputs(hyper, obs), online_outputs(heads, obs), strict=True):
            assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("algo", ALGOS)
def test_the_regulariser_keeps_earlier_tasks_generated_weights(algo: str) -> None:
    drifts = {}
    for beta in (0.0, 10.0):
        model, stream = model_with(clrl.hypernetwork_policy, algo, learning_rate=3e-3)
        module = clrl.HyperNetwork(beta=beta)
        kept: dict[int, Any] = {}
        embeddings: dict[int, torch.Tensor] = {}

        def record(
            i: int, module: clrl.HyperNetwork = module, kept: dict[int, Any] = kept, held: Any = embeddings
        ) -> None:
            if i == 0:
                with torch.no_grad():
                    for m in module.mlps():
                        kept[id(m)] = [(w.clone(), b.clone()) for w, b in m.generate(0)]
                        held[id(m)] = m.embeddings[0].detach().clone()

        train_tasks(model, stream, module, record)
        drifts[beta] = drift(module, 0, kept)
        for mlp in module.mlps():  # the earlier task's embedding is held
            assert torch.equal(mlp.embeddings[0], embeddings[id(mlp)])
    assert drifts[0.0] > 0 and drifts[10.0] < 0.2 * drifts[0.0]


def test_the_regulariser_is_the_papers() -> None:
    model, stream = model_with(clrl.hypernetwork_policy, "ppo")
    module = clrl.HyperNetwork(beta=0.5)
    train_tasks(model, stream, module)  # two tasks: the anchors of task 0 were taken when task 1 started
    module.trained = [0, 1]
    module.begin_task(model, clrl.TaskInfo(1, "flipped", 128))  # a revisit: task 0 is the only earlier one
    try:
        mlp = module.mlps()[0]
        with torch.no_grad():
            mlp.out.bias.add_(0.01)  # every generated entry moves by 0.01
        optimizer = model.policy.optimizer
        targets = module.target_parameters()
        stepped = [p for g in optimizer.param_groups for p in g["params"]]
        params = [p for p in stepped if any(p is q for q in targets.values())]
        names = [n for p in params for n, q in targets.items() if p is q]
        group = clrl.ParamGroup("policy.optimizer", optimizer, tuple(names), tuple(params))
        loss = module.regulariser(group)
        assert loss is not None
        # one earlier task, one hypernetwork moved: β · (its generated entries) · 0.01²
        assert torch.isclose(loss, torch.tensor(0.5 * mlp.generated_size() * 0.01**2), rtol=1e-3)
    finally:
        module.abort_task()


def test_a_mixed_batch_runs_each_sample_with_its_tasks_weights() -> None:
    model, stream = model_with(clrl.hypernetwork_policy, "dqn")
    module = clrl.HyperNetwork()
    train_tasks(model, stream, module)
    first, second = (task_observations(model, i, len(stream))[:4] for i in range(2))
    separate = torch.cat([online_outputs(model, first)[0], online_outputs(model, second)[0]])
    mixed = online_outputs(model, torch.cat([first, second]))[0]
    assert torch.allclose(mixed, separate, atol=1e-6)
    mlp = module.mlps()[0]
    assert not torch.allclose(*(torch.cat([w.flatten() for w, _ in mlp.generate(t)]) for t in (0, 1)))


def test_the_policy_loads_with_sb3_and_keeps_its_settings(tmp_path: Path) -> None:
    model, stream = model_with(clrl.hypernetwork_policy, "sac", net={"embedding_dim": 4, "hyper_hidden": 8})
    train_tasks(model, stream, clrl.HyperNetwork())
    loaded = loads_per_task(model, stream, tmp_path)
    mlps = [m for m in loaded.policy.modules() if isinstance(m, HyperMLP)]
    assert len(mlps) == 5  # the actor's, two critics' and their targets'
    assert all(m.hidden.in_features == 4 and m.hidden.out_features == 8 for m in mlps)


def test_refusals_come_before_training() -> None:
    stream = cartpole_stream()
    plain = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match=r"clrl.hypernetwork_policy\(PPO\)"):
        clrl.train(plain, stream, [clrl.HyperNetwork()], seed=0, eval_episodes=1)
    with pytest.raises(clrl.ConfigError, match="beta"):
        clrl.HyperNetwork(beta=-1.0)
    with pytest.raises(clrl.ConfigError, match="embedding_dim"):
        PPO(
            clrl.HyperActorCriticPolicy,
            stream.make_vec_env(0),
            policy_kwargs={"n_tasks": 2, "embedding_dim": 0},
        )


def test_the_command_line_builds_the_hypernetwork_policy(tmp_path: Path) -> None:
    code = main(["run", "cartpole-flip", "--method", "hypernetwork", "--logdir", str(tmp_path), *TINY_RUN])
    assert code == 0
    result = clrl.TrainResult.from_json(next(tmp_path.rglob("results.json")))
    assert result.matrix.shape == (5, 4) and np.isfinite(result.matrix).all()
