"""Progressive columns: frozen columns bit for bit, laterals, growth per column, saving, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

import clrl
from clrl.modules.multihead import TaskRouter
from clrl.modules.progressive import ProgressiveMLP


def progressive_model(algo: str, stream: clrl.TaskStream | None = None) -> BaseAlgorithm:
    cls, make_stream, hyper = ALGO_SETUPS[algo]
    stream = stream or make_stream()
    kwargs = dict(hyper)
    policy_kwargs = {**kwargs.pop("policy_kwargs", {}), "n_tasks": len(stream)}
    return cls(
        clrl.progressive_policy(cls), stream.make_vec_env(0, seed=0), seed=0, device=DEVICE,
        policy_kwargs=policy_kwargs, **kwargs,
    )  # fmt: skip


def column_state(model: BaseAlgorithm, k: int) -> dict[str, torch.Tensor]:
    """Everything task ``k`` owns: its column's layers and adapters, and its heads (not the targets)."""
    return {
        name: p.detach().clone()
        for name, p in model.policy.named_parameters()
        if (f"columns.{k}." in name or f"adapters.{k}." in name or name.endswith(f"weight.{k}")
            or name.endswith(f"bias.{k}")) and "target" not in name
    }  # fmt: skip


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_a_finished_tasks_column_never_changes_and_its_return_neither(algo: str) -> None:
    model = progressive_model(algo)
    stream = ALGO_SETUPS[algo][1]()
    module = clrl.ProgressiveColumns()
    model.set_env(stream.make_vec_env(0, seed=0))
    model.learn(stream.steps(0), callback=module)
    first = column_state(model, 0)
    assert first
    evaluator = clrl.Evaluator(stream, n_episodes=2, seed=3)
    before = evaluator(model, [module], current_task=0)
    model.set_env(stream.make_vec_env(1, seed=1))
    if getattr(model, "replay_buffer", None) is not None:
        model.replay_buffer.reset()
    second_before = column_state(model, 1)
    model.learn(stream.steps(1), callback=module, reset_num_timesteps=False)
    after = column_state(model, 0)
    for name, value in first.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(v, second_before[k]) for k, v in column_state(model, 1).items())
    assert evaluator(model, [module], current_task=1)[0] == before[0]


def test_columns_read_earlier_columns_through_adapters_and_grow_linearly() -> None:
    router = TaskRouter(3)
    base = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh())
    mlp = ProgressiveMLP(base, router)
    sizes = [mlp.column_parameters(k) for k in range(3)]
    own = 4 * 8 + 8 + 8 * 8 + 8
    assert sizes == [own, own + 8 * 8, own + 2 * 8 * 8]  # one 8x8 adapter per earlier column
    x = torch.randn(5, 4)
    router.forced = 1
    with torch.no_grad():
        for adapter in mlp.adapters[1][0]:
            adapter.weight.normal_()
    out = mlp(x)
    with torch.no_grad():
        mlp.columns[0][0].weight.mul_(2.0)
    assert not torch.allclose(mlp(x), out)  # column 1 reads column 0
    router.forced = 0
    first = mlp(x)
    with torch.no_grad():
        mlp.columns[1][0].weight.mul_(2.0)
    torch.testing.assert_close(mlp(x), first)  # column 0 never reads column 1


def test_only_the_highest_task_of_a_batch_gets_gradients() -> None:
    router = TaskRouter(2)
    mlp = ProgressiveMLP(
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), router
    )
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    router.observe(mlp, (torch.cat([torch.randn(2, 1), one_hot], dim=1),))
    mlp(torch.randn(2, 3)).sum().backward()
    assert all(p.grad is None for p in mlp.columns[0].parameters())
    assert all(p.grad is not None for p in mlp.columns[1].parameters())


def test_saved_progressive_model_loads_with_every_column(
    tmp_path: Path, tiny_stream: clrl.TaskStream
) -> None:
    model = progressive_model("ppo", tiny_stream)
    module = clrl.ProgressiveColumns()
    result = clrl.train(model, tiny_stream, [module], eval_episodes=2)
    assert result.matrix[2, 0] == result.matrix[1, 0]
    clrl.save(model, tmp_path / "model.zip", [module])
    loaded, _ = clrl.load(tmp_path / "model.zip")
    plain = PPO.load(tmp_path / "model.zip", device=DEVICE)
    evaluator = clrl.Evaluator(tiny_stream, n_episodes=2, seed=clrl.runner.EVAL_SEED_OFFSET)
    np.testing.assert_array_equal(evaluator(loaded), result.matrix[-1])
    np.testing.assert_array_equal(evaluator(plain), result.matrix[-1])


def test_progressive_columns_refuse_other_policies(tiny_stream: clrl.TaskStream) -> None:
    cls = ALGO_SETUPS["ppo"][0]
    multihead = cls(
        clrl.MultiHeadActorCriticPolicy, tiny_stream.make_vec_env(0), policy_kwargs={"n_tasks": 2}
    )
    with pytest.raises(clrl.ConfigError, match="progressive policy"):
        clrl.train(multihead, tiny_stream, [clrl.ProgressiveColumns()])
    with pytest.raises(clrl.ConfigError, match="no progressive policy for qrdqn"):
        clrl.progressive_policy("qrdqn")
    with pytest.raises(clrl.ConfigError, match="per-sample gradients"):
        clrl.train(
            progressive_model("ppo", tiny_stream), tiny_stream, [clrl.ProgressiveColumns(), clrl.EWC()]
        )


def test_progressive_from_the_command_line(tmp_path: Path) -> None:
    from test_cli import TINY

    from clrl.cli import main

    assert main(["run", "cartpole-flip", "--method", "progressive", "--logdir", str(tmp_path), *TINY]) == 0
    run = tmp_path / "cartpole-flip" / "ppo-progressive" / "seed0"
    matrix = np.array(json.loads((run / "results.json").read_text())["matrix"])
    assert all(matrix[-1, j] == matrix[j + 1, j] for j in range(3))  # nothing is forgotten
    stats = json.loads((run / "results.json").read_text())["module_stats"]
    params = [s["progressive"]["params"] for s in stats]
    assert params == sorted(params) and params[0] < params[-1]  # later columns carry more adapters
    assert (
        main(["run", "cartpole-flip", "--method", "progressive+multihead", "--logdir", str(tmp_path), *TINY])
        == 2
    )
