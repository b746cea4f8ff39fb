"""DualNet: the extractor gates the fast network by the slow one and keeps the algorithm's gradients out of
the slow network, the look-ahead update follows its formula and lowers the Barlow Twins loss, every
algorithm runs, state is saved, bad input is refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, cartpole_stream, make_model
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from test_modules import params_of

import clrl
from clrl.experiment import policy_hyperparameters
from clrl.modules.dualnet import barlow_twins_loss

EXTRACTOR = {
    "features_extractor_class": clrl.DualNetExtractor,
    "features_extractor_kwargs": {"net_arch": [16, 16], "projector_dim": 16},
}


def dual_model(algo: str, **overrides: Any) -> tuple[BaseAlgorithm, clrl.TaskStream]:
    policy_kwargs = {**ALGO_SETUPS[algo][2]["policy_kwargs"], **EXTRACTOR}
    return make_model(algo, policy_kwargs=policy_kwargs, **overrides)


def small_dualnet(**kwargs: Any) -> clrl.DualNet:
    return clrl.DualNet(**{"ssl_every": 2, "ssl_steps": 1, "ssl_batch_size": 16, **kwargs})


def split(model: BaseAlgorithm) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(slow network and projector, everything else the optimisers step) of every stepped extractor."""
    params = {n: p for n, p in params_of(model).items() if "_target." not in n}  # SB3's lagged copies
    slow = {n: p for n, p in params.items() if ".slow." in n or ".projector." in n}
    rest = {n: p for n, p in params.items() if n not in slow}
    return slow, rest


def test_barlow_twins_loss_matches_a_loop() -> None:
    torch.manual_seed(0)
    z1, z2, w = torch.randn(9, 4), torch.randn(9, 4), 0.3
    a = (z1 - z1.mean(0)) / (z1.std(0, correction=0) + 1e-5)
    b = (z2 - z2.mean(0)) / (z2.std(0, correction=0) + 1e-5)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            c = sum(a[k, i] * b[k, j] for k in range(9)) / 9
            expected += (1 - c) ** 2 if i == j else w * c**2
    assert barlow_twins_loss(z1, z2, w).item() == pytest.approx(float(expected), rel=1e-5)
    assert barlow_twins_loss(z1, z1, 0.0).item() == pytest.approx(0.0, abs=1e-4)  # identical views


@pytest.mark.parametrize("slow_learns_from_rl", [False, True])
def test_extractor_gates_the_fast_network_and_keeps_rl_gradients_out_of_the_slow_one(
    slow_learns_from_rl: bool,
) -> None:
    torch.manual_seed(0)
    space = gym.spaces.Box(-1, 1, (5,))
    extractor = clrl.DualNetExtractor(space, net_arch=[8, 6], slow_learns_from_rl=slow_learns_from_rl)
    obs = torch.randn(4, 5)
    out = extractor(obs)
    assert out.shape == (4, 6) and extractor.features_dim == 6

    h, m = obs, obs  # by hand: m_l = relu(F_l m_{l-1}) * h_l / rms(h_l)
    for slow, fast in zip(extractor.slow, extractor.fast, strict=True):
        h = torch.relu(slow(h))
        m = torch.relu(fast(m)) * h / (h.pow(2).mean(1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(out, m, atol=1e-6)

    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extractor.fast.parameters())
    slow_grads = [p.grad for p in extractor.slow.parameters()]
    if slow_learns_from_rl:
        assert all(g is not None and g.abs().sum() > 0 for g in slow_grads)
    else:
        assert all(g is None for g in slow_grads)
    assert all(p.grad is None for p in extractor.projector.parameters())  # the SSL loss's alone


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3", "recurrentppo"])
def test_only_the_look_ahead_moves_the_slow_network(algo: str) -> None:
    model, stream = dual_model(algo)
    before_slow, before_rest = split(model)
    frozen = small_dualnet(ssl_steps=0)
    clrl.train(model, stream, [frozen], seed=0, eval_episodes=1)
    slow, rest = split(model)
    assert all(torch.equal(slow[n], before_slow[n]) for n in slow)  # the algorithm never trains it
    assert any(not torch.equal(rest[n], before_rest[n]) for n in rest)
    assert frozen.ssl_updates == 0 and sum(frozen.steps.values()) > 0

    model, stream = dual_model(algo)
    dualnet = small_dualnet()
    clrl.train(model, stream, [dualnet], seed=0, eval_episodes=1)
    slow, _ = split(model)
    assert all(not torch.equal(slow[n], before_slow[n]) for n in slow)
    # One update per extractor every 2 steps of its optimiser (SAC/TD3: actor and critic each have one).
    assert dualnet.ssl_updates == sum(n // 2 for n in dualnet.steps.values()) > 0
    assert len(dualnet.extractors) == (2 if algo in ("sac", "td3") else 1)
    scalars = dualnet.log_scalars()
    assert scalars["ssl_loss"] >= 0 and 0 < scalars["states"] <= 2 * 128 and scalars["bytes"] > 0


def trained_ppo(**kwargs: Any) -> tuple[BaseAlgorithm, clrl.DualNet]:
    model, stream = dual_model("ppo")
    dualnet = small_dualnet(**kwargs)
    model.learn(stream.steps(0), callback=dualnet)
    return model, dualnet


def test_look_ahead_interpolates_between_start_and_inner_steps() -> None:
    model, dualnet = trained_ppo(ssl_steps=3, lookahead=1.0)
    extractor = dualnet.extractors["features_extractor"]
    optimizer = dualnet._optimizers["features_extractor"]
    start = copy.deepcopy(extractor.state_dict())
    saved = (copy.deepcopy(optimizer.state_dict()), copy.deepcopy(dualnet._sample_rng))
    generator = dualnet._generator.get_state()
    others = {n: p.clone() for n, p in params_of(model).items() if "extractor" not in n}

    dualnet.ssl_update("features_extractor")
    full = copy.deepcopy(extractor.state_dict())
    extractor.load_state_dict(start)
    optimizer.load_state_dict(saved[0])
    dualnet._sample_rng, dualnet.lookahead = saved[1], 0.25
    dualnet._generator.set_state(generator)
    dualnet.ssl_update("features_extractor")

    for key, value in extractor.state_dict().items():
        expected = start[key] + 0.25 * (full[key] - start[key])
        assert torch.allclose(value, expected, atol=1e-6), key
        if key.startswith("fast."):
            assert torch.equal(value, start[key])
    assert any(not torch.equal(full[k], start[k]) for k in full if k.startswith(("slow.", "projector.")))
    assert all(torch.equal(p, others[n]) for n, p in params_of(model).items() if n in others)


def test_look_ahead_updates_lower_the_barlow_twins_loss() -> None:
    _, dualnet = trained_ppo(ssl_steps=4, lookahead=1.0)
    obs = dualnet.replay_observations(128)

    def loss() -> float:
        dualnet._generator.manual_seed(123)  # the same two views each time
        with torch.no_grad():
            return dualnet.ssl_loss("features_extractor", obs).item()

    before = loss()
    for _ in range(20):
        dualnet.ssl_update("features_extractor")
    assert loss() < 0.8 * before


def test_augmentations() -> None:
    _, dualnet = trained_ppo(noise=0.5, mask_prob=0.0)
    obs = torch.tensor([[0.0, 1.0, 5.0], [1.0, 1.0, 5.0], [2.0, 1.0, 5.0], [3.0, 1.0, 5.0]])
    view = dualnet.augment(obs)
    assert torch.equal(view[:, 1:], obs[:, 1:])  # a feature constant over the batch gets no noise
    assert not torch.equal(view[:, 0], obs[:, 0])
    assert not torch.equal(dualnet.augment(obs), view)  # two views differ
    dualnet.mask_prob = 1.0
    assert torch.equal(dualnet.augment(obs), obs.mean(0, keepdim=True).expand_as(obs))


def test_same_seed_same_parameters() -> None:
    runs = []
    for _ in range(2):
        model, stream = dual_model("ppo")
        clrl.train(model, stream, [small_dualnet()], seed=0, eval_episodes=1)
        runs.append(params_of(model))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_state_survives_save_and_load(tmp_path: Path) -> None:
    model, dualnet = trained_ppo()
    clrl.save(model, tmp_path / "m.zip", [dualnet])
    loaded, (restored,) = clrl.load(tmp_path / "m.zip")
    assert isinstance(restored, clrl.DualNet)
    assert restored.ssl_updates == dualnet.ssl_updates > 0 and restored.steps == dualnet.steps
    assert len(restored.memory) == len(dualnet.memory) > 0
    assert isinstance(loaded.policy.features_extractor, clrl.DualNetExtractor)
    stream = cartpole_stream()
    loaded.set_env(stream.make_vec_env(1, seed=1))
    loaded.learn(stream.steps(1), callback=restored, reset_num_timesteps=False)
    assert restored.ssl_updates > dualnet.ssl_updates
    state = restored._optimizers["features_extractor"].state_dict()["state"]
    original = dualnet._optimizers["features_extractor"].state_dict()["state"]
    assert state[0]["step"] > original[0]["step"]  # Adam went on from the saved moments


def test_hidden_task_id_is_accepted() -> None:
    stream = cartpole_stream(task_id="hidden")
    model = PPO(
        "MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, policy_kwargs=EXTRACTOR, device=DEVICE
    )
    result = clrl.train(model, stream, [small_dualnet()], seed=0, eval_episodes=1)
    assert result.matrix.shape == (3, 2)


def test_bad_input_is_refused() -> None:
    model, stream = make_model("ppo")  # no DualNetExtractor
    with pytest.raises(clrl.ConfigError, match="features_extractor_class"):
        model.learn(stream.steps(0), callback=clrl.DualNet())
    with pytest.raises(clrl.ConfigError, match="Box"):
        clrl.DualNetExtractor(gym.spaces.Discrete(3))
    with pytest.raises(clrl.ConfigError, match="net_arch"):
        clrl.DualNetExtractor(gym.spaces.Box(-1, 1, (3,)), net_arch=[])
    for kwargs in (
        {"ssl_every": 0},
        {"ssl_steps": -1},
        {"ssl_batch_size": 1},
        {"ssl_lr": 0.0},
        {"lookahead": 1.5},
        {"redundancy_weight": -1.0},
        {"noise": -0.1},
        {"mask_prob": 2.0},
        {"budget": 0},
    ):
        with pytest.raises(clrl.ConfigError):
            clrl.DualNet(**kwargs)


def test_the_cli_method_builds_the_extractor() -> None:
    stream = cartpole_stream()
    hp = policy_hyperparameters("dualnet", "ppo", stream, {"policy_kwargs": {"net_arch": [8]}})
    assert hp["policy_kwargs"] == {"net_arch": [8], "features_extractor_class": clrl.DualNetExtractor}
    both = policy_hyperparameters("dualnet+multihead", "ppo", stream, {})
    assert both["policy"] is clrl.MultiHeadActorCriticPolicy
    assert both["policy_kwargs"]["features_extractor_class"] is clrl.DualNetExtractor
    assert both["policy_kwargs"]["n_tasks"] == len(stream)
