"""The plasticity methods' arithmetic (ReDo, ShrinkAndPerturb, L2Init, Reset, ContinualBackprop,
ParsevalRegularisation), their schedules, and that off they equal plain SB3 bit for bit."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, make_model
from stable_baselines3.common.base_class import BaseAlgorithm
from test_reliability import three_tasks, whole_and_resumed

import clrl
from clrl.algorithms import optimizers
from clrl.modules.surgery import fresh_linear, linear_depths, network_linears, selected_networks
from clrl.plasticity import capture_features, dormant_units, recent_batch


def _params(model: BaseAlgorithm) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.policy.named_parameters()}


def _assert_same_training(factory: object, algo: str, steps: int = 160) -> None:
    trained = []
    for module in (factory(), None):  # type: ignore[operator]
        model, _ = make_model(algo, seed=4)
        model.learn(steps, callback=module)
        trained.append(model.policy.state_dict())
    for (name, a), b in zip(trained[0].items(), trained[1].values(), strict=True):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------------ ReDo
def _dqn_with_a_dead_unit(unit: int = 3) -> tuple[BaseAlgorithm, torch.nn.Linear, torch.nn.Linear]:
    model, _ = make_model("dqn")
    model.learn(96)  # fills the buffer and gives Adam moments to every entry
    first, head = model.policy.q_net.q_net[0], model.policy.q_net.q_net[2]
    with torch.no_grad():
        first.weight[unit] = 0.0
        first.bias[unit] = -1.0  # ReLU(-1) = 0 on every state: dormant at any tau
    return model, first, head


def test_redo_reinitialises_incoming_zeroes_outgoing_and_their_moments() -> None:
    model, first, head = _dqn_with_a_dead_unit(3)
    before = _params(model)
    obs, _ = recent_batch(model, 64)  # type: ignore[misc]
    q_before = model.policy.q_net(torch.as_tensor(obs)).detach()
    (features,) = capture_features(model, obs).values()  # the one hidden layer
    dormant = dormant_units(features, 0.0)
    assert dormant[3] and 1 <= int(dormant.sum()) < first.out_features
    redo = clrl.ReDo(tau=0.0, batch_size=64)  # the states measured above
    redo.bind(model)
    assert redo.recycle() == int(dormant.sum()) == redo.recycled
    bound = 1 / math.sqrt(first.in_features)  # PyTorch's default init, SB3's for DQN
    assert not torch.equal(first.weight[3], torch.zeros_like(first.weight[3]))
    assert first.weight[dormant].abs().max() <= bound and first.bias[dormant].abs().max() <= bound
    assert not torch.equal(first.weight[dormant], before["q_net.q_net.0.weight"][dormant])
    assert torch.equal(head.weight[:, dormant], torch.zeros(head.out_features, int(dormant.sum())))
    others = ~dormant
    assert torch.equal(first.weight[others], before["q_net.q_net.0.weight"][others])
    assert torch.equal(head.weight[:, others], before["q_net.q_net.2.weight"][:, others])
    state = model.policy.optimizer.state
    for key in ("exp_avg", "exp_avg_sq"):
        assert float(state[first.weight][key][dormant].abs().sum()) == 0.0
        assert float(state[first.bias][key][dormant].abs().sum()) == 0.0
        assert float(state[head.weight][key][:, dormant].abs().sum()) == 0.0
        assert state[first.weight][key][others].abs().sum() > 0
    # The recycled unit's outgoing weights are zero: the Q-values are unchanged.
    assert torch.equal(model.policy.q_net(torch.as_tensor(obs)).detach(), q_before)


def test_redo_recycles_nothing_when_no_unit_is_dormant() -> None:
    model, _ = make_model("ppo")  # tanh units are rarely exactly zero
    model.learn(64)
    before = _params(model)
    redo = clrl.ReDo(tau=0.0)
    redo.bind(model)
    assert redo.recycle() == 0
    for name, value in _params(model).items():
        assert torch.equal(value, before[name]), name


def test_redo_on_ppo_removes_the_recycled_units_contributions_and_draws_orthogonal_rows() -> None:
    model, _ = make_model("ppo")
    model.learn(64)
    layer, head = model.policy.mlp_extractor.policy_net[0], model.policy.action_net
    obs, _ = recent_batch(model, 32)  # type: ignore[misc]
    features = capture_features(model, obs)
    (units,) = [dormant_units(f, 2.0) for hidden, f in features.items() if hidden.network == "actor"]
    assert 0 < int(units.sum()) < layer.out_features  # below twice the layer's mean activation
    with torch.no_grad():
        kept = head.weight.clone()
        head.weight[:, units] = 0.0  # what recycling the units leaves of the logits
        expected = model.policy.get_distribution(torch.as_tensor(obs)).distribution.logits.clone()  # type: ignore[union-attr]
        head.weight.copy_(kept)
    trained = layer.weight.detach().clone()
    redo = clrl.ReDo(tau=2.0, batch_size=32, networks="actor")
    redo.bind(model)
    assert redo.recycle() == int(units.sum())
    with torch.no_grad():
        logits = model.policy.get_distribution(torch.as_tensor(obs)).distribution.logits  # type: ignore[union-attr]
    torch.testing.assert_close(logits, expected)
    assert torch.equal(layer.weight[~units], trained[~units])
    assert torch.equal(layer.bias[units], torch.zeros(int(units.sum())))  # SB3's orthogonal init: zero bias
    rows = layer.weight.detach()[units]  # orthogonal rows, gain sqrt(2): norms <= sqrt(2)
    assert float(rows.norm(dim=1).max()) <= math.sqrt(2) + 1e-5


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_redo_that_never_comes_due_equals_plain_sb3(algo: str) -> None:
    _assert_same_training(lambda: clrl.ReDo(every=10**9), algo)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_redo_recycles_on_its_schedule_in_every_algorithm(algo: str) -> None:
    model, _ = make_model(algo)
    rounds = []
    redo = clrl.ReDo(tau=1.0, every=48)  # below the layer's mean: some units always qualify
    original = redo.recycle

    def counted() -> int:
        rounds.append(model.num_timesteps)
        return original()

    redo.recycle = counted  # type: ignore[method-assign]
    model.learn(200, callback=redo)
    assert len(rounds) >= 3 and all(b - a >= 1 for a, b in itertools.pairwise(rounds))
    assert redo.recycled > 0
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.policy.parameters())


# ------------------------------------------------------------------------------------------------ S&P
def test_shrink_and_perturb_is_shrink_times_weights_plus_perturb_times_a_fresh_draw() -> None:
    model, _ = make_model("sac")
    model.learn(64)
    before = _params(model)
    torch.manual_seed(11)
    expected = {}
    for network in selected_networks(model, "all"):
        for path, module in network_linears(model, network).items():
            weight, bias = fresh_linear(model, path, module)
            expected[f"{path}.weight"] = 0.5 * before[f"{path}.weight"] + 0.25 * weight
            expected[f"{path}.bias"] = 0.5 * before[f"{path}.bias"] + 0.25 * bias  # type: ignore[operator]
    snp = clrl.ShrinkAndPerturb(shrink=0.5, perturb=0.25)
    snp.bind(model)
    torch.manual_seed(11)
    snp.apply()
    after = _params(model)
    assert set(expected) <= set(after) and expected
    for name, value in expected.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-7)
    assert any(n.startswith("critic_target") for n in after)
    for name in after:
        if name.startswith("critic_target"):
            assert torch.equal(after[name], before[name])  # the target follows by its soft updates


def test_shrink_and_perturb_applies_at_each_later_task_start() -> None:
    model, stream = make_model("ppo")
    snp = clrl.ShrinkAndPerturb()
    clrl.train(model, stream, [snp], eval_episodes=1, plasticity=False)
    assert snp.applied == len(stream) - 1


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_shrink_one_perturb_zero_equals_plain_sb3(algo: str) -> None:
    _assert_same_training(lambda: clrl.ShrinkAndPerturb(shrink=1.0, perturb=0.0, every=32), algo)


# ------------------------------------------------------------------------------------------------ L2 Init
@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_l2_init_strength_zero_equals_plain_sb3(algo: str) -> None:
    _assert_same_training(lambda: clrl.L2Init(strength=0.0), algo)


def test_l2_init_pulls_toward_the_initial_weights() -> None:
    distances = {}
    for strength in (0.0, 100.0):
        model, _ = make_model("ppo", learning_rate=1e-2)
        initial = _params(model)
        module = clrl.L2Init(strength=strength)
        model.learn(256, callback=module)
        if strength:
            assert all(torch.equal(module.anchor[n], initial[n]) for n in module.anchor)
        distances[strength] = sum(float((p - initial[n]).square().sum()) for n, p in _params(model).items())
    assert distances[100.0] < 0.2 * distances[0.0]


# ------------------------------------------------------------------------------------------------ Reset
def test_linear_depths_count_from_the_output() -> None:
    model, _ = make_model("sac")  # one hidden layer of 16 in actor and critics
    assert linear_depths(model, "actor") == {
        "actor.latent_pi.0": 2, "actor.mu": 1, "actor.log_std": 1
    }  # fmt: skip
    assert linear_depths(model, "critic") == {
        "critic.qf0.0": 2, "critic.qf0.2": 1, "critic.qf1.0": 2, "critic.qf1.2": 1
    }  # fmt: skip


def test_reset_of_the_heads_draws_fresh_weights_syncs_targets_and_clears_moments() -> None:
    model, _ = make_model("sac")
    model.learn(96)
    before = _params(model)
    reset = clrl.Reset(layers=1)
    reset.bind(model)
    torch.manual_seed(5)
    done = reset.reset()
    assert sorted(done) == ["actor.log_std", "actor.mu", "critic.qf0.2", "critic.qf1.2"]
    after = _params(model)
    torch.manual_seed(5)
    for path in ["actor.mu", "actor.log_std", "critic.qf0.2", "critic.qf1.2"]:  # the order reset draws in
        module = model.policy.get_submodule(path)
        weight, bias = fresh_linear(model, path, module)  # type: ignore[arg-type]
        assert torch.equal(after[f"{path}.weight"], weight), path
        assert torch.equal(after[f"{path}.bias"], bias), path  # type: ignore[arg-type]
    for name in ("actor.latent_pi.0.weight", "critic.qf0.0.weight"):
        assert torch.equal(after[name], before[name])  # deeper layers kept
    assert torch.equal(after["critic_target.qf0.2.weight"], after["critic.qf0.2.weight"])
    assert torch.equal(after["critic_target.qf0.0.weight"], before["critic_target.qf0.0.weight"])
    state = model.critic.optimizer.state[model.policy.critic.qf0[2].weight]
    assert float(state["exp_avg"].abs().sum()) == 0.0
    assert float(model.critic.optimizer.state[model.policy.critic.qf0[0].weight]["exp_avg"].abs().sum()) > 0


def test_a_full_reset_of_ppo_is_a_fresh_policy_as_sb3_builds_it() -> None:
    model, _ = make_model("ppo")
    model.learn(64)
    reset = clrl.Reset(networks="actor")
    reset.bind(model)
    reset.reset()
    weight = model.policy.mlp_extractor.policy_net[0].weight.detach()
    # SB3's orthogonal init with gain sqrt(2): W Wᵀ = 2 I (16 rows of 5 columns: Wᵀ W = 2 I).
    gram = weight.T @ weight if weight.shape[0] > weight.shape[1] else weight @ weight.T
    torch.testing.assert_close(gram, 2 * torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
    assert torch.equal(model.policy.action_net.bias, torch.zeros_like(model.policy.action_net.bias))
    assert float(model.policy.value_net.weight.detach().abs().sum()) > 0


def test_reset_at_task_starts_and_on_a_schedule() -> None:
    model, stream = make_model("dqn")
    at_boundaries = clrl.Reset()
    clrl.train(model, stream, [at_boundaries], eval_episodes=1, plasticity=False)
    assert at_boundaries.resets == len(stream) - 1
    model, _ = make_model("dqn")
    periodic = clrl.Reset(layers=1, every=50)
    model.learn(200, callback=periodic)
    assert periodic.resets == 3  # rollouts of 4 steps start at 52, 100 and 152; learn ends at 200


# ------------------------------------------------------------------------------------------------ CBP
def test_continual_backprop_replaces_the_least_useful_mature_units_by_hand() -> None:
    model, _ = make_model("ppo", policy_kwargs={"net_arch": [4], "activation_fn": torch.nn.ReLU})
    model.learn(32)
    cbp = clrl.ContinualBackprop(replacement_rate=0.5, maturity=2, decay=0.5)
    cbp.bind(model)
    cbp.on_task_start(clrl.TaskInfo(0, "t"))
    key = "actor/policy_net.1"
    layer = cbp._layers[key]
    head = model.policy.action_net
    with torch.no_grad():
        head.weight.fill_(1.0)  # every unit's mean outgoing |w| is 1
        head.bias.zero_()
    features = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # utilities in this order
    for _ in range(2):  # ages 1 and 2: not above the maturity of 2
        cbp._step(key, layer, features)
    assert cbp.replaced == 0 and float(cbp.units[key]["pending"]) == 0
    cbp._step(key, layer, features)  # age 3: 4 eligible x 0.5 = 2 replacements, the lowest utilities
    assert cbp.replaced == 2
    state = cbp.units[key]
    assert state["age"].tolist() == [0, 0, 3, 3] and state["utility"][:2].tolist() == [0, 0]
    torch.testing.assert_close(state["utility"][2:], (1 - 0.5**3) * torch.tensor([3.0, 4.0]))
    assert torch.equal(head.weight[:, :2], torch.zeros(2, 2)) and torch.equal(
        head.weight[:, 2:], torch.ones(2, 2)
    )
    # The next layer's bias took the replaced units' mean contribution: 1·1 + 1·2.
    torch.testing.assert_close(head.bias, torch.full((2,), 3.0))
    assert torch.equal(layer.linear.bias[:2], torch.zeros(2))  # type: ignore[union-attr]
    assert float(state["pending"]) == 0


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_continual_backprop_rate_zero_equals_plain_sb3(algo: str) -> None:
    _assert_same_training(lambda: clrl.ContinualBackprop(replacement_rate=0.0), algo)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_continual_backprop_replaces_units_while_training(algo: str) -> None:
    model, _ = make_model(algo)
    cbp = clrl.ContinualBackprop(replacement_rate=0.05, maturity=3)
    model.learn(200, callback=cbp)
    assert cbp.replaced > 0
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    assert all(int(s["age"].max()) >= 1 for s in cbp.units.values())


# ------------------------------------------------------------------------------------------------ Parseval
def test_parseval_gradient_is_the_penalty_derivative() -> None:
    model, _ = make_model("ppo")
    parseval = clrl.ParsevalRegularisation(strength=0.3, scale=1.5)
    parseval.bind(model)
    weights = parseval.regularised_weights()
    assert set(weights) == {f"mlp_extractor.{net}.0.weight" for net in ("policy_net", "value_net")}
    expected_penalty = 0.0
    for weight in weights.values():
        w = weight.detach().double().clone().requires_grad_(True)
        c = (64 / w.shape[0]) ** 2  # 16 units: c = 16
        value = 0.3 * c * (w @ w.T - 1.5 * torch.eye(w.shape[0], dtype=w.dtype)).square().sum()
        value.backward()
        expected_penalty += float(value.detach())
        torch.testing.assert_close(parseval.penalty_gradient(w.detach()), w.grad)
    assert parseval.penalty() == pytest.approx(expected_penalty, rel=1e-5)


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_parseval_strength_zero_equals_plain_sb3(algo: str) -> None:
    _assert_same_training(lambda: clrl.ParsevalRegularisation(strength=0.0), algo)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_parseval_pulls_the_hidden_layers_toward_orthogonal_rows(algo: str) -> None:
    """From rows three times too long, the penalty falls while training in every algorithm; without it,
    training alone does not bring it down as far."""
    penalties = {}
    for strength in (0.0, 1.0):
        model, _ = make_model(algo, seed=2, learning_rate=1e-2)
        probe = clrl.ParsevalRegularisation(strength=1.0)
        probe.bind(model)
        with torch.no_grad():
            for weight in probe.regularised_weights().values():
                weight.mul_(3.0)
        start = probe.penalty()
        model.learn(200, callback=clrl.ParsevalRegularisation(strength=strength) if strength else None)
        penalties[strength] = probe.penalty() / start
    assert penalties[1.0] < 0.9
    assert penalties[1.0] < penalties[0.0]


def test_adam_with_equal_betas_comes_from_the_hyperparameters() -> None:
    """Dohare et al.'s Adam with beta1 = beta2 is SB3's optimizer_kwargs, given as --hp gives it."""
    from clrl.cli import _parse_assignments
    from clrl.presets import make_model as preset_model

    hp = _parse_assignments(["policy_kwargs={ optimizer_kwargs = { betas = [0.9, 0.9] } }"], "--hp")
    for algo in ("ppo", "sac"):
        stream = clrl.make_stream("pendulum-flip" if algo == "sac" else "cartpole-flip", steps_per_task=64)
        model = preset_model(algo, stream, 0, hp, device=DEVICE)
        policy_optimizers = {n: o for n, o in optimizers(model).items() if n != "ent_coef_optimizer"}
        assert policy_optimizers
        for optimizer in policy_optimizers.values():  # SAC's entropy coefficient has its own Adam
            assert tuple(optimizer.param_groups[0]["betas"]) == (0.9, 0.9)


# ------------------------------------------------------------------------------------------------ all
@pytest.mark.parametrize(
    "factory",
    [
        lambda: clrl.ReDo(tau=1.0, every=64),
        lambda: clrl.ShrinkAndPerturb(every=64),
        lambda: clrl.L2Init(strength=1.0),
        lambda: clrl.Reset(layers=1, every=64),
        lambda: clrl.ContinualBackprop(replacement_rate=0.05, maturity=5),
        lambda: clrl.ParsevalRegularisation(strength=0.1),
    ],
    ids=["redo", "shrink-and-perturb", "l2-init", "reset", "continual-backprop", "parseval"],
)
def test_a_resumed_run_with_a_plasticity_method_ends_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: object
) -> None:
    cls, make_stream, hyper = ALGO_SETUPS["sac"]
    stream = three_tasks(make_stream)

    def run(logdir: Path, **kwargs: object) -> clrl.TrainResult:
        model = cls("MlpPolicy", stream.make_vec_env(0, seed=1), seed=1, device=DEVICE, **hyper)
        modules = [factory()]  # type: ignore[operator]
        return clrl.train(model, stream, modules, logdir=logdir, eval_episodes=1, **kwargs)  # type: ignore[arg-type]

    whole, resumed = whole_and_resumed(tmp_path, monkeypatch, run)
    np.testing.assert_array_equal(resumed.matrix, whole.matrix)
    assert resumed.module_stats == whole.module_stats
