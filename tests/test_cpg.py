"""CPG: earlier tasks' weights are held and picked by a learned mask, each task's free weights compacted
(the smallest released for later tasks), and every finished task computes what it did bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from test_masks import backbone, masked_model, online_outputs, task_observations, train_tasks

import clrl
from clrl.cli import main
from clrl.modules.cpg import FREE
from clrl.modules.masks import MaskedLinear

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3"]


@pytest.mark.parametrize("networks", ["actor", "all"])
@pytest.mark.parametrize("algo", ALGOS)
def test_a_finished_task_computes_what_it_did_and_later_tasks_use_the_released_weights(
    algo: str, networks: Any
) -> None:
    model, stream = masked_model(algo)
    cpg = clrl.CPG(networks=networks)
    n = len(stream)
    ended: dict[int, list[torch.Tensor]] = {}
    owners: dict[int, list[torch.Tensor]] = {}
    weights: dict[int, list[torch.Tensor]] = {}
    free: dict[int, dict[str, torch.Tensor]] = {}

    def record(i: int) -> None:
        cpg.set_task(i)
        ended[i] = online_outputs(model, task_observations(model, i, n), networks)
        owners[i] = [o.clone() for o in cpg.owner]
        weights[i] = [layer.weight.detach().clone() for layer in cpg.online_layers()]
        free[i] = {k: v for k, v in backbone(model).items() if k not in backbone(model, networks)}

    train_tasks(model, stream, cpg, record)
    for i in range(n):
        cpg.set_task(i)
        now = online_outputs(model, task_observations(model, i, n), networks)
        for before, after in zip(ended[i], now, strict=True):
            assert torch.equal(before, after)
    masked = {id(layer) for layer in cpg.layers()}
    unmasked = [m for m in model.policy.modules() if isinstance(m, MaskedLinear) and id(m) not in masked]
    if networks == "actor" and algo != "dqn":  # the critics and value function train on every task, unmasked
        assert len(cpg.owner) < len(cpg.online_layers()) + len(unmasked)
        assert unmasked and all(bool(m.masks.all()) and m.weight.requires_grad for m in unmasked)
        assert all(not torch.equal(free[0][k], free[n - 1][k]) for k in free[0] if "target" not in k)
    else:  # every network is masked (DQN's Q-network is what chooses actions)
        assert not unmasked and not free[0]
    for layer, first, owner, w0 in zip(cpg.online_layers(), owners[0], owners[1], weights[0], strict=True):
        own = first == 0
        assert torch.equal(layer.weight[own], w0[own])  # the first task's weights never moved
        assert 0.4 < float(own.float().mean()) < 0.6  # prune=0.5 released half of them
        assert bool(((first == FREE) & (owner == 1)).any())  # the second task trained released weights
        assert torch.equal(layer.masks[0], own)  # the first task's mask: its own weights only
        assert not bool((layer.masks[1] & (owner == FREE)).any())  # no mask keeps a free weight


def test_a_later_task_picks_some_of_the_earlier_weights() -> None:
    model, stream = masked_model("ppo", learning_rate=0.01)
    cpg = clrl.CPG()
    seen: dict[int, dict[str, float]] = {}
    train_tasks(model, stream, cpg, lambda i: seen.setdefault(i, cpg.log_scalars()))
    assert "picked" not in seen[0] and 0.0 < seen[1]["picked"] < 1.0
    layer, owner = cpg.online_layers()[0], cpg.owner[0]
    earlier = owner == 0
    assert torch.equal(layer.masks[1] & earlier, earlier & (layer.scores.detach() > cpg.threshold))


def test_checks_and_refusals() -> None:
    model, _ = masked_model("ppo")
    with pytest.raises(clrl.ConfigError, match="steps=N"):
        clrl.CPG().begin_task(model, clrl.TaskInfo(0, "normal"))
    for bad in ({"prune": 1.0}, {"retrain": 1.5}, {"threshold": 0.02}, {"init": 2.0}):
        with pytest.raises(clrl.ConfigError):
            clrl.CPG(**bad)
    cpg = clrl.CPG()
    cpg.load_state_dict({"task_index": 1, "owner": [torch.zeros(3, 3, dtype=torch.int16)], "first": 0})
    with pytest.raises(clrl.ConfigError, match="another network"):
        cpg.begin_task(model, clrl.TaskInfo(1, "again", 64))


def test_the_command_line_runs_cpg(tmp_path: Path) -> None:
    code = main(["run", "cartpole-flip", "--method", "cpg", "--logdir", str(tmp_path), *TINY_RUN])
    assert code == 0
    result: Any = clrl.TrainResult.from_json(next(tmp_path.rglob("results.json")))
    assert np.isfinite(result.matrix).all() and result.metrics["bwt"] == 0.0


@pytest.mark.parametrize("networks", ["actor", "all"])
@pytest.mark.parametrize("algo", ALGOS)
def test_growing_adds_free_units_that_change_no_task_until_it_trains(algo: str, networks: Any) -> None:
    # prune=0.05 leaves 5% of the weights free after the first task: below min_free, so the second grows.
    model, stream = masked_model(algo, net_arch=[16, 12])  # two hidden layers: one reads the other's units
    cpg = clrl.CPG(prune=0.05, min_free=0.1, grow_units=8, networks=networks)
    n = len(stream)

    def outputs(i: int) -> list[torch.Tensor]:
        cpg.set_task(i)
        return online_outputs(model, task_observations(model, i, n), networks)

    def widths() -> dict[str, int]:
        return {n: m.out_features for n, m in model.policy.named_modules() if isinstance(m, MaskedLinear)}

    model.set_env(stream.make_vec_env(0, seed=0))
    with clrl.training_task(model, [cpg], 0, stream.tasks[0].name, stream.steps(0)):
        model.learn(stream.steps(0), callback=cpg, reset_num_timesteps=False)
    before = {i: outputs(i) for i in range(n)}
    narrow = [layer.out_features for layer in cpg.online_layers()]
    assert cpg.free_share() < 0.1 and cpg.grown == 0
    before_widths = widths()
    model.set_env(stream.make_vec_env(1, seed=0))
    with clrl.training_task(model, [cpg], 1, stream.tasks[1].name, stream.steps(1)):
        assert [layer.out_features for layer in cpg.online_layers()] == [w + 8 for w in narrow]
        assert cpg.grown == 8 * len(narrow) and cpg.free_share() > 0.1
        grew = {name for name, width in widths().items() if width != before_widths[name]}
        masked = {name for name, m in model.policy.named_modules() if m in cpg.layers()}
        assert grew == masked  # with networks="actor", not the critics' layers
        for layer, owner in zip(cpg.online_layers(), cpg.owner, strict=True):
            assert owner.shape == layer.weight.shape == layer.masks.shape[1:] == layer.scores.shape
            assert not bool(layer.masks[0][owner == FREE].any())  # the finished task's mask excludes them
        # The new units' outgoing weights are zero: no task computes anything else (bit for bit on this
        # CPU; the wider matrices' sums may run in another order elsewhere, hence the tolerance).
        for i in range(n):
            for old, new in zip(before[i], outputs(i), strict=True):
                torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
        cpg.set_task(1)
        model.learn(stream.steps(1), callback=cpg, reset_num_timesteps=False)
    for old, new in zip(before[0], outputs(0), strict=True):  # the first task still computes what it did
        torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    grown_rows = [owner[-8:] for owner in cpg.owner]
    assert any(bool((rows == 1).any()) for rows in grown_rows)  # the second task kept new units' weights


def test_a_grown_policy_saves_and_loads(tmp_path: Path) -> None:
    model, stream = masked_model("sac", net_arch=[16, 12])
    cpg = clrl.CPG(prune=0.05, grow_units=8)
    train_tasks(model, stream, cpg)
    assert cpg.grown > 0
    clrl.save(model, tmp_path / "model.zip", [cpg])
    loaded, modules = clrl.load(tmp_path / "model.zip")
    plain = type(model).load(tmp_path / "model.zip", device=model.device)  # SB3 alone rebuilds it too
    assert modules[0].grown == cpg.grown  # type: ignore[attr-defined]
    for i in range(len(stream)):
        obs = task_observations(model, i, len(stream))
        for other in (loaded, plain):
            torch.testing.assert_close(online_outputs(other, obs), online_outputs(model, obs), rtol=0, atol=0)


def test_growth_refuses_modules_with_per_weight_state_and_can_be_turned_off() -> None:
    model, stream = masked_model("ppo")
    with pytest.raises(clrl.ConfigError, match="runs beside Replay"):
        clrl.train(model, stream, [clrl.CPG(), clrl.EWC()], eval_episodes=1)
    off = clrl.CPG(prune=0.05, min_free=0.0)
    train_tasks(model, stream, off)
    assert off.grown == 0 and off.free_share() < 0.1


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_the_first_tasks_released_weights_stay_zero_while_it_retrains(algo: str) -> None:
    """The first task holds nothing when it starts; its compaction half-way through a learn must hold the
    released weights from then on (they once kept training, and the stored mask then left out weights the
    policy had used: SAC's first task fell from about -200 to -400..-750)."""
    model, stream = masked_model(algo)
    cpg = clrl.CPG(prune=0.5, retrain=0.5)
    n = len(stream)
    model.set_env(stream.make_vec_env(0, seed=0))
    with clrl.training_task(model, [cpg], 0, stream.tasks[0].name, stream.steps(0)):
        model.learn(stream.steps(0), callback=cpg, reset_num_timesteps=False)
        assert cpg._pruned  # compacted half-way, then retrained in the same learn
        live = online_outputs(model, task_observations(model, 0, n), "actor")
        for layer, owner in zip(cpg.online_layers(), cpg.owner, strict=True):
            assert not bool(layer.weight[owner == FREE].any())  # released, and still zero
    cpg.set_task(0)
    stored = online_outputs(model, task_observations(model, 0, n), "actor")
    for before, after in zip(live, stored, strict=True):
        assert torch.equal(before, after)  # the stored mask computes what the task trained
