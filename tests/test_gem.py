"""GEM: the projection against a brute-force solver, its constraints in training, and plain SB3 before an
earlier task is in memory."""

from __future__ import annotations

import copy
import itertools
import sys
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, make_model
from conftest import pendulum_stream as make_pendulum_stream
from stable_baselines3 import PPO
from test_modules import params_of
from test_reliability import three_tasks

import clrl
from clrl.modules.agem import project_gradient
from clrl.modules.gem import gem_projection, linear_owners
from clrl.modules.memory import TaskMemory


def _brute_force(g: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The closest point to ``g`` with ``m @ x >= 0``: the best feasible point over every active set (each
    the projection onto the subspace where the set's constraints hold with equality)."""
    best, best_distance = None, np.inf
    for size in range(len(m) + 1):
        for active in itertools.combinations(range(len(m)), size):
            a = m[list(active)]
            x = g - a.T @ np.linalg.lstsq(a @ a.T, a @ g, rcond=None)[0] if size else g.copy()
            if (m @ x >= -1e-9).all() and np.linalg.norm(x - g) < best_distance:
                best, best_distance = x, float(np.linalg.norm(x - g))
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(20))
def test_the_projection_is_the_closest_gradient_that_satisfies_every_constraint(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 5))
    g, m = rng.normal(size=8), rng.normal(size=(k, 8))
    projected = gem_projection(g, m)
    if (m @ g >= 0).all():
        assert projected is None
        return
    assert projected is not None
    assert (m @ projected >= -1e-9).all()
    np.testing.assert_allclose(projected, _brute_force(g, m), atol=1e-8)
    assert np.linalg.norm(projected) <= np.linalg.norm(g) + 1e-12  # a projection onto a cone


def test_one_constraint_is_a_gems_projection() -> None:
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=16), rng.normal(size=16)
    r = r if g @ r < 0 else -r
    ours = [torch.as_tensor(g.copy())]
    project_gradient(ours, [torch.as_tensor(r)])
    projected = gem_projection(g, r[None])
    assert projected is not None
    np.testing.assert_allclose(projected, ours[0].numpy(), atol=1e-12)


def test_a_margin_still_satisfies_the_constraints_and_leans_toward_them() -> None:
    rng = np.random.default_rng(3)
    g, m = rng.normal(size=8), rng.normal(size=(3, 8))
    g = g - 2 * m[0] * (m[0] @ g) / (m[0] @ m[0]) if m[0] @ g > 0 else g  # conflicts with row 0
    exact, leaning = gem_projection(g, m), gem_projection(g, m, margin=0.5)
    assert exact is not None and leaning is not None
    assert (m @ leaning >= -1e-9).all()
    assert (m @ leaning).sum() > (m @ exact).sum()
    with pytest.raises(clrl.ConfigError, match="margin"):
        clrl.GEM(margin=-1.0)


def train_three_tasks(algo: str, gem: clrl.GEM) -> None:
    """Train ``algo``'s tiny test model on three tasks with ``gem`` (the third has two earlier tasks)."""
    cls, make, hyper = ALGO_SETUPS[algo]
    stream = three_tasks(make)
    model = cls("MlpPolicy", stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **hyper)
    clrl.train(model, stream, [gem], eval_episodes=1)


class CheckedGEM(clrl.GEM):
    """Keeps each step's reference gradients and checks the gradient given to the optimiser against them."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.references: list[list[torch.Tensor]] = []
        self.worst: list[float] = []
        self.constraints: list[int] = []

    def reference_gradients(self, group: clrl.ParamGroup, tasks: list[int]) -> list[list[torch.Tensor]]:
        references = super().reference_gradients(group, tasks)
        self.references.extend(references)
        return references

    def adjust_gradients(self, group: clrl.ParamGroup) -> None:
        self.references = []
        super().adjust_gradients(group)
        pairs = [(p.grad, i) for i, p in enumerate(group.params) if p.grad is not None]
        if not pairs or not self.references:
            return
        g = torch.cat([grad.reshape(-1) for grad, _ in pairs])  # type: ignore[union-attr]
        dots = [float(g @ torch.cat([r[i].reshape(-1) for _, i in pairs])) for r in self.references]
        scale = float(g.norm()) * max(
            float(torch.cat([t.reshape(-1) for t in r]).norm()) for r in self.references
        )
        self.worst.append(min(dots) / max(scale, 1e-12))
        self.constraints.append(len(self.references))


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_gem_gradients_conflict_with_no_earlier_task_in_training(algo: str) -> None:
    gem = CheckedGEM(budget=150)
    train_three_tasks(algo, gem)
    assert gem.projections > 0 and 2 in gem.constraints  # the third task: one constraint per earlier task
    assert min(gem.worst) >= -1e-5, min(gem.worst)


def test_gem_with_refresh_computes_that_many_reference_gradients_per_step_in_turn() -> None:
    calls: list[list[int]] = []

    class Counted(clrl.GEM):
        def reference_gradients(self, group: clrl.ParamGroup, tasks: list[int]) -> list[list[torch.Tensor]]:
            calls[-1].extend(tasks)
            return super().reference_gradients(group, tasks)

        def adjust_gradients(self, group: clrl.ParamGroup) -> None:
            calls.append([])
            super().adjust_gradients(group)

    train_three_tasks("dqn", Counted(budget=150, refresh=1))
    start = next(i for i, c in enumerate(calls) if sorted(c) == [0, 1])  # the third task's first step
    assert all(c == [0] for c in calls[:start] if c)  # the second task: its one earlier task, every step
    third = calls[start:]
    assert [c for step in third[1:] for c in step] == [(i + 1) % 2 for i in range(len(third) - 1)]


class ComparedGEM(clrl.GEM):
    """Computes every step's reference gradients both ways, on the same states: in one pass over all tasks
    (what GEM does) and one task at a time (:meth:`reference_gradient`)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.one_pass: list[bool] = []
        self.passes: list[bool] = []
        self.error = 0.0
        self.scale = 0.0

    def _gradients_in_one_pass(self, *args: Any) -> list[list[torch.Tensor]] | None:
        found = super()._gradients_in_one_pass(*args)
        self.passes.append(found is not None)
        return found

    def reference_gradients(self, group: clrl.ParamGroup, tasks: list[int]) -> list[list[torch.Tensor]]:
        before = copy.deepcopy(self._sample_rng.bit_generator.state)
        found = super().reference_gradients(group, tasks)
        after = self._sample_rng.bit_generator.state
        self._sample_rng.bit_generator.state = before
        each = [self.reference_gradient(group, [task]) for task in tasks]
        assert self._sample_rng.bit_generator.state == after  # the same states were drawn
        if len(tasks) > 1:
            self.one_pass.append(linear_owners(self.sb3_model.policy, group.params) is not None)
        for a, b in zip(itertools.chain(*found), itertools.chain(*each), strict=True):
            self.error = max(self.error, float((a - b).abs().max()))
            self.scale = max(self.scale, float(b.abs().max()))
        return found


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac", "td3"])
def test_one_pass_gives_each_tasks_own_reference_gradient(algo: str) -> None:
    gem = ComparedGEM(budget=150)
    train_three_tasks(algo, gem)
    assert gem.one_pass and all(gem.one_pass), "the plain SB3 policy should take the one-pass path"
    assert gem.passes and all(gem.passes)
    assert gem.scale > 0
    assert gem.error <= 1e-5 * gem.scale, (gem.error, gem.scale)


def test_policies_whose_layers_are_not_plain_linear_ones_take_one_pass_per_task() -> None:
    plain, _ = make_model("ppo")
    assert linear_owners(plain.policy, list(plain.policy.parameters())) is not None
    # PPO's Gaussian policy has a log_std parameter of no layer; a multi-head policy routes rows by task.
    gaussian = PPO("MlpPolicy", make_pendulum_stream().make_vec_env(0, seed=0), device=DEVICE)
    heads = PPO(
        clrl.multihead_policy(PPO),
        clrl.make_stream("cartpole-flip").make_vec_env(0, seed=0),
        policy_kwargs={"n_tasks": 4},
        device=DEVICE,
    )
    for model in (gaussian, heads):
        assert linear_owners(model.policy, list(model.policy.parameters())) is None
    plain.policy.mlp_extractor.policy_net.append(torch.nn.Dropout(0.1))  # mixes in randomness per call
    assert linear_owners(plain.policy, list(plain.policy.parameters())) is None


def test_drawing_each_tasks_rows_at_once_draws_what_one_call_per_task_draws() -> None:
    memory = TaskMemory(budget=300)
    rng = np.random.default_rng(0)
    for task in range(3):
        memory.start_task(task, rng)
        memory.record({"obs": np.arange(100, dtype=np.float32)[:, None] + 1000 * task}, rng)
    memory.current = None
    together = memory.sample(7, np.random.default_rng(1), [2, 0], each=True)["obs"]
    draws = np.random.default_rng(1)
    apart = np.concatenate([memory.sample(7, draws, [t])["obs"] for t in (2, 0)])
    assert np.array_equal(together, apart)
    assert (together[:7] >= 2000).all() and (together[7:] < 1000).all()


def test_gem_before_an_earlier_task_is_in_memory_equals_plain_sb3() -> None:
    model, stream = make_model("dqn")
    model.learn(stream.steps(0), callback=clrl.GEM(budget=50))
    plain, _ = make_model("dqn")
    plain.learn(stream.steps(0))
    for (name, a), b in zip(params_of(model).items(), params_of(plain).values(), strict=True):
        assert torch.equal(a, b), name


def test_gem_without_scipy_is_refused_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # an import of it now fails
    with pytest.raises(clrl.ConfigError, match=r'pip install "clrl\[gem\]"'):
        clrl.GEM()
