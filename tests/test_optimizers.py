"""TRAC as SB3's ``optimizer_class``: its update, its pull back to the initial weights after a task change,
a model built from a preset's name, hooked by clrl's modules, saved and loaded with its state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICE
from stable_baselines3 import PPO

import clrl
from clrl.errors import ConfigError
from clrl.optimizers import TRACAdam
from clrl.presets import make_model, optimizer_class


def _steps(opt: torch.optim.Optimizer, w: torch.Tensor, target: torch.Tensor, n: int) -> None:
    for _ in range(n):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()


def test_trac_moves_the_weights_by_its_scale_times_adams_step() -> None:
    target = torch.tensor([3.0, -1.0, 0.5])
    w = torch.nn.Parameter(torch.zeros(3))
    a = torch.nn.Parameter(torch.zeros(3))
    trac, adam = TRACAdam([w], lr=0.01), torch.optim.Adam([a], lr=0.01)
    assert trac.scale == 0.0
    _steps(trac, w, target, 1)
    _steps(adam, a, target, 1)
    assert 0 < trac.scale < 1e-6  # the scale starts of the order of s_prev = 1e-8
    torch.testing.assert_close(w.detach(), trac.scale * a.detach())  # θ_ref = 0: θ₁ = s₁ · Adam's step


def test_trac_learns_then_pulls_back_to_the_initial_weights_when_the_task_changes() -> None:
    torch.manual_seed(0)
    target = torch.randn(5) * 3
    w = torch.nn.Parameter(torch.zeros(5))
    opt = TRACAdam([w], lr=0.01)
    _steps(opt, w, target, 300)
    assert opt.scale > 1.0 and ((w - target) ** 2).sum() < 0.5  # the scale grew and the task is learned
    _steps(opt, w, -target, 100)  # a conflicting task: the scale collapses, the weights return to θ_ref
    assert opt.scale == 0.0 and w.detach().abs().max() < 1e-6
    _steps(opt, w, -target, 400)  # and the new task is learned from there
    assert opt.scale > 1.0 and ((w + target) ** 2).sum() < 0.5


def test_presets_name_trac_and_torch_optimisers() -> None:
    assert optimizer_class("trac-adam") is TRACAdam
    assert optimizer_class("TRAC_Adam") is TRACAdam
    assert optimizer_class("rmsprop") is torch.optim.RMSprop
    for bad in ("adamm", "lbfgs"):  # unknown; a torch optimiser whose step needs a closure
        with pytest.raises(ConfigError, match="trac-adam"):
            optimizer_class(bad)


def test_trac_without_its_extra_is_refused_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    monkeypatch.delitem(sys.modules, "clrl.optimizers")
    with pytest.raises(ConfigError, match=r'pip install "clrl\[trac\]"'):
        optimizer_class("trac-adam")


def test_a_trac_model_trains_with_a_module_and_loads_with_its_state(tmp_path: Path) -> None:
    stream = clrl.make_stream("cartpole-flip", steps_per_task=64)
    hp = {"n_envs": 1, "n_steps": 32, "batch_size": 32, "n_epochs": 2}
    hp["policy_kwargs"] = {"optimizer_class": "trac-adam"}
    model = make_model("ppo", stream, 0, hp, device=DEVICE)
    assert isinstance(model.policy.optimizer, TRACAdam)
    clrl.train(model, stream, modules=[clrl.EWC()], logdir=tmp_path / "run", eval_episodes=1)
    optimizer = model.policy.optimizer
    assert "zero_grad" not in vars(optimizer)  # the module's hook is gone with its task scope
    assert optimizer.scale > 0 and optimizer.state["trac"]["step"] == 4 * 2 * 2  # tasks, rollouts, epochs
    clrl.save(model, tmp_path / "model.zip")
    for loaded in (clrl.load(tmp_path / "model.zip", device=DEVICE)[0], PPO.load(tmp_path / "model.zip")):
        restored = loaded.policy.optimizer
        assert isinstance(restored, TRACAdam) and restored.scale == optimizer.scale
        saved, back = optimizer.state["trac"], restored.state["trac"]
        for p, q in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
            torch.testing.assert_close(back[q].cpu(), saved[p].cpu())  # θ_ref, the first step's weights
