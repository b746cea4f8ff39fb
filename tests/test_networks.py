"""Layer-normalised activations and CReLU: their arithmetic, and a model built with them from a preset's
name that the plasticity monitor measures and a checkpoint restores (CReLU: on every algorithm, its layers
widened, refused where a policy or a method cannot take it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE
from stable_baselines3 import DQN
from torch import nn

import clrl
from clrl.algorithms import get_algorithm
from clrl.errors import ConfigError
from clrl.networks import CReLU, LayerNormReLU, LayerNormTanh
from clrl.plasticity import capture_features, hidden_layers, recent_batch
from clrl.presets import activation_class, make_model


def test_layer_normalised_activations_normalise_each_row_then_activate() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [-4.0, 0.0, 0.0, 4.0]])
    mean = x.mean(dim=1, keepdim=True)
    std = (x.var(dim=1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    normalised = (x - mean) / std
    torch.testing.assert_close(LayerNormReLU()(x), normalised.clamp(min=0))
    torch.testing.assert_close(LayerNormTanh()(x), normalised.tanh())
    assert list(LayerNormReLU().parameters()) == []


def test_presets_name_them_and_reject_unknown_names() -> None:
    assert activation_class("layernorm-relu") is LayerNormReLU
    assert activation_class("LayerNorm_Tanh") is LayerNormTanh
    assert activation_class("relu") is torch.nn.ReLU
    assert activation_class("CReLU") is CReLU
    with pytest.raises(ConfigError, match="layernorm-relu"):
        activation_class("layernorm-gelu")


def test_a_layer_normalised_model_is_measured_trained_and_restored(tmp_path: Path) -> None:
    stream = clrl.make_stream("cartpole-flip", steps_per_task=64)
    hp = {"policy_kwargs": {"activation_fn": "layernorm-relu", "net_arch": [16, 16]}, "learning_starts": 16}
    model = make_model("dqn", stream, 0, hp, device=DEVICE)
    assert [layer.name for layer in hidden_layers(model)] == ["q_net.1", "q_net.3"]
    monitor = clrl.PlasticityMonitor(interval=32, batch_size=16)
    model.learn(64, callback=monitor)
    assert monitor.records and "q_net/q_net.1/dormant" in monitor.records[-1]["values"]
    clrl.save(model, tmp_path / "model.zip")
    loaded, _ = clrl.load(tmp_path / "model.zip", device=DEVICE)
    assert loaded.policy_kwargs["activation_fn"] is LayerNormReLU
    plain = DQN.load(tmp_path / "model.zip", device=DEVICE)  # SB3's own loader, clrl importable
    obs = torch.as_tensor(stream.make_vec_env(0, seed=0).reset(), device=model.device)
    with torch.no_grad():
        expected = model.policy.q_net(obs)
        torch.testing.assert_close(loaded.policy.q_net(obs), expected)
        torch.testing.assert_close(plain.policy.q_net(obs), expected)


def test_crelu_concatenates_the_positive_and_negative_parts() -> None:
    x = torch.tensor([[1.0, -2.0, 0.0], [-0.5, 3.0, -1.0]])
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.5, 0.0, 1.0]])
    torch.testing.assert_close(CReLU()(x), expected)


CRELU_SETUPS = {
    "ppo": ("cartpole-flip", {"n_steps": 32, "batch_size": 32}),
    "dqn": ("cartpole-flip", {"learning_starts": 16}),
    "sac": ("pendulum-flip", {"learning_starts": 16}),
    "td3": ("pendulum-flip", {"learning_starts": 16}),
}


@pytest.mark.parametrize("algo", list(CRELU_SETUPS))
def test_a_crelu_model_reads_twice_the_units_trains_and_loads(tmp_path: Path, algo: str) -> None:
    name, settings = CRELU_SETUPS[algo]
    stream = clrl.make_stream(name, steps_per_task=64)
    hp = {"n_envs": 1, **settings, "policy_kwargs": {"activation_fn": "crelu", "net_arch": [8, 6]}}
    model = make_model(algo, stream, 0, hp, device=DEVICE)
    readers = 0
    for net in model.policy.modules():  # every Linear after a CReLU reads twice the units before it
        layers = list(net) if isinstance(net, nn.Sequential) else []
        for i in range(1, len(layers) - 1):
            if isinstance(layers[i], CReLU) and isinstance(layers[i + 1], nn.Linear):
                assert layers[i + 1].in_features == 2 * layers[i - 1].out_features
                readers += 1
    assert readers > 0
    model.learn(64)
    batch = recent_batch(model, 16)
    assert batch is not None
    widths = {layer.name: features.shape[-1] for layer, features in capture_features(model, *batch).items()}
    assert sorted(set(widths.values())) == [12, 16]  # the monitor measures 2 × 6 and 2 × 8 features
    clrl.save(model, tmp_path / "model.zip")
    obs = stream.make_vec_env(0, seed=0).reset()
    expected = model.predict(obs, deterministic=True)[0]
    for loaded in (
        clrl.load(tmp_path / "model.zip", device=DEVICE)[0],
        get_algorithm(algo).load(tmp_path / "model.zip", device=DEVICE),
    ):
        assert type(loaded.policy) is type(model.policy)
        np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], expected)


def test_crelu_is_refused_up_front_where_a_policy_or_a_method_cannot_take_it(tmp_path: Path) -> None:
    stream = clrl.make_stream("cartpole-flip", steps_per_task=64)
    hp = {
        "n_envs": 1,
        "n_steps": 32,
        "batch_size": 32,
        "policy_kwargs": {"activation_fn": "crelu", "net_arch": [8]},
    }
    with pytest.raises(ConfigError, match="activation_fn crelu needs clrl's CReLU policy"):
        make_model("ppo", stream, 0, {**hp, "policy": clrl.multihead_policy("ppo")}, device=DEVICE)
    for module in (clrl.ReDo(), clrl.ContinualBackprop()):
        model = make_model("ppo", stream, 0, hp, device=DEVICE)
        with pytest.raises(ConfigError, match="two features per unit"):
            clrl.train(model, stream, modules=[module], logdir=tmp_path / module.name, eval_episodes=1)
        assert model.num_timesteps == 0
