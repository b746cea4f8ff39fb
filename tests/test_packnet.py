"""PackNet: pruning, frozen weights held bit for bit, per-task masks, saving, every supported algorithm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cartpole_stream, make_model, tiny_ppo

import clrl
from clrl.algorithms import policy_parameters
from clrl.modules.packnet import FREE


def snapshot(model: object, networks: str = "actor") -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy_parameters(model, networks).items()}  # type: ignore[arg-type]


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_earlier_tasks_keep_their_weights_and_returns_exactly(algo: str) -> None:
    model, stream = make_model(algo, seed=0)
    packnet = clrl.PackNet(prune=0.5, retrain=0.25)
    model.set_env(stream.make_vec_env(0, seed=0))
    model.learn(stream.steps(0), callback=packnet)
    after_first = snapshot(model)
    owned = {n: (o == 0) for n, o in packnet.owner.items()}
    assert all(bool(o.any()) for o in owned.values())
    evaluator = clrl.Evaluator(stream, n_episodes=2, seed=7)
    before = evaluator(model, [packnet], current_task=0)

    model.set_env(stream.make_vec_env(1, seed=1))
    model.learn(stream.steps(1), callback=packnet, reset_num_timesteps=False)
    now = snapshot(model)
    changed = False
    for name, mask in owned.items():
        torch.testing.assert_close(now[name][mask], after_first[name][mask], rtol=0, atol=0)
        changed |= not torch.equal(now[name][~mask], after_first[name][~mask])
    assert changed  # the second task did train the free weights
    after = evaluator(model, [packnet], current_task=1)
    assert after[0] == before[0]  # task 0 is evaluated with exactly the network it ended with


def test_pruning_releases_the_smallest_free_weights_of_each_matrix(tiny_stream: clrl.TaskStream) -> None:
    model = tiny_ppo(tiny_stream)
    packnet = clrl.PackNet(prune=0.25, retrain=0.0)
    model.learn(64, callback=packnet)
    params = policy_parameters(model, "actor")
    for name, owner in packnet.owner.items():
        p = params[name].detach()
        if p.dim() == 1:
            assert bool((owner == 0).all())  # the first task keeps biases whole
            continue
        released = owner == FREE
        assert int(released.sum()) == int(0.25 * p.numel())
        assert bool((p[released] == 0).all())
    # Pruning the second task: the smallest free entries by magnitude go, the owned ones are untouched.
    packnet.task_index = 1
    weight = params["mlp_extractor.policy_net.0.weight"]
    owner = packnet.owner["mlp_extractor.policy_net.0.weight"]
    with torch.no_grad():
        weight[owner == FREE] = torch.linspace(-1, 1, int((owner == FREE).sum()))
    before = weight.detach().clone()
    packnet.prune_task()
    newly = (owner == 1) | ((owner == FREE) & (before != 0))
    kept, released = owner == 1, (owner == FREE) & newly
    assert int(released.sum()) == int(0.25 * int(newly.sum()))
    assert before[released].abs().max() <= before[kept].abs().min()
    assert torch.equal(weight[owner == 0], before[owner == 0])


def test_set_task_masks_later_weights_and_undoes_it(tiny_stream: clrl.TaskStream) -> None:
    model = tiny_ppo(tiny_stream)
    packnet = clrl.PackNet()
    for i in range(2):
        model.set_env(tiny_stream.make_vec_env(i, n_envs=2, seed=i))
        model.learn(64, callback=packnet, reset_num_timesteps=False)
    full = snapshot(model)
    packnet.set_task(0)
    for name, p in policy_parameters(model, "actor").items():
        owner = packnet.owner[name]
        assert bool((p[owner != 0] == 0).all())
        assert torch.equal(p[owner == 0], full[name][owner == 0])
    packnet.set_task(1)
    for name, p in policy_parameters(model, "actor").items():
        assert torch.equal(p, full[name])


def test_saved_and_loaded_model_evaluates_every_task_as_before(tmp_path: Path) -> None:
    model, stream = make_model("dqn", seed=0)
    packnet = clrl.PackNet()
    result = clrl.train(model, stream, [packnet], eval_episodes=2)
    clrl.save(model, tmp_path / "model.zip", [packnet])
    loaded, modules = clrl.load(tmp_path / "model.zip")
    evaluator = clrl.Evaluator(stream, n_episodes=2, seed=clrl.runner.EVAL_SEED_OFFSET)
    np.testing.assert_array_equal(evaluator(loaded, modules, current_task=1), result.matrix[-1])
    obs = torch.as_tensor(np.stack([stream.make_env(1).reset(seed=s)[0] for s in range(5)]))
    for j in range(2):
        packnet.set_task(j)
        modules[0].set_task(j)
        torch.testing.assert_close(loaded.q_net(obs), model.q_net(obs), rtol=0, atol=0)


def test_packnet_in_clrl_train_never_forgets(tmp_path: Path) -> None:
    stream = cartpole_stream(steps=256)
    result = clrl.train(tiny_ppo(stream), stream, [clrl.PackNet()], logdir=tmp_path, eval_episodes=3)
    assert result.matrix[2, 0] == result.matrix[1, 0]
    assert result.module_stats[-1]["packnet"]["free"] == pytest.approx(0.25, abs=0.01)
    resumed_from = clrl.load(tmp_path / "checkpoints" / "task02-flipped.zip")[1][0]
    assert isinstance(resumed_from, clrl.PackNet) and resumed_from.task_index == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prune": 1.0}, "must be < 1"),
        ({"prune": -0.1}, r"in \[0, 1\]"),
        ({"retrain": 2}, r"in \[0, 1\]"),
        ({"networks": "critic"}, "networks"),
        ({"require_task_id": "yes"}, "true or false"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(clrl.ConfigError, match=message):
        clrl.PackNet(**kwargs)


def test_hidden_task_id_is_refused_unless_asked() -> None:
    stream = cartpole_stream(task_id="hidden")
    with pytest.raises(clrl.ConfigError, match="hides it"):
        clrl.train(tiny_ppo(stream), stream, [clrl.PackNet()])
    result = clrl.train(tiny_ppo(stream), stream, [clrl.PackNet(require_task_id=False)], eval_episodes=2)
    assert result.matrix[2, 0] == result.matrix[1, 0]


def test_packnet_runs_from_the_command_line(tmp_path: Path) -> None:
    from test_cli import TINY

    from clrl.cli import main

    args = [
        "run",
        "cartpole-flip",
        "--method",
        "packnet",
        "--method-arg",
        "prune=0.3",
        "--logdir",
        str(tmp_path),
    ]
    assert main([*args, *TINY]) == 0
    saved = json.loads((tmp_path / "cartpole-flip" / "ppo-packnet" / "seed0" / "results.json").read_text())
    assert saved["config"]["modules"][0]["config"]["prune"] == 0.3
    matrix = np.array(saved["matrix"])
    assert all(matrix[-1, j] == matrix[j + 1, j] for j in range(3))  # no task forgets


def test_frozen_entries_have_no_gradient_when_sb3_clips(monkeypatch: pytest.MonkeyPatch) -> None:
    model, stream = make_model("ppo")
    packnet = clrl.PackNet(networks="all", retrain=0.0)
    seen: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def checking(parameters, max_norm, *args, **kwargs):  # type: ignore[no-untyped-def]
        params = list(parameters)
        names = {id(p): n for n, p in packnet.target_parameters().items()}
        for p in params:
            held = packnet._held.get(names.get(id(p), ""))
            if held is not None and p.grad is not None and bool(held.any()):
                seen.append(float(p.grad[held].abs().max()))
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", checking)
    clrl.train(model, stream, [packnet], eval_episodes=1)
    assert seen and max(seen) == 0.0  # held entries are masked before clipping, so they scale nothing
