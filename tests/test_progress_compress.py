"""Progress & Compress: progress leaves the knowledge base alone, compression distils the active column into
it under the online-EWC penalty, the Fisher covers the knowledge base only, evaluation uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

import clrl
from clrl.modules.multihead import task_router
from clrl.modules.progress_compress import ACTIVE, KNOWLEDGE_BASE, column_parameters


def pnc_model(algo: str, **overrides: Any) -> tuple[BaseAlgorithm, clrl.TaskStream]:
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    kwargs = {**kwargs, **overrides}
    policy_kwargs = {"n_tasks": 2, **kwargs.pop("policy_kwargs")}
    model = cls(
        clrl.progressive_policy(cls),
        stream.make_vec_env(0, seed=0),
        seed=0,
        device=DEVICE,
        policy_kwargs=policy_kwargs,
        **kwargs,
    )
    return model, stream


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


class _Probe(BaseCallback):
    """Records the knowledge base at the start and end of SB3's training (before the compression)."""

    def __init__(self) -> None:
        super().__init__()
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.active_start: dict[str, torch.Tensor] = {}
        self.active_end: dict[str, torch.Tensor] = {}

    def _on_training_start(self) -> None:
        self.start = snapshot(column_parameters(self.model, KNOWLEDGE_BASE))
        self.active_start = snapshot(column_parameters(self.model, ACTIVE))

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.end = snapshot(column_parameters(self.model, KNOWLEDGE_BASE))
        self.active_end = snapshot(column_parameters(self.model, ACTIVE))


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_progress_trains_the_active_column_and_compression_the_knowledge_base(algo: str) -> None:
    model, stream = pnc_model(algo, learning_rate=0.01)
    pnc = clrl.ProgressAndCompress(compress_steps=20, batch_size=32)
    probe = _Probe()
    model.learn(stream.steps(0), callback=[probe, pnc])  # the probe's end runs before the compression
    assert all(torch.equal(probe.start[n], probe.end[n]) for n in probe.start)  # progress: untouched
    assert any(not torch.equal(probe.active_start[n], probe.active_end[n]) for n in probe.active_start)
    after = snapshot(column_parameters(model, KNOWLEDGE_BASE))
    assert any(not torch.equal(probe.end[n], after[n]) for n in after)  # compression moved it
    active_after = snapshot(column_parameters(model, ACTIVE))
    assert all(torch.equal(probe.active_end[n], active_after[n]) for n in active_after)  # not the active
    assert set(pnc.importance) == set(pnc.regularised()) and pnc.importance
    assert set(pnc.importance) <= set(column_parameters(model, KNOWLEDGE_BASE))
    assert all(torch.isfinite(w).all() and (w >= 0).all() for w in pnc.importance.values())
    assert sum(float(w.sum()) for w in pnc.importance.values()) > 0
    assert all(p.grad is None for p in column_parameters(model, KNOWLEDGE_BASE).values())


def test_compression_distils_the_active_column() -> None:
    model, stream = pnc_model("ppo", learning_rate=0.01)
    pnc = clrl.ProgressAndCompress(compress_steps=200, batch_size=64, compress_lr=0.01)
    model.learn(stream.steps(0), callback=pnc)
    scalars = pnc.log_scalars()
    assert scalars["compress_first_loss"] > 0
    assert scalars["compress_last_loss"] < 0.2 * scalars["compress_first_loss"], scalars


def test_the_penalty_holds_the_knowledge_base_near_its_anchor() -> None:
    def moved(strength: float) -> float:
        """How far the second compression moves the knowledge base from the first task's anchor, weighted
        by the first task's Fisher (the online-EWC penalty without its strength)."""
        model, stream = pnc_model("ppo", learning_rate=0.01)
        pnc = clrl.ProgressAndCompress(strength=strength, compress_steps=100, compress_lr=1e-3)
        model.learn(stream.steps(0), callback=pnc)
        anchor = {n: a.clone() for n, a in pnc.anchor.items()}
        fisher = {n: w.clone() for n, w in pnc.importance.items()}
        model.set_env(stream.make_vec_env(1, seed=1))
        model.learn(stream.steps(1), callback=pnc, reset_num_timesteps=False)
        params = pnc.regularised()
        return sum(float((fisher[n] * (params[n].detach() - a).square()).sum()) for n, a in anchor.items())

    free, held = moved(0.0), moved(1e4)
    assert held < 0.1 * free, (held, free)


def test_evaluation_and_acting_use_the_knowledge_base() -> None:
    model, stream = pnc_model("ppo")
    pnc = clrl.ProgressAndCompress(compress_steps=5)
    seen: list[int | None] = []

    class Watch(BaseCallback):
        def _on_step(self) -> bool:
            seen.append(task_router(self.model).forced)  # type: ignore[union-attr]
            return True

    clrl.train(model, stream, [pnc], seed=0, eval_episodes=1)
    router = task_router(model)
    assert router is not None and router.forced == KNOWLEDGE_BASE  # after training: the knowledge base
    model.learn(32, callback=[pnc, Watch()], reset_num_timesteps=False)
    assert set(seen) == {ACTIVE}  # progress acts with the active column
    assert router.forced == KNOWLEDGE_BASE
    evaluator = clrl.Evaluator(stream, n_episodes=2)
    router.forced = ACTIVE
    with pnc.evaluating():
        assert router.forced == KNOWLEDGE_BASE
        by_hand = evaluator(model)
    assert router.forced == ACTIVE
    assert np.array_equal(evaluator(model, [pnc]), by_hand)
    active = clrl.ProgressAndCompress(evaluate_with="active")
    active.bind(model)
    assert router.forced == ACTIVE


def test_state_survives_save_and_load(tmp_path: Path) -> None:
    model, stream = pnc_model("sac")
    pnc = clrl.ProgressAndCompress(strength=5.0, compress_steps=10, gamma=0.9)
    model.learn(stream.steps(0), callback=pnc)
    clrl.save(model, tmp_path / "m.zip", [pnc])
    loaded, (restored,) = clrl.load(tmp_path / "m.zip")
    assert isinstance(restored, clrl.ProgressAndCompress) and restored.gamma == 0.9
    assert all(torch.equal(restored.importance[n], w) for n, w in pnc.importance.items())
    assert task_router(loaded).forced == KNOWLEDGE_BASE  # type: ignore[union-attr]
    loaded.set_env(stream.make_vec_env(1, seed=1))
    loaded.learn(stream.steps(1), callback=restored, reset_num_timesteps=False)
    assert restored.log_scalars()["compress_seconds"] > 0


def test_train_on_a_hidden_task_id() -> None:
    stream = ALGO_SETUPS["ppo"][1]()
    hidden = clrl.TaskStream(stream.name, list(stream.tasks), stream.steps_per_task, task_id="hidden")
    model = PPO(
        clrl.ProgressiveActorCriticPolicy,
        hidden.make_vec_env(0),
        n_steps=32,
        batch_size=32,
        policy_kwargs={"n_tasks": 2, "net_arch": [16]},
        device=DEVICE,
    )
    result = clrl.train(model, hidden, [clrl.ProgressAndCompress(compress_steps=5)], eval_episodes=1)
    assert np.isfinite(result.matrix).all()


def test_needs_a_two_column_progressive_policy() -> None:
    plain = PPO(
        "MlpPolicy", ALGO_SETUPS["ppo"][1]().make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE
    )
    with pytest.raises(clrl.ConfigError, match="two-column progressive policy"):
        plain.learn(32, callback=clrl.ProgressAndCompress())
    three, _ = pnc_model("ppo", policy_kwargs={"net_arch": [16], "n_tasks": 3})
    with pytest.raises(clrl.ConfigError, match="n_tasks': 2"):
        three.learn(32, callback=clrl.ProgressAndCompress())


def test_bad_arguments() -> None:
    for kwargs, match in (
        ({"compress_steps": 0}, "compress_steps"),
        ({"compress_lr": 0.0}, "compress_lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"states": 0}, "states"),
        ({"gamma": 2.0}, "gamma"),
        ({"strength": -1.0}, "strength"),
        ({"evaluate_with": "stable"}, "evaluate_with"),
    ):
        with pytest.raises(clrl.ConfigError, match=match):
            clrl.ProgressAndCompress(**kwargs)
