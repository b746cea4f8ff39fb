"""Task-free modes of the regularisers: online EWC, MAS and SI consolidating every K steps on a stream whose
boundaries are hidden."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, cartpole_stream, make_model
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback

import clrl
from clrl.algorithms import policy_parameters

SCHEDULED: dict[str, Callable[..., Any]] = {
    "online-ewc": lambda **kw: clrl.OnlineEWC(samples=64, **kw),
    "mas": lambda **kw: clrl.MAS(samples=64, **kw),
    "si": lambda **kw: clrl.SI(**kw),
}


def _hidden(steps: int = 128) -> clrl.TaskStream:
    return dataclasses.replace(cartpole_stream(steps=steps, task_id="hidden"), boundaries="hidden")


class _Snapshots(BaseCallback):
    """The actor's parameters at every rollout end (after the modules' own rollout-end hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def _on_rollout_end(self) -> None:
        params = policy_parameters(self.model, "actor")
        self.at[self.model.num_timesteps] = {n: p.detach().clone() for n, p in params.items()}

    def _on_step(self) -> bool:
        return True


def _ppo(stream: clrl.TaskStream) -> Any:
    cls, _, kwargs = ALGO_SETUPS["ppo"]
    return cls("MlpPolicy", stream.make_vec_env(0), seed=0, **kwargs)


def _recording_anchors(module: Any) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """The module's anchor after each of its consolidations, with the step it was made at."""
    anchors: list[tuple[int, dict[str, torch.Tensor]]] = []
    consolidate = module.consolidate

    def recorded(*key: int) -> None:
        consolidate(*key)
        anchors.append((module.sb3_model.num_timesteps, {n: a.clone() for n, a in module.anchor.items()}))

    module.consolidate = recorded
    return anchors


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_a_scheduled_module_consolidates_every_k_steps_on_a_hidden_stream(name: str) -> None:
    """PPO's rollouts are 32 steps: rollouts end at 32, 64, ..., 256, so with every=64 the module
    consolidates at 64, 128, 192 and 256 (the end of the first rollout at or after each multiple), each time
    with the parameters of that moment as its anchor; the stream's end (its only boundary) comes at the
    step of the last one, so it does not consolidate again."""
    stream = _hidden()
    module = SCHEDULED[name](strength=1.0, every=64)
    assert not module.needs_boundaries() and SCHEDULED[name]().needs_boundaries()
    anchors, snapshots = _recording_anchors(module), _Snapshots()
    callback = clrl.StreamCallback(stream, [module], eval_episodes=1, plasticity=False)
    _ppo(stream).learn(callback.total_steps, callback=[callback, snapshots])
    assert module.consolidations == 4 and module.tasks_seen == 1
    assert [step for step, _ in anchors] == [64, 128, 192, 256]  # the end, at 256 too, adds nothing
    for step, anchor in anchors:
        for n, a in anchor.items():
            assert torch.equal(a, snapshots.at[step][n]), (step, n)
    assert all(torch.isfinite(w).all() and (w >= 0).all() for w in module.importance.values())
    assert callback.result is not None and not np.isnan(callback.result.matrix).any()


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_the_penalty_pulls_toward_the_latest_scheduled_anchor(name: str) -> None:
    """Every penalty gradient applied is ``strength · w · (θ - a)`` with the anchor and importance of the
    latest consolidation (the hooks' cached tensors are rebuilt), and none is applied before the first."""
    model, _ = make_model("ppo")
    module = SCHEDULED[name](strength=3.0, every=64)
    checked: list[int] = []
    penalty_gradients = module.penalty_gradients

    def checking(group: Any) -> list[torch.Tensor]:
        grads = penalty_gradients(group)
        for n, param, grad in zip(group.names, group.params, grads, strict=True):
            expected = 3.0 * module.importance[n] * (param.detach() - module.anchor[n])
            torch.testing.assert_close(grad, expected)
        checked.append(model.num_timesteps)
        return grads

    module.penalty_gradients = checking  # type: ignore[method-assign]
    model.learn(256, callback=module)
    assert module.consolidations == 4
    assert checked and min(checked) >= 64 and {s // 64 for s in checked} == {1, 2, 3, 4}


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_scheduled_consolidation_at_strength_zero_trains_exactly_as_plain_sb3(name: str) -> None:
    """Consolidating draws its states with its own generator and leaves the networks alone."""
    plain, _ = make_model("ppo")
    plain.learn(256)
    model, _ = make_model("ppo")
    module = SCHEDULED[name](strength=0.0, every=64)
    model.learn(256, callback=module)
    assert module.consolidations == 4
    for (n, a), b in zip(plain.policy.state_dict().items(), model.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_a_hidden_stream_refuses_a_module_without_every_and_names_the_scheduled_ones() -> None:
    stream = _hidden()
    cls, _, kwargs = ALGO_SETUPS["ppo"]
    model = cls("MlpPolicy", stream.make_vec_env(0), **kwargs)
    callback = clrl.StreamCallback(stream, [clrl.OnlineEWC()], eval_episodes=1)
    with pytest.raises(
        clrl.ConfigError,
        match=r"when configured: online-ewc \(every=K\), mas \(every=K\), si \(every=K\), scp \(every=K\), "
        r"replay \(include_current=true\), mir \(include_current=true\), shrink-and-perturb \(every=K\), "
        r"reset \(every=K\), plasticity-injection \(every=K\), net2net \(every=K\);",
    ):
        model.learn(callback.total_steps, callback=callback)


def test_every_is_checked() -> None:
    for bad in (0, -5, 1.5, "10"):
        with pytest.raises(clrl.ConfigError, match="every"):
            clrl.OnlineEWC(every=bad)  # type: ignore[arg-type]


def test_task_free_replay_draws_from_the_whole_stream_on_a_hidden_stream() -> None:
    """With include_current, Replay's reservoir is a sample of every transition since the first step, and
    batches draw their replayed share from it inside the one task a hidden stream is: rows of the first
    segment come back after SB3's small buffer has dropped them."""
    stream = _hidden(steps=200)
    replay = clrl.Replay(budget=400, fraction=0.5, include_current=True, require_task_id=False)
    assert not replay.needs_boundaries() and clrl.Replay().needs_boundaries()
    model = DQN(
        "MlpPolicy", stream.make_vec_env(0), buffer_size=100, learning_starts=50, batch_size=16, seed=0
    )
    callback = clrl.StreamCallback(stream, [replay], eval_episodes=1, plasticity=False)
    model.learn(callback.total_steps, callback=callback)
    assert len(replay.memory.tasks) == 1 and len(replay.memory) == 400  # one reservoir: the whole stream
    assert replay.replayed > 0
    replay.attach()
    try:
        batch = model.replay_buffer.sample(200)
    finally:
        replay.detach()
    live = {tuple(o) for o in model.replay_buffer.observations[:, 0].round(6)}
    replayed = [tuple(o) for o in batch.observations[100:].cpu().numpy().round(6)]
    # The second half of the batch is the reservoir's; most of it is older than SB3's 100 latest rows.
    assert sum(o not in live for o in replayed) > 50


def test_replay_without_include_current_replays_nothing_inside_one_task() -> None:
    stream = _hidden(steps=200)
    replay = clrl.Replay(budget=400, fraction=0.5, require_task_id=False)
    model = DQN("MlpPolicy", stream.make_vec_env(0), buffer_size=100, learning_starts=50, seed=0)
    model.learn(400, callback=replay)
    assert replay.replayed == 0
    with pytest.raises(clrl.ConfigError, match="include_current"):
        clrl.Replay(include_current="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_an_off_policy_stream_whose_end_falls_on_a_consolidation(name: str) -> None:
    """DQN's rollouts of 4 steps end at 256, where every=64 consolidates: the end of the task then has no
    new state and must not estimate on none (it raised 'holds no states of this task')."""
    model, _ = make_model("dqn")
    module = SCHEDULED[name](strength=1.0, every=64)
    model.learn(256, callback=module)
    assert module.consolidations == 4 and module.tasks_seen == 1
