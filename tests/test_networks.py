"""Layer-normalised activations: their arithmetic, and a model built with them from a preset's name that
the plasticity monitor measures and a checkpoint restores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DEVICE
from stable_baselines3 import DQN

import clrl
from clrl.errors import ConfigError
from clrl.networks import LayerNormReLU, LayerNormTanh
from clrl.plasticity import hidden_layers
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
