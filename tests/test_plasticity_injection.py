"""Plasticity injection: the injected networks' arithmetic, what trains and what stays frozen, targets,
saving, the plain-SB3 equivalence without an injection, and the command line's policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE
from stable_baselines3.common.base_class import BaseAlgorithm
from test_reliability import three_tasks, whole_and_resumed

import clrl
from clrl.errors import ConfigError
from clrl.experiment import policy_hyperparameters, run_experiment
from clrl.modules.plasticity_injection import InjectedMLP, injections_needed
from clrl.streams import make_stream

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3"]


def _model(
    algo: str,
    injections: int = 1,
    seed: int = 0,
    policy: object = None,
    stream: clrl.TaskStream | None = None,
) -> BaseAlgorithm:
    cls, make, hyper = ALGO_SETUPS[algo]
    stream = make() if stream is None else stream
    chosen = clrl.injection_policy(algo) if policy is None else policy
    kwargs = {**hyper, "policy_kwargs": {**hyper["policy_kwargs"]}}
    if policy is None:
        kwargs["policy_kwargs"]["injections"] = injections
    return cls(chosen, stream.make_vec_env(0, seed=seed), seed=seed, device=DEVICE, **kwargs)


def _obs(model: BaseAlgorithm, n: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(0)
    shape = model.observation_space.shape
    assert shape is not None
    return torch.as_tensor(rng.normal(size=(n, *shape)), dtype=torch.float32, device=model.device)


def _outputs(model: BaseAlgorithm, obs: torch.Tensor) -> list[torch.Tensor]:
    """Everything the policy computes from ``obs``: action distribution parameters, values, Q-values."""
    policy = model.policy
    with torch.no_grad():
        if isinstance(model, (clrl.ALGORITHMS["ppo"], clrl.ALGORITHMS["a2c"])):
            dist = policy.get_distribution(obs).distribution  # type: ignore[operator]
            return [dist.logits, policy.predict_values(obs)]  # type: ignore[operator]
        if hasattr(policy, "q_net"):
            return [policy.q_net(obs), policy.q_net_target(obs)]  # type: ignore[operator]
        actor = policy.actor  # type: ignore[union-attr]
        actions = torch.zeros(len(obs), *model.action_space.shape, device=model.device)  # type: ignore[misc]
        outs = [*policy.critic(obs, actions), *policy.critic_target(obs, actions)]  # type: ignore[operator]
        if hasattr(actor, "get_action_dist_params"):
            mean, log_std, _ = actor.get_action_dist_params(obs)
            return [mean, log_std, *outs]
        return [actor(obs), policy.actor_target(obs), *outs]  # type: ignore[operator]


def _injected(model: BaseAlgorithm) -> dict[str, InjectedMLP]:
    return {p: m for p, m in model.policy.named_modules() if isinstance(m, InjectedMLP)}


@pytest.mark.parametrize("algo", ALGOS)
def test_an_injection_leaves_every_output_unchanged_and_targets_follow(algo: str) -> None:
    model = _model(algo, injections=2)
    model.learn(96)
    obs = _obs(model)
    before = _outputs(model, obs)
    module = clrl.PlasticityInjection()
    module.bind(model)
    paths = module.inject()
    assert paths and all("_target" not in p for p in paths)
    for a, b in zip(before, _outputs(model, obs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    nets = _injected(model)
    assert all(m.count == 1 for m in nets.values())  # target copies included
    for path, net in nets.items():
        head, _, rest = path.partition(".")
        if head.endswith("_target"):
            online = nets[f"{head.removesuffix('_target')}.{rest}"]
            for a, b in zip(net.live[0].parameters(), online.live[0].parameters(), strict=True):
                assert torch.equal(a, b)


def test_the_output_is_the_frozen_network_plus_the_live_copy_minus_its_frozen_twin() -> None:
    model = _model("dqn", injections=2)
    module = clrl.PlasticityInjection()
    module.bind(model)
    module.inject()
    net = _injected(model)["q_net.q_net"]
    with torch.no_grad():
        for p in net.live[0].parameters():
            p.add_(torch.randn_like(p))
    x = _obs(model)
    expected = net.base(x) + net.live[0](x) - net.frozen[0](x)
    torch.testing.assert_close(net(x), expected)
    assert not torch.allclose(net(x), net.base(x))
    module.inject()  # the second: the first pair joins the frozen sum
    assert net.trainable() == [net.live[1]]
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="taken its 2 injections"):
        module.inject()


def test_a_fresh_copy_of_ppo_draws_sb3s_orthogonal_initialisation() -> None:
    model = _model("ppo")
    module = clrl.PlasticityInjection()
    module.bind(model)
    module.inject()
    actor = _injected(model)["mlp_extractor.policy_net"]
    hidden, head = (m for m in actor.live[0] if isinstance(m, torch.nn.Linear))
    for layer, gain in ((hidden, np.sqrt(2)), (head, 0.01)):
        w = layer.weight.detach().double()
        rows = min(w.shape)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, gain**2 * torch.eye(rows, dtype=torch.float64), rtol=0, atol=1e-5)
        original = actor._chain(actor.base)[list(actor.live[0]).index(layer)]
        assert not torch.equal(layer.weight, original.weight)


@pytest.mark.parametrize("algo", ALGOS)
def test_after_an_injection_only_the_new_copy_trains(algo: str) -> None:
    model = _model(algo, injections=1)
    model.learn(64)
    module = clrl.PlasticityInjection()
    module.bind(model)
    module.inject()
    nets = {p: m for p, m in _injected(model).items() if "_target" not in p}
    live = {id(t): (p, t, t.detach().clone()) for p, m in nets.items() for t in m.live.parameters()}
    frozen = [
        (t, t.detach().clone()) for m in nets.values() for t in m.network_parameters() if id(t) not in live
    ]
    model.learn(128, reset_num_timesteps=False, callback=module)
    for param, value in frozen:
        assert torch.equal(param, value)
    changed = [(p, None) for p, param, value in live.values() if not torch.equal(param, value)]
    assert {p for p, _ in changed} == set(nets)  # every injected network learned through its new copy


class _Recording(clrl.PlasticityInjection):
    """Keeps the actor's original weights as they are at each injection."""

    def inject(self) -> list[str]:
        net = _injected(self.sb3_model)["mlp_extractor.policy_net"]
        original = [*net.base.parameters(), *net._head.parameters()]  # type: ignore[union-attr]
        self.at_injection = [p.detach().clone() for p in original]
        return super().inject()


def test_frozen_networks_stay_frozen_beside_a_penalty_module() -> None:
    # EWC adds its penalty's gradient to every parameter it anchors (about zero near the anchor): Adam's
    # moments from task 0 would move the frozen network, unless the injection drops those gradients
    model = _model("ppo", injections=1)
    ewc, injection = clrl.EWC(strength=1000.0), _Recording()
    clrl.train(model, ALGO_SETUPS["ppo"][1](), [ewc, injection], eval_episodes=1)
    assert injection.injections == 1 and ewc.anchor
    net = _injected(model)["mlp_extractor.policy_net"]
    original = [*net.base.parameters(), *net._head.parameters()]  # type: ignore[union-attr]
    for param, value in zip(original, injection.at_injection, strict=True):
        assert torch.equal(param, value)
    pairs = zip(net.live[0].parameters(), net.frozen[0].parameters(), strict=True)
    assert any(not torch.equal(live, frozen) for live, frozen in pairs)


@pytest.mark.parametrize("algo", ALGOS)
def test_without_an_injection_training_equals_plain_sb3(algo: str) -> None:
    trained = []
    for policy in (None, "MlpPolicy"):
        model = _model(algo, seed=3, policy=policy)
        model.learn(160, callback=clrl.PlasticityInjection(every=10_000) if policy is None else None)
        trained.append(_outputs(model, _obs(model)))
    for a, b in zip(*trained, strict=True):
        assert torch.equal(a, b)


def test_a_saved_injected_model_loads_with_plain_sb3_and_acts_the_same(tmp_path: Path) -> None:
    model = _model("sac", injections=2)
    module = clrl.PlasticityInjection()
    module.bind(model)
    model.learn(64)
    module.inject()
    model.learn(64, reset_num_timesteps=False, callback=module)
    obs = _obs(model)
    clrl.save(model, tmp_path / "m", [module])
    plain = type(model).load(tmp_path / "m.zip", device=DEVICE)
    for a, b in zip(_outputs(model, obs), _outputs(plain, obs), strict=True):
        assert torch.equal(a, b)
    loaded, (again,) = clrl.load(tmp_path / "m.zip", device=DEVICE)
    assert isinstance(again, clrl.PlasticityInjection) and again.injections == 1
    assert all(m.count == 1 for m in _injected(loaded).values())
    again.inject()  # the next slot, after loading
    assert all(m.count == 2 for m in _injected(loaded).values())


def test_injections_happen_at_later_task_starts_or_on_a_schedule() -> None:
    stream = three_tasks(ALGO_SETUPS["dqn"][1])
    model = _model("dqn", injections=2, stream=stream)
    module = clrl.PlasticityInjection()
    clrl.train(model, stream, [module], eval_episodes=1)
    assert module.injections == 2
    scheduled = clrl.PlasticityInjection(every=100)
    model = _model("dqn", injections=3, stream=stream)
    clrl.train(model, stream, [scheduled], eval_episodes=1)  # 384 steps: at 100, 200, 300
    assert scheduled.injections == 3 and not scheduled.needs_boundaries()


def test_a_multiple_of_every_at_a_task_boundary_is_acted_on_at_the_next_tasks_first_rollout() -> None:
    """The schedule runs over the run's ``learn`` calls: 128 and 256 are the second and third tasks' first
    steps (a schedule restarted at each call skipped both)."""
    stream = three_tasks(ALGO_SETUPS["dqn"][1])  # 3 x 128 steps in rollouts of 4
    model = _model("dqn", injections=2, stream=stream)
    scheduled = clrl.PlasticityInjection(every=128)
    clrl.train(model, stream, [scheduled], eval_episodes=1)
    assert scheduled.injections == 2


def test_the_injections_counted_are_those_of_whole_rollouts(tmp_path: Path) -> None:
    """SB3 trains whole rollouts: 20 visits of 10,000 steps in DQN's rollouts of 1,024 train 204,800 steps,
    which cross 100,000 and 200,000."""
    stream = make_stream("cartpole-permuted")
    assert injections_needed(stream, 100_000, 1) == 1
    assert injections_needed(stream, 100_000, 1024) == 2
    hp = policy_hyperparameters("plasticity-injection", "dqn", stream, {}, {"every": 100_000})
    assert hp["policy_kwargs"]["injections"] == 2  # the preset's 4 envs x train_freq 256
    # A run whose tasks of 100 steps train 128 (rollouts of 32): injections at 160, 320 and 480.
    spec = clrl.RunSpec(
        "cartpole-flip",
        method="plasticity-injection",
        steps=100,
        eval_episodes=1,
        method_args={"every": 150},
        hyperparameters={"n_envs": 1, "n_steps": 32, "batch_size": 32, "n_epochs": 1},
        plasticity=False,
    )
    result = run_experiment(spec, tmp_path, log=lambda _: None)
    assert result.module_stats[-1]["plasticity-injection"]["injections"] == 3


def test_a_policy_without_injections_or_too_few_is_refused_before_training() -> None:
    stream = three_tasks(ALGO_SETUPS["ppo"][1])
    with pytest.raises(ConfigError, match="needs an injection policy"):
        plain = _model("ppo", policy="MlpPolicy", stream=stream)
        clrl.train(plain, stream, [clrl.PlasticityInjection()], eval_episodes=1)
    model = _model("ppo", injections=1, stream=stream)
    with pytest.raises(ConfigError, match="makes 2 injections but the policy has room for 1"):
        clrl.train(model, stream, [clrl.PlasticityInjection()], eval_episodes=1)
    assert model.num_timesteps == 0
    with pytest.raises(ConfigError, match="injections must be"):
        _model("ppo", injections=0)


def test_the_command_line_builds_the_policy_with_the_injections_the_schedule_makes() -> None:
    stream = make_stream("cartpole-flip", steps_per_task=1000)
    hp = policy_hyperparameters("plasticity-injection+ewc", "ppo", stream, {})
    assert hp["policy"] is clrl.InjectionActorCriticPolicy
    assert hp["policy_kwargs"]["injections"] == len(stream) - 1
    every = policy_hyperparameters("plasticity-injection", "sac", stream, {}, {"every": 300})
    assert every["policy"] is clrl.InjectionSACPolicy
    assert every["policy_kwargs"]["injections"] == (1000 * len(stream) - 1) // 300


def test_a_resumed_run_with_plasticity_injection_ends_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls, make, hyper = ALGO_SETUPS["td3"]
    stream = three_tasks(make)

    def run(logdir: Path, **kwargs: object) -> clrl.TrainResult:
        model = cls(
            clrl.InjectionTD3Policy,
            stream.make_vec_env(0, seed=1),
            seed=1,
            device=DEVICE,
            **{**hyper, "policy_kwargs": {**hyper["policy_kwargs"], "injections": 2}},
        )
        return clrl.train(
            model, stream, [clrl.PlasticityInjection()], logdir=logdir, eval_episodes=1, **kwargs
        )  # type: ignore[arg-type]

    whole, resumed = whole_and_resumed(tmp_path, monkeypatch, run)
    np.testing.assert_array_equal(resumed.matrix, whole.matrix)
    assert resumed.module_stats == whole.module_stats
