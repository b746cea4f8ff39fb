"""GDumb: the agent trains as without it, the memory is balanced over tasks, the evaluated policy is one
trained from scratch on the memory alone (behaviour cloning of the stored actions), the agent's weights
come back after evaluation, and the state is saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE, make_model
from stable_baselines3 import DQN
from test_modules import params_of

import clrl
from clrl.modules.distill import network_outputs


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac", "td3"])
def test_the_evaluated_policy_clones_the_memory_from_scratch_and_the_agent_trains_as_without_it(
    algo: str,
) -> None:
    plain, stream = make_model(algo)
    clrl.train(plain, stream, seed=0, eval_episodes=1)
    model, stream = make_model(algo)
    gdumb = clrl.GDumb(budget=64, steps=200, batch_size=32)
    clrl.train(model, stream, [gdumb], seed=0, eval_episodes=1)
    trained = params_of(model)
    assert all(torch.equal(trained[k], v) for k, v in params_of(plain).items())  # it only collects
    assert [len(r) for r in gdumb.memory.tasks] == [32, 32]  # balanced: the budget split over the tasks
    assert gdumb.learner is not None and gdumb.trainings >= 2  # after each task's end at least
    with gdumb.evaluating():
        evaluated = {k: p.detach().clone() for k, p in model.policy.named_parameters()}
    assert all(torch.equal(p, trained[k]) for k, p in model.policy.named_parameters())  # the agent is back
    assert any(not torch.equal(evaluated[k], trained[k]) for k in trained)


def _rule(obs: np.ndarray, discrete: bool) -> np.ndarray:
    """Actions as a function of the state: the sign of CartPole's pole velocity, Pendulum's half sine."""
    return (obs[:, 3:4] > 0).astype(np.float32) if discrete else (0.5 * obs[:, 1:2]).astype(np.float32)


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac", "td3"])
def test_the_learner_clones_the_stored_actions(algo: str) -> None:
    model, stream = make_model(algo)
    gdumb = clrl.GDumb(budget=128, steps=300, batch_size=64)
    model.learn(stream.steps(0), callback=gdumb)
    discrete = algo in ("ppo", "dqn")
    (reservoir,) = gdumb.memory.tasks
    obs = reservoir.rows()["obs"]
    reservoir.set_field(
        "action", np.concatenate([_rule(obs, discrete), reservoir.data["action"][len(obs) :]])
    )
    gdumb.memory.invalidate()
    gdumb.learner = None  # the memory was edited by hand: train again
    with gdumb.evaluating(), torch.no_grad():
        outputs = network_outputs(model, {"obs": obs, "action": obs[:, :1]}, ("actor",))
    if discrete:
        logits = outputs["logits"] if "logits" in outputs else outputs["q"]
        taken = logits.argmax(1).cpu().numpy()
        assert (taken == _rule(obs, True)[:, 0]).mean() >= 0.9
    else:
        taken = torch.tanh(outputs["mean"]) if "mean" in outputs else outputs["action"]
        assert np.abs(taken.cpu().numpy() - _rule(obs, False)).mean() < 0.1


def test_the_learner_depends_on_the_memory_alone_and_is_retrained_only_when_it_changes() -> None:
    model, stream = make_model("ppo")
    gdumb = clrl.GDumb(budget=64, steps=20, batch_size=16)
    model.learn(stream.steps(0), callback=gdumb)
    with gdumb.evaluating():
        first = {k: p.detach().clone() for k, p in model.policy.named_parameters()}
    with gdumb.evaluating():  # nothing recorded since: the same learner, not trained again
        assert gdumb.trainings == 1
    with torch.no_grad():  # the agent's weights play no part in the learner
        for p in model.policy.parameters():
            p.add_(1.0)
    gdumb.trainings, gdumb.learner = 0, None
    with gdumb.evaluating():
        again = {k: p.detach().clone() for k, p in model.policy.named_parameters()}
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_state_survives_save_and_load(tmp_path: Path) -> None:
    model, stream = make_model("dqn")
    gdumb = clrl.GDumb(budget=50, steps=10, batch_size=16)
    clrl.train(model, stream, [gdumb], seed=0, eval_episodes=1)
    clrl.save(model, tmp_path / "m.zip", [gdumb])
    loaded, (restored,) = clrl.load(tmp_path / "m.zip")
    assert isinstance(restored, clrl.GDumb) and restored.steps == 10 and len(restored.memory) == 50
    assert restored.recorded == gdumb.recorded and restored.trainings == gdumb.trainings
    assert gdumb.learner is not None and restored.learner is not None
    with restored.evaluating():  # the saved learner acts, not trained again
        assert restored.trainings == gdumb.trainings
        assert all(torch.equal(p, gdumb.learner[k]) for k, p in loaded.policy.named_parameters())
    clrl.export_policy(model, [gdumb], tmp_path / "policy.zip")  # what was evaluated, for plain SB3
    exported = DQN.load(tmp_path / "policy.zip", device=DEVICE)
    assert all(torch.equal(p, gdumb.learner[k]) for k, p in exported.policy.named_parameters())


def test_bad_arguments_and_a_hidden_task_id_are_refused() -> None:
    for kwargs in ({"steps": 0}, {"batch_size": -1}, {"learning_rate": 0.0}, {"budget": 0}):
        with pytest.raises(clrl.ConfigError):
            clrl.GDumb(**kwargs)  # type: ignore[arg-type]
    hidden = clrl.make_stream("cartpole-physics", steps_per_task=64)
    with pytest.raises(clrl.ConfigError, match="hides the task id"):
        clrl.GDumb().check_stream(hidden)
