"""CLSER: the moving averages follow the hand-computed rule and never get gradients, strength 0 is plain SB3,
the consistency loss pulls toward the chosen copy, evaluation uses the stable copy, state is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DEVICE, cartpole_stream, make_model
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from test_modules import params_of

import clrl
from clrl.algorithms import optimizers
from clrl.modules.distill import Frozen, action_log_likelihood, distillation_losses, network_outputs

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3", "recurrentppo", "qrdqn", "tqc"]


def two_tasks(algo: str, clser: clrl.CLSER | None, **overrides: Any) -> BaseAlgorithm:
    model, stream = make_model(algo, **overrides)
    clrl.train(model, stream, [clser] if clser else [], seed=0, eval_episodes=1)
    return model


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_strength_zero_equals_plain_sb3(algo: str) -> None:
    plain = params_of(two_tasks(algo, None))
    clser = clrl.CLSER(strength=0.0, stable_rate=0.5, evaluate_with="working")
    trained = params_of(two_tasks(algo, clser))
    for name in plain:
        assert torch.equal(plain[name], trained[name]), name
    assert clser.updates["plastic"] > clser.updates["stable"] > 0  # the copies followed all the same


@pytest.mark.parametrize("algo", ALGOS)
def test_copies_get_no_gradients_and_the_loss_is_logged(algo: str) -> None:
    clser = clrl.CLSER(strength=1.0, batch_size=16, stable_rate=0.5)
    model = two_tasks(algo, clser)
    assert clser.plastic is not None and clser.stable is not None
    stepped = {id(p) for opt in optimizers(model).values() for g in opt.param_groups for p in g["params"]}
    for copy in (clser.plastic, clser.stable):
        assert not stepped & {id(p) for p in copy.parameters()}
        assert all(not p.requires_grad and p.grad is None for p in copy.parameters())
        assert not copy.training
    scalars = clser.log_scalars()
    assert scalars["actor_consistency"] >= 0 and 0 <= scalars["stable_chosen"] <= 1
    assert scalars["plastic_updates"] > scalars["stable_updates"] > 0
    assert 0 < scalars["states"] <= 2 * 128 and scalars["bytes"] > 0
    if algo in ("ppo", "a2c", "recurrentppo", "sac", "td3", "tqc"):
        assert scalars["critic_consistency"] >= 0  # networks="all": values and critics too


def test_moving_averages_match_the_hand_computed_rule() -> None:
    """Plastic: every step, decay 0.9 after the warm-up; stable: a step with probability 0.5, decay 0.5."""
    model, stream = make_model("ppo")
    clser = clrl.CLSER(plastic_rate=1.0, plastic_decay=0.9, stable_rate=0.5, stable_decay=0.5)
    initial = params_of(model)
    after_steps: list[dict[str, torch.Tensor]] = []
    optimizer = model.policy.optimizer
    optimizer.register_step_post_hook(lambda *_: after_steps.append(params_of(model)))
    model.learn(stream.steps(0), callback=clser)

    draws = np.random.default_rng([0, 0, 2])  # the module's draws: seed 0, task 0
    plastic, stable = dict(initial), dict(initial)
    stable_updates = 0
    for n, params in enumerate(after_steps, start=1):
        u_plastic, u_stable = draws.random(2)
        assert u_plastic < 1.0
        alpha = min(1 - 1 / (n + 1), 0.9)
        plastic = {k: alpha * v + (1 - alpha) * params[k] for k, v in plastic.items()}
        if u_stable < 0.5:
            alpha = min(1 - 1 / (n + 1), 0.5)
            stable = {k: alpha * v + (1 - alpha) * params[k] for k, v in stable.items()}
            stable_updates += 1
    assert len(after_steps) == clser.steps["policy.optimizer"] == clser.updates["plastic"] > 0
    assert clser.updates["stable"] == stable_updates and 0 < stable_updates < len(after_steps)
    assert clser.plastic is not None and clser.stable is not None
    for which, expected in (("plastic", plastic), ("stable", stable)):
        got = dict(clser.copy(which).named_parameters())
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=f"{which} {name}")


def test_consistency_keeps_the_policy_near_the_chosen_copy() -> None:
    def divergence(strength: float) -> float:
        """KL(chosen copy ‖ policy) on stored states after two tasks."""
        clser = clrl.CLSER(strength=strength, networks="actor", stable_rate=0.05)
        two_tasks("ppo", clser, learning_rate=0.01)  # a policy that moves within 128 steps
        rows = clser.replay_states(256)
        targets, _ = clser.consistency_targets(rows)
        with torch.no_grad():
            new = network_outputs(clser.sb3_model, rows, ("actor",))
            return float(distillation_losses(clser.sb3_model, targets, new)["actor"])

    free, held = divergence(0.0), divergence(100.0)
    assert held < 0.5 * free, (held, free)


def test_the_copy_that_explains_the_stored_action_better_is_chosen() -> None:
    model, _ = make_model("ppo")
    clser = clrl.CLSER()
    model.learn(32, callback=clser)
    assert clser.plastic is not None and clser.stable is not None
    with torch.no_grad():  # plastic prefers action 0, stable action 1, on every state
        for copy, preferred in ((clser.plastic, 0), (clser.stable, 1)):
            net = copy.action_net  # type: ignore[union-attr]
            net.weight.zero_()
            net.bias.copy_(torch.tensor([5.0, -5.0] if preferred == 0 else [-5.0, 5.0]))
    rows = clser.replay_states(8)
    rows["action"] = np.array([[0], [1], [0], [1], [1], [1], [0], [0]], dtype=np.float32)
    targets, chose_stable = clser.consistency_targets(rows)
    assert chose_stable.tolist() == [a == 1 for a in rows["action"][:, 0]]
    stable_logits = network_outputs(Frozen(clser.stable, model.device), rows, ("actor",))["logits"]  # type: ignore[arg-type]
    assert torch.equal(targets["logits"][chose_stable], stable_logits[chose_stable])
    assert (targets["logits"][~chose_stable].argmax(1) == 0).all()


@pytest.mark.parametrize("algo", ["ppo", "sac", "td3", "dqn", "qrdqn"])
def test_action_log_likelihood_prefers_the_policy_that_takes_the_action(algo: str) -> None:
    model, _ = make_model(algo)
    obs = np.stack([model.observation_space.sample() for _ in range(16)]).astype(np.float32)
    actions, _ = model.predict(obs, deterministic=True)
    if algo in ("sac", "td3"):
        actions = model.policy.scale_action(actions)  # the buffer's actions
    stored = torch.as_tensor(np.asarray(actions, dtype=np.float32).reshape(16, -1))
    rows = {"obs": obs, "action": stored.numpy()}
    outputs = network_outputs(model, rows, ("actor",))
    other = stored.clone()
    if algo in ("ppo", "dqn", "qrdqn"):
        other = 1 - other  # the other CartPole action
    else:
        other = (-other).clamp(-0.99, 0.99) if stored.abs().max() > 0.05 else other + 0.5
    ll = action_log_likelihood(model, outputs, stored)
    assert ll.shape == (16,) and (ll >= action_log_likelihood(model, outputs, other)).all()


def test_evaluation_uses_the_stable_copy_and_restores_the_policy() -> None:
    model, stream = make_model("ppo")
    clser = clrl.CLSER(stable_rate=0.2)
    model.learn(stream.steps(0), callback=clser)
    trained = params_of(model)
    assert clser.stable is not None
    stable = {k: v.clone() for k, v in clser.stable.named_parameters()}
    assert any(not torch.equal(trained[k], stable[k]) for k in trained)
    with clser.evaluating():
        assert all(torch.equal(p, stable[k]) for k, p in model.policy.named_parameters())
    assert all(torch.equal(p, trained[k]) for k, p in model.policy.named_parameters())

    evaluator = clrl.Evaluator(stream, n_episodes=2)
    row = evaluator(model, [clser])
    plain_row = evaluator(model)
    with clser.evaluating():
        by_hand = evaluator(model)
    assert np.array_equal(row, by_hand)
    working = clrl.CLSER(evaluate_with="working")
    assert np.array_equal(plain_row, evaluator(model, [working]))


def test_state_survives_save_and_load(tmp_path: Path) -> None:
    model, stream = make_model("sac")
    clser = clrl.CLSER(strength=0.5, budget=100, stable_rate=0.3)
    model.learn(stream.steps(0), callback=clser)
    clrl.save(model, tmp_path / "m.zip", [clser])
    loaded, (restored,) = clrl.load(tmp_path / "m.zip")
    assert isinstance(restored, clrl.CLSER) and restored.strength == 0.5 and restored.stable_rate == 0.3
    original, state = clser.state_dict(), restored.state_dict()
    assert state["steps"] == original["steps"] and state["updates"] == original["updates"]
    for which in ("plastic", "stable"):
        assert all(torch.equal(state[which][k], v) for k, v in original[which].items())
    assert len(restored.memory) == len(clser.memory) == 100
    with restored.evaluating():  # the copies are rebuilt on the loaded model
        assert restored.stable is not None
        assert all(torch.equal(p, original["stable"][k]) for k, p in loaded.policy.named_parameters())
    loaded.set_env(stream.make_vec_env(1, seed=1))
    loaded.learn(stream.steps(1), callback=restored, reset_num_timesteps=False)
    assert restored.updates["plastic"] > clser.updates["plastic"]
    assert restored.plastic is not None  # the restored copies are the ones averaged from then on
    assert any(not torch.equal(p, original["plastic"][k]) for k, p in restored.plastic.named_parameters())
    assert len(restored.memory.tasks) == 2


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_one_pass_of_the_copies_serves_prefetch_steps(algo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass of the copies over ``prefetch`` draws serves the next ``prefetch`` steps (SAC: each slot
    serves the critic's step and the actor's), each step getting the targets of the states it replays."""
    passes: list[int] = []
    served: list[tuple[str, dict[str, np.ndarray], dict[str, torch.Tensor]]] = []
    original_targets = clrl.CLSER.consistency_targets
    original_loss = clrl.CLSER.extra_loss

    def counting_targets(self: clrl.CLSER, rows: Any) -> Any:
        passes.append(len(rows["action"]))
        return original_targets(self, rows)

    def recording_loss(self: clrl.CLSER, group: Any) -> Any:
        loss = original_loss(self, group)
        assert self._chunk is not None
        draws, targets, _ = self._chunk
        n = len(draws[0]["action"])
        part = {k: v[self._slot * n : (self._slot + 1) * n].clone() for k, v in targets.items()}
        served.append((group.optimizer_name, draws[self._slot], part))
        return loss

    monkeypatch.setattr(clrl.CLSER, "consistency_targets", counting_targets)
    monkeypatch.setattr(clrl.CLSER, "extra_loss", recording_loss)
    # Rates 0: the copies stay the initial policy, so the targets of any state can be recomputed afterwards.
    clser = clrl.CLSER(strength=1.0, batch_size=16, plastic_rate=0.0, stable_rate=0.0, prefetch=3)
    two_tasks(algo, clser)
    optimisers = 2 if algo == "sac" else 1
    steps_per_task = len(served) // optimisers // 2
    assert steps_per_task > 3 and len(served) == 2 * optimisers * steps_per_task
    assert len(passes) == 2 * -(-steps_per_task // 3)  # a new task starts a new pass
    assert set(passes) == {48}
    names = [name for name, _, _ in served]
    if algo == "sac":
        assert names[::2] == ["critic.optimizer"] * (len(names) // 2)
        assert all(served[i][1] is served[i + 1][1] for i in range(0, len(served), 2))
    for _, rows, targets in served:
        fresh, _ = original_targets(clser, rows)
        assert fresh.keys() == targets.keys()
        for key in targets:
            torch.testing.assert_close(targets[key], fresh[key])


def test_hidden_task_id_is_accepted() -> None:
    stream = cartpole_stream(task_id="hidden")
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    result = clrl.train(model, stream, [clrl.CLSER()], seed=0, eval_episodes=1)
    assert result.matrix.shape[1] == 2 and np.isfinite(result.matrix).all()


def test_bad_arguments() -> None:
    for kwargs, match in (
        ({"strength": -1.0}, "strength"),
        ({"plastic_rate": 1.5}, "plastic_rate"),
        ({"stable_decay": -0.1}, "stable_decay"),
        ({"budget": 0}, "budget"),
        ({"batch_size": 0}, "batch_size"),
        ({"networks": "critic"}, "networks"),
        ({"evaluate_with": "fast"}, "evaluate_with"),
        ({"prefetch": 0}, "prefetch"),
    ):
        with pytest.raises(clrl.ConfigError, match=match):
            clrl.CLSER(**kwargs)


def test_refuses_gsde() -> None:
    model = PPO("MlpPolicy", "Pendulum-v1", use_sde=True, n_steps=32, batch_size=32, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match="gSDE"):
        model.learn(32, callback=clrl.CLSER())
