"""Per-sample Fisher and MAS importances against brute-force loops over SB3's own code paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DEVICE, cartpole_stream, make_model, pendulum_stream
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

import clrl
from clrl.algorithms import policy_parameters
from clrl.errors import ConfigError
from clrl.modules.importance import (
    StateBatch,
    collect_states,
    fisher_diagonal,
    mas_importance,
    scp_importance,
)


def trained(algo: str, steps: int = 128, **overrides: object) -> tuple[BaseAlgorithm, StateBatch]:
    model, _ = make_model(algo, **overrides)
    model.learn(steps)
    return model, collect_states(model, 12, np.random.default_rng(0))


def squared_grads(params: dict[str, torch.nn.Parameter], value: torch.Tensor) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(value, list(params.values()), allow_unused=True, retain_graph=True)
    return {
        n: torch.zeros_like(p) if g is None else g.square()
        for (n, p), g in zip(params.items(), grads, strict=True)
    }


def accumulate(total: dict[str, torch.Tensor], add: dict[str, torch.Tensor], weight: float) -> None:
    for name, value in add.items():
        total[name] = total.get(name, torch.zeros_like(value)) + weight * value


def assert_dicts_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], **tol: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name, **tol)


def obs_of(states: StateBatch, i: int) -> torch.Tensor:
    assert isinstance(states.observations, torch.Tensor)
    return states.observations[i : i + 1]


def categorical_fisher_by_loop(
    params: dict[str, torch.nn.Parameter], dist_of: Callable[[int], Any], n_states: int
) -> dict[str, torch.Tensor]:
    """``1/N Σ_s Σ_a π(a|s) (∇ log π(a|s))²`` with one autograd call per state and action; ``dist_of(i)``
    is SB3's distribution at state ``i`` (called per state: SB3 reuses one distribution object)."""
    want: dict[str, torch.Tensor] = {}
    for i in range(n_states):
        dist = dist_of(i)
        probs = dist.distribution.probs[0].detach()
        for action in range(len(probs)):
            log_prob = dist.log_prob(torch.tensor([action]))[0]
            accumulate(want, squared_grads(params, log_prob), float(probs[action]) / n_states)
    return want


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_categorical_fisher_is_the_expectation_over_actions(algo: str) -> None:
    model, states = trained(algo)
    params = policy_parameters(model, "actor")
    policy = model.policy
    want = categorical_fisher_by_loop(
        params,
        lambda i: policy.get_distribution(obs_of(states, i)),  # type: ignore[operator]
        len(states),
    )
    assert_dicts_close(fisher_diagonal(model, params, states), want, rtol=1e-4, atol=1e-9)


def test_fisher_is_not_the_square_of_the_mean_gradient() -> None:
    model, states = trained("ppo")
    params = policy_parameters(model, "actor")
    fisher = fisher_diagonal(model, params, states)
    obs = states.observations
    assert isinstance(obs, torch.Tensor)
    torch.manual_seed(0)
    dist = model.policy.get_distribution(obs)  # type: ignore[attr-defined]
    mean_log_prob = dist.log_prob(dist.get_actions().detach()).mean()  # the common bug: one batch gradient
    batch_squared = squared_grads(params, mean_log_prob)
    trace = sum(float(f.sum()) for f in fisher.values())
    assert trace > 3 * sum(float(g.sum()) for g in batch_squared.values())


def test_gaussian_fisher_matches_monte_carlo_scores() -> None:
    """PPO on continuous actions: closed form against the mean squared score of sampled actions."""
    model = PPO(
        "MlpPolicy",
        pendulum_stream().make_vec_env(0),
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        policy_kwargs={"net_arch": [8], "log_std_init": -0.3},
        seed=0,
        device=DEVICE,
    )
    model.learn(64)
    states = collect_states(model, 3, np.random.default_rng(0))
    params = policy_parameters(model, "actor")
    want: dict[str, torch.Tensor] = {}
    n_actions = 600
    generator = torch.Generator().manual_seed(0)
    for i in range(len(states)):
        for _ in range(n_actions):
            dist = model.policy.get_distribution(obs_of(states, i))  # type: ignore[attr-defined]
            mean, std = dist.distribution.mean.detach(), dist.distribution.stddev.detach()
            action = mean + std * torch.randn(mean.shape, generator=generator)
            accumulate(
                want, squared_grads(params, dist.log_prob(action).sum()), 1 / (n_actions * len(states))
            )
    got = fisher_diagonal(model, params, states)
    for name in want:  # Monte Carlo: compare each tensor's total within 10%
        assert float(got[name].sum()) == pytest.approx(float(want[name].sum()), rel=0.1), name
    assert float(got["log_std"]) == pytest.approx(2.0)  # exact: the Fisher of log σ is 2


def test_squashed_gaussian_fisher_matches_monte_carlo_scores() -> None:
    """SAC: the tanh-squashed policy's score, through SB3's own log_prob, sampled."""
    model, states = trained("sac", steps=64)
    params = policy_parameters(model, "actor")
    states = StateBatch(states.observations[:2], states.actions[:2])  # type: ignore[index]
    actor = model.actor  # type: ignore[attr-defined]
    want: dict[str, torch.Tensor] = {}
    n_actions = 600
    generator = torch.Generator().manual_seed(0)
    for i in range(len(states)):
        for _ in range(n_actions):
            mean, log_std, _ = actor.get_action_dist_params(obs_of(states, i))
            dist = actor.action_dist.proba_distribution(mean, log_std)
            gaussian = (mean + log_std.exp() * torch.randn(mean.shape, generator=generator)).detach()
            log_prob = dist.log_prob(torch.tanh(gaussian), gaussian_actions=gaussian).sum()
            accumulate(want, squared_grads(params, log_prob), 1 / (n_actions * len(states)))
    got = fisher_diagonal(model, params, states)
    for name in want:
        assert float(got[name].sum()) == pytest.approx(float(want[name].sum()), rel=0.15), name


def test_deterministic_actor_importance_is_output_sensitivity() -> None:
    model, states = trained("td3", steps=64)
    params = policy_parameters(model, "actor")
    want: dict[str, torch.Tensor] = {}
    for i in range(len(states)):
        action = model.actor(obs_of(states, i))[0]  # type: ignore[attr-defined]
        for k in range(len(action)):
            accumulate(want, squared_grads(params, action[k]), 1 / len(states))
    assert_dicts_close(fisher_diagonal(model, params, states), want, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("algo", ["dqn", "qrdqn"])
def test_q_network_fisher_is_that_of_the_boltzmann_policy(algo: str) -> None:
    model, states = trained(algo)
    params = policy_parameters(model, "actor")
    temperature = 0.5
    want: dict[str, torch.Tensor] = {}
    for i in range(len(states)):
        if algo == "qrdqn":
            q = model.policy.quantile_net(obs_of(states, i)).mean(dim=1)[0]  # type: ignore[attr-defined]
        else:
            q = model.q_net(obs_of(states, i))[0]  # type: ignore[attr-defined]
        dist = torch.distributions.Categorical(logits=q / temperature)
        for action in range(len(q)):
            log_prob = dist.log_prob(torch.tensor(action))
            accumulate(want, squared_grads(params, log_prob), float(dist.probs[action]) / len(states))
    got = fisher_diagonal(model, params, states, temperature=temperature)
    assert_dicts_close(got, want, rtol=1e-4, atol=1e-9)


def test_recurrent_fisher_uses_the_stored_lstm_state() -> None:
    model, states = trained("recurrentppo")
    assert states.lstm_states is not None and states.episode_starts is not None
    params = policy_parameters(model, "actor")
    lstm, starts = states.lstm_states, states.episode_starts

    def dist_of(i: int) -> Any:
        h, c = (t[i : i + 1].transpose(0, 1).contiguous() for t in lstm[:2])
        dist, _ = model.policy.get_distribution(obs_of(states, i), (h, c), starts[i : i + 1])  # type: ignore[attr-defined]
        return dist

    want = categorical_fisher_by_loop(params, dist_of, len(states))
    assert_dicts_close(fisher_diagonal(model, params, states), want, rtol=1e-4, atol=1e-9)


def test_critic_outputs_join_the_fisher_with_networks_all() -> None:
    model, states = trained("sac", steps=64)
    actor_only = fisher_diagonal(model, policy_parameters(model, "actor"), states)
    both = fisher_diagonal(model, policy_parameters(model, "all"), states, networks="all")
    critic = {n: f for n, f in both.items() if n.startswith("critic.")}
    assert critic and all(float(f.sum()) > 0 for n, f in critic.items() if n.endswith("weight"))
    for name, fisher in actor_only.items():  # the actor gets no contribution from the critics' outputs
        torch.testing.assert_close(both[name], fisher)


@pytest.mark.parametrize("algo", ["ppo", "sac", "dqn"])
def test_mas_is_the_mean_absolute_gradient_of_the_output_norm(algo: str) -> None:
    model, states = trained(algo, steps=64)
    params = policy_parameters(model, "actor")
    want: dict[str, torch.Tensor] = {}
    for i in range(len(states)):
        obs = obs_of(states, i)
        if algo == "ppo":
            policy = model.policy
            latent = policy.mlp_extractor.forward_actor(policy.extract_features(obs))  # type: ignore[operator]
            y = policy.action_net(latent)  # type: ignore[operator]
        elif algo == "sac":
            mean, log_std, _ = model.actor.get_action_dist_params(obs)  # type: ignore[attr-defined]
            y = torch.cat([mean, log_std], dim=1)
        else:
            y = model.q_net(obs)  # type: ignore[attr-defined]
        grads = torch.autograd.grad(y.square().sum(), list(params.values()))
        accumulate(want, {n: g.abs() for n, g in zip(params, grads, strict=True)}, 1 / len(states))
    assert_dicts_close(mas_importance(model, params, states), want, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("algo", ["ppo", "sac", "dqn"])
def test_scp_is_the_mean_squared_gradient_of_the_sliced_mean_output(algo: str) -> None:
    model, states = trained(algo, steps=64)
    params = policy_parameters(model, "actor")
    outputs = []
    for i in range(len(states)):
        obs = obs_of(states, i)
        if algo == "ppo":
            policy = model.policy
            latent = policy.mlp_extractor.forward_actor(policy.extract_features(obs))  # type: ignore[operator]
            outputs.append(policy.action_net(latent))  # type: ignore[operator]
        elif algo == "sac":
            mean, log_std, _ = model.actor.get_action_dist_params(obs)  # type: ignore[attr-defined]
            outputs.append(torch.cat([mean, log_std], dim=1))
        else:
            outputs.append(model.q_net(obs))  # type: ignore[attr-defined]
    mean_output = torch.cat(outputs).mean(0)
    slices = torch.randn(
        7, mean_output.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    slices = slices / slices.norm(dim=1, keepdim=True)
    want: dict[str, torch.Tensor] = {}
    for xi in slices:
        accumulate(want, squared_grads(params, (xi.float() * mean_output).sum()), 1 / len(slices))
    assert_dicts_close(scp_importance(model, params, states, slices), want, rtol=1e-4, atol=1e-8)


def test_states_come_from_the_task_just_trained() -> None:
    model, _ = make_model("dqn")
    model.learn(96)
    states = collect_states(model, 1000, np.random.default_rng(0), steps=40)
    assert len(states) == 40  # only the rows written during the last 40 steps
    buffer = model.replay_buffer
    assert buffer is not None
    last = torch.as_tensor(buffer.observations[buffer.pos - 40 : buffer.pos, 0])
    assert isinstance(states.observations, torch.Tensor)
    assert {tuple(o.tolist()) for o in states.observations} == {tuple(o.tolist()) for o in last}


def test_empty_buffer_is_a_clear_error() -> None:
    model, _ = make_model("dqn")
    with pytest.raises(ConfigError, match="no states"):
        collect_states(model, 10, np.random.default_rng(0))


@pytest.mark.parametrize("module", [clrl.EWC, clrl.MAS])
def test_importance_estimates_leave_a_shared_extractors_parameters_on_the_optimiser(module: type) -> None:
    """A features extractor shared under three names (SB3's default) kept new parameter objects after the
    per-sample Jacobians, which no optimiser held: ewc+dualnet and mas+dualnet then failed at task 2."""
    stream = cartpole_stream()
    kwargs = {"features_extractor_class": clrl.DualNetExtractor}
    model = PPO(
        "MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, policy_kwargs=kwargs, device=DEVICE
    )
    held = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    regulariser = module()
    with clrl.training_task(model, [regulariser], 0):
        model.learn(64, callback=regulariser)
    assert regulariser.tasks_seen == 1
    assert {id(p) for p in model.policy.parameters()} <= held
