"""Plasticity statistics against hand-computed values, and the monitor inside SB3 and clrl.train."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE, cartpole_stream, make_model, tiny_ppo
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_reliability import Interrupted, interrupt_at, three_tasks
from torch import nn

import clrl
from clrl.plasticity import (
    PlasticityMonitor,
    active_share,
    dormant_ratio,
    effective_rank,
    feature_rank,
    gradient_norm,
    hidden_layers,
    policy_networks,
    stable_rank,
    weight_distance,
    weight_magnitude,
)

# Unit 0 always 1, unit 1 always 0, unit 2 tiny: mean |h| = (1, 0, 0.02), the layer's mean 0.34.
LAYER = torch.tensor([[1.0, 0.0, 0.01], [1.0, 0.0, 0.03]])


@pytest.mark.parametrize(("tau", "expected"), [(0.0, 1 / 3), (0.025, 1 / 3), (0.1, 2 / 3), (3.0, 1.0)])
def test_dormant_ratio_by_hand(tau: float, expected: float) -> None:
    # Scores s = (1, 0, 0.02) / 0.34 = (2.94, 0, 0.059).
    assert dormant_ratio(LAYER, tau) == pytest.approx(expected)


def test_active_share_counts_units_non_zero_on_some_state() -> None:
    assert active_share(LAYER) == pytest.approx(2 / 3)
    assert active_share(torch.tensor([[0.0, 2.0], [0.0, 0.0]])) == 0.5


def test_ranks_by_hand() -> None:
    features = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # singular values 3 and 1
    p = np.array([0.75, 0.25])
    assert effective_rank(features) == pytest.approx(math.exp(-(p * np.log(p)).sum()))  # 1.7548
    assert stable_rank(features) == pytest.approx(10 / 9)
    assert feature_rank(features) == 2  # 3/4 of the sum < 0.99
    assert feature_rank(features, delta=0.3) == 1  # 3/4 >= 0.7
    rank_one = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    assert effective_rank(rank_one) == pytest.approx(1.0)
    assert stable_rank(rank_one) == pytest.approx(1.0)


def test_an_all_zero_layer_is_all_dormant_and_rank_zero() -> None:
    zeros = torch.zeros(4, 3)
    assert dormant_ratio(zeros, 0.0) == 1.0
    assert active_share(zeros) == 0.0
    assert effective_rank(zeros) == stable_rank(zeros) == feature_rank(zeros) == 0


def test_weight_statistics_by_hand() -> None:
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[2.0]])}
    assert weight_magnitude(params.values()) == pytest.approx(math.sqrt(9 / 3))
    initial = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([[0.0]])}
    assert weight_distance(params, initial) == pytest.approx(math.sqrt(8 / 3))
    assert gradient_norm([torch.tensor([3.0]), None, torch.tensor([[4.0]])]) == pytest.approx(5.0)


def _hand_made_ppo() -> PPO:
    """PPO on CartPole with one hidden ReLU layer of 2 units per network, weights set by hand."""
    model = PPO(
        "MlpPolicy",
        "CartPole-v1",
        policy_kwargs={"net_arch": {"pi": [2], "vf": [2]}, "activation_fn": nn.ReLU},
        n_steps=8,
        batch_size=8,
        device=DEVICE,
    )
    with torch.no_grad():
        actor = model.policy.mlp_extractor.policy_net[0]
        actor.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0]]))
        actor.bias.zero_()
        value = model.policy.mlp_extractor.value_net[0]
        value.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        value.bias.zero_()
    return model


def test_monitor_statistics_equal_hand_computed_values_on_a_tiny_network() -> None:
    model = _hand_made_ppo()
    monitor = PlasticityMonitor(tau=0.0)
    monitor.bind(model)
    obs = np.array([[1.0, 2.0, 0, 0], [3.0, 1.0, 0, 0]], dtype=np.float32)
    # actor: ReLU([[1, -2], [3, -1]]) = [[1, 0], [3, 0]]; value: [[1, 2], [3, 1]].
    values = monitor.statistics(obs)
    assert values["actor/policy_net.1/dormant"] == 0.5
    assert values["actor/policy_net.1/active"] == 0.5
    assert values["actor/effective_rank"] == pytest.approx(1.0)  # rank one
    assert values["actor/feature_rank"] == 1
    assert values["value/dormant"] == 0.0
    sigma = np.linalg.svd(np.array([[1.0, 2.0], [3.0, 1.0]]), compute_uv=False)
    assert values["value/stable_rank"] == pytest.approx((sigma**2).sum() / sigma[0] ** 2)
    assert values["actor/weight_distance"] == 0.0
    params = dict(model.policy.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            if not name.startswith(("mlp_extractor.value_net", "value_net")):
                param.add_(0.5)
    moved = monitor.statistics(obs)
    assert moved["actor/weight_distance"] == pytest.approx(0.5)
    assert moved["value/weight_distance"] == 0.0
    actor = [p for n, p in params.items() if not n.startswith(("mlp_extractor.value_net", "value_net"))]
    squares = sum(float((p.detach().double() ** 2).sum()) for p in actor)
    assert moved["actor/weight_magnitude"] == pytest.approx(
        math.sqrt(squares / sum(p.numel() for p in actor))
    )


@pytest.mark.parametrize(
    ("algo", "networks", "layers"),
    [
        ("ppo", {"actor", "value"}, ["policy_net.1", "value_net.1"]),
        ("dqn", {"q_net"}, ["q_net.1"]),
        ("sac", {"actor", "critic"}, ["latent_pi.1", "qf0.1", "qf1.1"]),
        ("td3", {"actor", "critic"}, ["mu.1", "qf0.1", "qf1.1"]),  # not mu's output tanh
    ],
)
def test_networks_and_hidden_layers(algo: str, networks: set[str], layers: list[str]) -> None:
    model, _ = make_model(algo)
    assert set(policy_networks(model)) == networks
    assert [layer.name for layer in hidden_layers(model)] == layers
    assert all(isinstance(layer.linear, nn.Linear) for layer in hidden_layers(model))


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_the_monitor_leaves_training_unchanged_bit_for_bit(algo: str) -> None:
    trained = []
    for monitor in (PlasticityMonitor(interval=40, batch_size=16), None):
        model, _ = make_model(algo, seed=2)
        model.learn(200, callback=monitor)
        trained.append(model.policy.state_dict())
        if monitor is not None:
            assert len(monitor.records) >= 3
            assert any(k.endswith("/grad_norm") for k in monitor.records[0]["values"])
    for (name, a), b in zip(trained[0].items(), trained[1].values(), strict=True):
        assert torch.equal(a, b), name


def test_measurements_fall_at_the_rollouts_that_cross_the_interval() -> None:
    model, _ = make_model("ppo")  # one env, 32-step rollouts
    monitor = PlasticityMonitor(interval=50)
    model.learn(200, callback=monitor)
    assert [r["step"] for r in monitor.records] == [64, 128, 160, 224]  # 224: learn rounds up to rollouts


class _StepNorms(BaseCallback):
    """The actor's gradient norm at every optimiser step, read in a step pre-hook (no clipping applies)."""

    def __init__(self) -> None:
        super().__init__()
        self.norms: list[tuple[int, float]] = []

    def _on_training_start(self) -> None:
        named = self.model.policy.named_parameters()
        actor = [p for n, p in named if not n.startswith(("mlp_extractor.value_net", "value_net"))]

        def hook(*_: object) -> None:
            self.norms.append((self.model.num_timesteps, gradient_norm(p.grad for p in actor)))

        self.model.policy.optimizer.register_step_pre_hook(hook)

    def _on_step(self) -> bool:
        return True


def test_grad_norm_is_the_first_update_after_the_measurement_before_clipping() -> None:
    monitor = PlasticityMonitor(interval=64)
    model, _ = make_model("ppo", max_grad_norm=1e9)
    steps = _StepNorms()
    model.learn(128, callback=[steps, monitor])
    for record in monitor.records:
        first = next(norm for step, norm in steps.norms if step == record["step"])
        assert record["values"]["actor/grad_norm"] == pytest.approx(first, rel=1e-9)
    clipped, _ = make_model("ppo", max_grad_norm=1e-6)
    tiny = PlasticityMonitor(interval=64)
    clipped.learn(64, callback=tiny)
    assert tiny.records[0]["values"]["actor/grad_norm"] > 1e-3  # measured before SB3's clipping


def test_gradient_hooks_of_a_learn_that_raised_do_not_outlive_it() -> None:
    class Stop(BaseCallback):
        """Raises right after the monitor measured at 64 steps, before the update it would read."""

        def _on_rollout_end(self) -> None:
            if self.model.num_timesteps >= 64:
                raise KeyboardInterrupt

        def _on_step(self) -> bool:
            return True

    model, _ = make_model("ppo")
    monitor = PlasticityMonitor(interval=64)
    with pytest.raises(KeyboardInterrupt):
        model.learn(1000, callback=[monitor, Stop()])
    record = monitor.records[-1]
    assert record["step"] == 64 and "actor/grad_norm" not in record["values"]
    assert any(p._post_accumulate_grad_hooks for p in model.policy.parameters())  # left behind
    model.learn(64)  # no monitor: the hooks left behind remove themselves, the record stays as it was
    assert "actor/grad_norm" not in record["values"]
    assert not any(p._post_accumulate_grad_hooks for p in model.policy.parameters())


def test_bad_settings_and_policies_are_refused() -> None:
    with pytest.raises(clrl.ConfigError, match="interval"):
        PlasticityMonitor(interval=0)
    with pytest.raises(clrl.ConfigError, match="tau"):
        PlasticityMonitor(tau=-1)
    recurrent, stream = make_model("recurrentppo")
    assert not PlasticityMonitor.supports(recurrent)
    with pytest.raises(clrl.ConfigError, match="recurrent"):
        clrl.train(recurrent, stream, plasticity=PlasticityMonitor())
    with pytest.raises(RuntimeError, match="no model"):
        PlasticityMonitor().measure()


def test_train_records_plasticity_in_results_and_tensorboard(tmp_path: Path) -> None:
    stream = cartpole_stream()  # 128 steps per task; tiny_ppo's rollouts are 64 steps
    result = clrl.train(
        tiny_ppo(stream), stream, logdir=tmp_path, eval_episodes=1, plasticity=PlasticityMonitor(interval=64)
    )
    assert [(r["step"], r["task"]) for r in result.plasticity] == [
        (64, None), (128, None), (128, 0), (192, None), (256, None), (256, 1)
    ]  # fmt: skip
    assert "actor/grad_norm" in result.plasticity[0]["values"]
    assert "actor/grad_norm" not in result.plasticity[2]["values"]  # no update follows a task's end
    saved = json.loads((tmp_path / "results.json").read_text())["plasticity"]
    assert saved == json.loads(json.dumps(result.plasticity))
    assert clrl.TrainResult.from_json(tmp_path / "results.json").plasticity == saved

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"plasticity/actor/grad_norm", "plasticity/value/value_net.1/effective_rank"} <= set(tags)
    assert [e.step for e in events.Scalars("plasticity/actor/dormant")] == [64, 128, 128, 192, 256, 256]


def test_train_without_plasticity_records_none() -> None:
    stream = cartpole_stream()
    assert clrl.train(tiny_ppo(stream), stream, eval_episodes=1, plasticity=False).plasticity == []
    recurrent, stream = make_model("recurrentppo")
    assert clrl.train(recurrent, stream, eval_episodes=1).plasticity == []  # the default skips it
    with pytest.raises(clrl.ConfigError, match="plasticity must be"):
        clrl.train(tiny_ppo(stream), stream, plasticity="yes")  # type: ignore[arg-type]


def test_a_resumed_run_records_what_an_uninterrupted_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = three_tasks(cartpole_stream)
    whole = clrl.train(
        tiny_ppo(stream), stream, logdir=tmp_path / "whole", plasticity=PlasticityMonitor(interval=64)
    )
    with monkeypatch.context() as patch:
        interrupt_at(patch, 1)
        with pytest.raises(Interrupted):
            clrl.train(
                tiny_ppo(stream), stream, logdir=tmp_path / "part", plasticity=PlasticityMonitor(interval=64)
            )
    resumed = clrl.train(
        tiny_ppo(stream),
        stream,
        logdir=tmp_path / "part",
        resume=True,
        plasticity=PlasticityMonitor(interval=64),
    )
    assert len(whole.plasticity) == 9
    assert resumed.plasticity == whole.plasticity  # the weight distances too: the same initial weights


def test_a_cyclic_stream_reports_how_later_visits_learn() -> None:
    stream = clrl.streams.cycled(cartpole_stream(steps=64), 2)
    result = clrl.train(tiny_ppo(stream), stream, eval_episodes=1, eval_freq=32, plasticity=False)
    diagonal = [result.matrix[i + 1, i] for i in range(4)]
    assert result.metrics["visit_gap"] == pytest.approx(
        (diagonal[2] - diagonal[0] + diagonal[3] - diagonal[1]) / 2
    )
    assert "visit_curve_gap" in result.metrics
