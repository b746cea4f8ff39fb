"""The module mechanism and L2, on PPO, A2C, DQN, SAC and TD3."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, make_model
from stable_baselines3.common.base_class import BaseAlgorithm

import clrl
from clrl.algorithms import optimizers, policy_parameters
from clrl.modules.base import ContinualModule, ParamGroup

ALGOS = list(ALGO_SETUPS)


def learn_two_tasks(
    algo: str, callback: ContinualModule | list[ContinualModule] | None, **overrides: Any
) -> BaseAlgorithm:
    """The user's own loop: one learn per task, the module passed as callback (``overrides``: the model's
    hyperparameters)."""
    model, stream = make_model(algo, **overrides)
    for i in range(len(stream)):
        model.set_env(stream.make_vec_env(i, seed=10 + i))
        model.learn(stream.steps(i), callback=callback, reset_num_timesteps=False)
    return model


def params_of(model: BaseAlgorithm) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.policy.named_parameters()}


class AutogradL2(ContinualModule):
    """L2 written as an autograd extra loss, to check the extra_loss path against the analytic one."""

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        self.strength = strength
        self.anchor: dict[str, torch.Tensor] = {}

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        params = policy_parameters(self.sb3_model, "actor")
        return {n: p for n, p in params.items() if n in self.anchor}

    def on_task_end(self, task: clrl.TaskInfo) -> None:
        self.anchor = {n: p.detach().clone() for n, p in policy_parameters(self.sb3_model, "actor").items()}

    def extra_loss(self, group: ParamGroup) -> torch.Tensor:
        return sum(0.5 * self.strength * ((p - self.anchor[n]) ** 2).sum() for n, p in group)  # type: ignore[return-value]


class GradientRecorder(ContinualModule):
    """Records the total gradient norm that the optimiser is about to apply (after clipping)."""

    def __init__(self) -> None:
        super().__init__()
        self.norms: list[float] = []
        self.steps = 0

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.sb3_model.policy.named_parameters())

    def adjust_gradients(self, group: ParamGroup) -> None:
        grads = [p.grad for p in group.params if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def after_update(self, group: ParamGroup) -> None:
        self.steps += 1


@pytest.mark.parametrize("algo", ALGOS)
def test_l2_at_strength_zero_equals_plain_sb3(algo: str) -> None:
    plain = params_of(learn_two_tasks(algo, None))
    with_l2 = params_of(learn_two_tasks(algo, clrl.L2(strength=0.0, networks="all")))
    assert plain.keys() == with_l2.keys()
    for name in plain:
        assert torch.equal(plain[name], with_l2[name]), name


@pytest.mark.parametrize("algo", ALGOS)
def test_l2_pulls_parameters_toward_the_anchor(algo: str) -> None:
    def distance_after_task_two(module: clrl.L2) -> float:
        anchors: dict[str, torch.Tensor] = {}

        class Snapshot(ContinualModule):
            def on_task_end(self, task: clrl.TaskInfo) -> None:
                if task.index == 0:
                    anchors.update(
                        {n: p.detach().clone() for n, p in policy_parameters(self.sb3_model).items()}
                    )

        model = learn_two_tasks(algo, [module, Snapshot()])
        final = policy_parameters(model)
        return sum(float(((final[n].detach() - a) ** 2).sum()) for n, a in anchors.items()) ** 0.5

    free = distance_after_task_two(clrl.L2(strength=0.0))
    pulled = distance_after_task_two(clrl.L2(strength=1e4))
    assert free > 0
    assert pulled < 0.5 * free


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_analytic_penalty_equals_autograd_extra_loss(algo: str) -> None:
    analytic = params_of(learn_two_tasks(algo, clrl.L2(strength=3.0)))
    autograd = params_of(learn_two_tasks(algo, AutogradL2(strength=3.0)))
    for name in analytic:
        torch.testing.assert_close(analytic[name], autograd[name], rtol=1e-5, atol=1e-6)


def test_penalty_is_clipped_like_a_loss_term() -> None:
    recorder = GradientRecorder()
    model = learn_two_tasks("ppo", [clrl.L2(strength=1e6), recorder])
    assert recorder.steps > 0
    assert max(recorder.norms) <= model.max_grad_norm * (1 + 1e-4)  # type: ignore[attr-defined]


@pytest.mark.parametrize("algo", ALGOS)
def test_hooks_are_removed_when_learn_ends(algo: str) -> None:
    model = learn_two_tasks(algo, clrl.L2(strength=1.0))
    for opt in optimizers(model).values():
        assert "zero_grad" not in opt.__dict__
        assert not opt._optimizer_step_pre_hooks
        assert not opt._optimizer_step_post_hooks


def test_modules_compose_on_one_optimizer() -> None:
    one = clrl.L2(strength=2.0)
    two = clrl.L2(strength=2.0)
    both = params_of(learn_two_tasks("ppo", [one, two]))
    single = params_of(learn_two_tasks("ppo", clrl.L2(strength=4.0)))
    for name in both:
        torch.testing.assert_close(both[name], single[name], rtol=1e-5, atol=1e-6)


def test_task_counter_and_anchor_follow_learn_calls() -> None:
    module = clrl.L2()
    model = learn_two_tasks("ppo", module)
    assert module.tasks_seen == 2
    actor = policy_parameters(model, "actor")
    assert module.anchor.keys() == actor.keys()
    assert not any(n.startswith("value_net") for n in module.anchor)
    for name, p in actor.items():
        assert torch.equal(module.anchor[name], p.detach())


def test_actor_selection_per_algorithm() -> None:
    for algo, prefix in (
        ("sac", "actor."),
        ("td3", "actor."),
        ("dqn", "q_net."),
        ("qrdqn", "quantile_net."),
        ("tqc", "actor."),
        ("crossq", "actor."),
    ):
        model, _ = make_model(algo)
        names = policy_parameters(model, "actor")
        assert names and all(n.startswith(prefix) for n in names)
        assert not any("target" in n for n in names)
    model, _ = make_model("sac")
    assert any(n.startswith("critic.") for n in policy_parameters(model, "all"))


@pytest.mark.parametrize(
    "kwargs",
    [{"strength": -1.0}, {"strength": float("nan")}, {"strength": float("inf")}, {"networks": "critic"}],
)
def test_l2_rejects_bad_hyperparameters(kwargs: dict) -> None:
    with pytest.raises(clrl.ConfigError):
        clrl.L2(**kwargs)


def test_l2_defaults_and_config_roundtrip() -> None:
    module = clrl.L2()
    assert module.get_config() == {"strength": 1.0, "networks": "actor", "verbose": 0}
    assert clrl.L2(**module.get_config()).get_config() == module.get_config()


def test_hooks_are_removed_when_training_fails_inside_clrl_train() -> None:
    model, stream = make_model("ppo")

    class Crash(ContinualModule):
        def _on_step(self) -> bool:
            raise RuntimeError("env exploded")

    module = clrl.L2(strength=1.0)
    module.anchor = {n: p.detach().clone() for n, p in policy_parameters(model).items()}
    with pytest.raises(RuntimeError, match="env exploded"):
        clrl.train(model, stream, [module, Crash()], eval_episodes=1)
    for opt in optimizers(model).values():
        assert "zero_grad" not in opt.__dict__
        assert not opt._optimizer_step_pre_hooks


def test_recurrent_actor_excludes_the_critic_lstm() -> None:
    model, _ = make_model("recurrentppo")
    names = policy_parameters(model, "actor")
    assert any(n.startswith("lstm_actor.") for n in names)
    assert not any(n.startswith(("lstm_critic.", "value_net.")) for n in names)


@pytest.mark.parametrize("algo", ["trpo", "ars"])
def test_algorithms_without_an_optimizer_step_on_the_policy_warn(algo: str) -> None:
    from conftest import cartpole_stream

    stream = cartpole_stream()
    cls = clrl.get_algorithm(algo)
    kwargs = {"n_steps": 32, "batch_size": 32} if algo == "trpo" else {"n_delta": 2}
    model = cls("MlpPolicy", stream.make_vec_env(0), policy_kwargs={"net_arch": [8]}, device=DEVICE, **kwargs)
    module = clrl.L2(networks="all")
    module.anchor = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    with pytest.warns(UserWarning, match="without an optimiser step"):
        model.learn(64, callback=module)


# ------------------------------------------------------------------------------------------ ResetOptimizer
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_reset_optimizer_clears_every_optimiser_at_each_later_task(algo: str) -> None:
    model, stream = make_model(algo)
    reset = clrl.ResetOptimizer()
    model.learn(stream.steps(0), callback=reset)
    assert all(len(opt.state) > 0 for opt in optimizers(model).values())  # Adam has moments now
    model.set_env(stream.make_vec_env(1, seed=11))
    with clrl.training_task(model, [reset], 1, "second"):
        assert all(len(opt.state) == 0 for opt in optimizers(model).values())
        model.learn(stream.steps(1), reset_num_timesteps=False)
    assert reset.resets == 1 and all(len(opt.state) > 0 for opt in optimizers(model).values())


def test_reset_optimizer_changes_nothing_on_the_first_task() -> None:
    plain, stream = make_model("sac")
    plain.learn(stream.steps(0))
    model, _ = make_model("sac")
    model.learn(stream.steps(0), callback=clrl.ResetOptimizer())
    for (name, a), b in zip(params_of(model).items(), params_of(plain).values(), strict=True):
        assert torch.equal(a, b), name
