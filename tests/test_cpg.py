"""CPG: earlier tasks' weights are held and picked by a learned mask, each task's free weights compacted
(the smallest released for later tasks), and every finished task computes what it did bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from test_masks import masked_model, online_outputs, task_observations, train_tasks

import clrl
from clrl.cli import main
from clrl.modules.cpg import FREE

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3"]


@pytest.mark.parametrize("algo", ALGOS)
def test_a_finished_task_computes_what_it_did_and_later_tasks_use_the_released_weights(algo: str) -> None:
    model, stream = masked_model(algo)
    cpg = clrl.CPG()
    n = len(stream)
    ended: dict[int, list[torch.Tensor]] = {}
    owners: dict[int, list[torch.Tensor]] = {}
    weights: dict[int, list[torch.Tensor]] = {}

    def record(i: int) -> None:
        cpg.set_task(i)
        ended[i] = online_outputs(model, task_observations(model, i, n))
        owners[i] = [o.clone() for o in cpg.owner]
        weights[i] = [layer.weight.detach().clone() for layer in cpg.online_layers()]

    train_tasks(model, stream, cpg, record)
    for i in range(n):
        cpg.set_task(i)
        for before, now in zip(ended[i], online_outputs(model, task_observations(model, i, n)), strict=True):
            assert torch.equal(before, now)
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
