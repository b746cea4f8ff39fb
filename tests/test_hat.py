"""HAT: a gate per task on every hidden unit; the weights between units an earlier task uses get no gradient
and do not move, so a finished task computes what it did bit for bit; the regulariser and the embeddings'
compensation are the paper's formulas."""

from __future__ import annotations

import math
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
from clrl.cli import main
from clrl.modules.base import ParamGroup
from clrl.modules.hat import TaskGate, earlier_gate, flushing_denormals
from clrl.modules.masks import online_layers
from clrl.modules.multihead import TaskRouter

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3"]


def hat_model(algo: str, **overrides: Any) -> tuple[BaseAlgorithm, clrl.TaskStream]:
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    policy_kwargs = {**kwargs.get("policy_kwargs", {}), "n_tasks": len(stream), **overrides.pop("net", {})}
    settings = {**kwargs, **overrides, "policy_kwargs": policy_kwargs}
    model = cls(clrl.hat_policy(cls), stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **settings)
    return model, stream


def gated_weights(model: BaseAlgorithm) -> list[tuple[torch.Tensor, torch.Tensor, TaskGate, TaskGate | None]]:
    policy: Any = model.policy
    return [
        (layer.weight.detach().clone(), layer.bias.detach().clone(), gate, source)
        for layer, gate, source in policy.gated_layers
    ]


@pytest.mark.parametrize("networks", ["actor", "all"])
@pytest.mark.parametrize("algo", ALGOS)
def test_a_finished_task_computes_what_it_did_and_its_units_weights_hold(algo: str, networks: str) -> None:
    model, stream = hat_model(algo, net={"net_arch": [16, 16]})
    hat = clrl.HAT(networks=networks)  # type: ignore[arg-type]
    n = len(stream)
    ended: dict[int, list[torch.Tensor]] = {}
    weights: dict[int, list[Any]] = {}

    def record(i: int) -> None:
        hat.set_task(i)
        ended[i] = online_outputs(model, task_observations(model, i, n), networks)
        weights[i] = gated_weights(model)

    train_tasks(model, stream, hat, record)
    for i in range(n):
        hat.set_task(i)
        now = online_outputs(model, task_observations(model, i, n), networks)
        for before, after in zip(ended[i], now, strict=True):
            assert torch.equal(before, after)
    policy: Any = model.policy
    moved = 0
    chosen = {id(g) for g in hat.gates()}
    if networks == "actor" and algo != "dqn":  # the critics' gates stay open and their layers train freely
        free = {id(g) for g in online_layers(policy, TaskGate)} - chosen
        assert free
        for (w0, _, gate, _), (layer, _, _) in zip(weights[0], policy.gated_layers, strict=True):
            if id(gate) in free:
                assert bool(gate.masks.all()) and gate.live_task is None and gate.open
                assert not torch.equal(layer.weight, w0)
                h = torch.randn(3, gate.units)
                assert gate(h) is h  # an open gate passes its units through, as h ⊙ 1 would
    assert not any(g.open for g in hat.gates())
    for (w0, b0, gate, source), (layer, _, _) in zip(weights[0], policy.gated_layers, strict=True):
        if id(gate) not in chosen:  # a target network's, or not gated (networks="actor")
            continue
        out = gate.masks[0]
        inputs = source.masks[0] if source is not None else torch.ones(layer.in_features, dtype=torch.bool)
        held = out[:, None] & inputs[None, :]
        assert torch.equal(layer.weight[held], w0[held]) and torch.equal(layer.bias[out], b0[out])
        moved += int((layer.weight[~held] != w0[~held]).sum())
    assert moved > 0  # the second task trained the weights no earlier task uses


def test_gates_anneal_over_the_task_and_are_stored_as_bits() -> None:
    model, stream = hat_model("ppo")
    hat = clrl.HAT()
    scales: list[float] = []
    original = hat._on_rollout_end

    def spy() -> None:
        original()
        scales.append(hat.gates()[0].scale)

    hat._on_rollout_end = spy  # type: ignore[method-assign]
    steps = stream.steps(0)
    with clrl.training_task(model, [hat], 0, "normal", steps):
        model.learn(steps, callback=hat)
        with hat.evaluating():
            assert hat.gates()[0].scale == hat.s_max  # evaluation acts with s_max
    assert scales == sorted(scales) and 1 / hat.s_max < scales[0] < scales[-1] <= hat.s_max
    for gate in hat.gates():
        assert bool(gate.stored[0]) and gate.live_task is None
        assert torch.equal(gate.masks[0], gate.embedding[0].detach() > 0)
        assert torch.equal(gate.gate(0), gate.masks[0].float())


@pytest.mark.parametrize("before", [False, True])
def test_a_task_trains_with_denormals_flushed_and_the_setting_is_put_back(before: bool) -> None:
    model, stream = hat_model("dqn")
    hat = clrl.HAT()
    seen: list[bool] = []
    original = hat._on_rollout_end

    def spy() -> None:
        original()
        seen.append(flushing_denormals())

    hat._on_rollout_end = spy  # type: ignore[method-assign]
    supported = torch.set_flush_denormal(before)  # False on CPUs without the setting: nothing changes
    try:
        with clrl.training_task(model, [hat], 0, "normal", stream.steps(0)):
            assert flushing_denormals() is (before and supported)  # not outside learn
            model.learn(stream.steps(0) // 2, callback=hat)
            assert flushing_denormals() is (before and supported)  # between two learn calls of the task
            model.learn(stream.steps(0) // 2, callback=hat, reset_num_timesteps=False)
        assert seen and all(flushed is supported for flushed in seen)
        assert flushing_denormals() is (before and supported)

        # A learn that raises leaves the task to be aborted, which puts the setting back too.
        def fail() -> None:
            raise RuntimeError("stop")

        hat._on_rollout_end = fail  # type: ignore[method-assign]
        model.set_env(stream.make_vec_env(1, seed=0))
        with (
            pytest.raises(RuntimeError, match="stop"),
            clrl.training_task(model, [hat], 1, "b", stream.steps(1)),
        ):
            model.learn(stream.steps(1), callback=hat, reset_num_timesteps=False)
        assert flushing_denormals() is (before and supported)
    finally:
        torch.set_flush_denormal(False)


def test_the_regulariser_and_the_compensation_are_the_papers() -> None:
    model, stream = hat_model("ppo")
    hat = clrl.HAT(c=0.5)
    with clrl.training_task(model, [hat], 0, "normal", stream.steps(0)):
        model.learn(stream.steps(0), callback=hat)
    hat.begin_task(model, clrl.TaskInfo(1, "flipped", stream.steps(1)))
    try:
        targets = hat.target_parameters()
        optimizer = model.policy.optimizer
        chosen = [
            (n, p) for g in optimizer.param_groups for p in g["params"] for n, q in targets.items() if p is q
        ]
        names, params = zip(*chosen, strict=True)
        group = ParamGroup("policy.optimizer", optimizer, names, params)
        loss = hat.regulariser(group)
        assert loss is not None
        used = free = 0.0
        for gate in hat._all_gates():
            if any(p is gate.embedding[1] for p in group.params):
                earlier = gate.masks[0].float()
                used += float((torch.sigmoid(gate.scale * gate.embedding[1]) * (1 - earlier)).sum())
                free += float((1 - earlier).sum())
        assert math.isclose(float(loss), 0.5 * used / free, rel_tol=1e-5)
        live = [p for p in group.params if any(p is g.embedding[1] for g in hat._all_gates())]
        expected_grads = torch.autograd.grad(loss, live)
        for p in live:
            p.grad = None
        hat.add_penalty_gradients(group)  # the closed form is autograd's gradient of the regulariser
        for p, expected_grad in zip(live, expected_grads, strict=True):
            assert p.grad is not None and torch.allclose(p.grad, expected_grad, atol=1e-7)
        gate = hat.gates()[0]
        embedding = gate.embedding[1]
        embedding.grad = torch.ones_like(embedding)
        s = hat.scale()
        hat.adjust_gradients(group)
        expected = (
            hat.s_max / s * (torch.cosh((s * embedding).clamp(-50, 50)) + 1) / (torch.cosh(embedding) + 1)
        )
        assert torch.allclose(embedding.grad, expected.detach())
    finally:
        hat.abort_task()


def test_gates_follow_every_hidden_layer_and_load_with_sb3(tmp_path: Path) -> None:
    model, stream = hat_model("sac", net={"net_arch": [16, 16]})
    policy: Any = model.policy
    for net in (policy.actor.latent_pi, policy.critic.qf0):
        kinds = [type(m).__name__ for m in net]
        assert kinds.count("TaskGate") == 2
        assert all(kinds[i - 1] == "ReLU" for i, k in enumerate(kinds) if k == "TaskGate")
    assert not isinstance(policy.critic.qf0[-1], TaskGate)
    hat = clrl.HAT()
    train_tasks(model, stream, hat)
    loads_per_task(model, stream, tmp_path)


def test_a_gate_routes_each_sample_to_its_task() -> None:
    router = TaskRouter(3)
    gate = TaskGate(4, router)
    gate.masks[0] = torch.tensor([True, False, True, False])
    gate.stored[0] = True
    gate.live_task, gate.scale = 1, 2.0
    h = torch.ones(3, 4)
    router._ids = torch.tensor([0, 1, 2])
    out = gate(h)
    assert torch.equal(out[0], gate.masks[0].float())
    assert torch.allclose(out[1], torch.sigmoid(2.0 * gate.embedding[1]))
    assert torch.allclose(out[2], torch.sigmoid(400.0 * gate.embedding[2]))
    assert torch.equal(earlier_gate(gate, 1), gate.masks[0].float())
    assert torch.equal(earlier_gate(gate, 0), torch.zeros(4))


def test_refusals_come_before_training() -> None:
    stream = cartpole_stream()
    plain = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match=r"clrl.hat_policy\(PPO\)"):
        clrl.train(plain, stream, [clrl.HAT()], seed=0, eval_episodes=1)
    model, _ = hat_model("ppo")
    hat = clrl.HAT()
    with pytest.raises(clrl.ConfigError, match="steps=N"):
        hat.begin_task(model, clrl.TaskInfo(0, "normal"))
    for bad in ({"s_max": 1.0}, {"c": -1.0}, {"clamp": 0.0}):
        with pytest.raises(clrl.ConfigError):
            clrl.HAT(**bad)


def test_the_command_line_builds_the_hat_policy(tmp_path: Path) -> None:
    code = main(["run", "cartpole-flip", "--method", "hat", "--logdir", str(tmp_path), *TINY_RUN])
    assert code == 0
    result = clrl.TrainResult.from_json(next(tmp_path.rglob("results.json")))
    assert np.isfinite(result.matrix).all() and result.metrics["bwt"] == 0.0
