"""Modules inside anyone's SB3 code: explicit task boundaries, a lifecycle that cannot leak, pickle-safe
patches, early refusal, one model per module, idempotent ends, cost flat in tasks."""

from __future__ import annotations

import contextlib
import copy
import gc
import multiprocessing
import pickle
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE, make_model, pendulum_stream
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import SubprocVecEnv

import clrl
from clrl.algorithms import optimizers
from clrl.modules.base import ContinualModule, ParamGroup


class Boom(Exception):
    pass


class RaiseAt(BaseCallback):
    """Raises inside ``learn`` once ``steps`` environment steps of this call have passed."""

    def __init__(self, steps: int, error: type[BaseException] = Boom) -> None:
        super().__init__()
        self.steps, self.error = steps, error

    def _on_training_start(self) -> None:
        self.start = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self.start >= self.steps:
            raise self.error("inside learn")
        return True


class CountingPenalty(ContinualModule):
    """Counts the penalty hook's calls (a stand-in for any gradient-hook module)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.sb3_model.policy.named_parameters())

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        self.calls += 1


def hooked(model: BaseAlgorithm) -> list[str]:
    """Optimisers of ``model`` that carry clrl's hooks (a wrapped zero_grad or the hooks attribute)."""
    return [n for n, o in optimizers(model).items() if {"zero_grad", "_clrl_hooks"} & o.__dict__.keys()]


# ------------------------------------------------------------------ 1. exceptions inside learn
@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_hooks_of_a_learn_that_raised_never_act_on_a_later_learn(error: type[BaseException]) -> None:
    model, _ = make_model("ppo")
    module = CountingPenalty()
    with pytest.raises(error):
        model.learn(64, callback=[module, RaiseAt(40, error)])
    calls = module.calls
    assert calls > 0 or hooked(model)  # the hooks were installed and SB3 never ran on_training_end
    model.learn(64)  # plain SB3, no callback at all
    assert module.calls == calls
    assert hooked(model) == []  # removed at the first step of the later learn


def test_l2_of_a_learn_that_raised_leaves_plain_sb3_training_bit_for_bit() -> None:
    def run(with_l2: bool) -> dict[str, torch.Tensor]:
        model, _ = make_model("ppo")
        if with_l2:
            l2 = clrl.L2(strength=1e4)
            model.learn(64, callback=l2)  # task 0: the anchor
            with pytest.raises(Boom):
                model.learn(64, callback=[l2, RaiseAt(10)])
        else:
            model.learn(64)
            with pytest.raises(Boom):
                model.learn(64, callback=RaiseAt(10))
        model.learn(64)
        return {n: p.detach().clone() for n, p in model.policy.named_parameters()}

    plain, leaked = run(False), run(True)
    for name in plain:
        assert torch.equal(plain[name], leaked[name]), name


def test_training_task_removes_the_hooks_when_its_body_raises() -> None:
    model, _ = make_model("ppo")
    module = CountingPenalty()
    with pytest.raises(Boom), clrl.training_task(model, [module], 0):
        model.learn(64, callback=[module, RaiseAt(40)])
    assert hooked(model) == []
    assert module.current_task is None and module.tasks_seen == 0  # aborted, not ended


def test_no_registry_keeps_a_dead_model_or_optimiser_alive() -> None:
    model, _ = make_model("ppo")
    module = clrl.L2()
    model.learn(64, callback=module)
    with contextlib.suppress(Boom):
        model.learn(64, callback=[module, RaiseAt(10)])
    optimizer = weakref.ref(model.policy.optimizer)
    dead_module = weakref.ref(module)
    del model, module
    gc.collect()
    assert optimizer() is None and dead_module() is None


# ------------------------------------------------------------------ 2. one task, several learn calls
def test_chunked_learn_inside_training_task_is_one_task_for_packnet_ewc_and_multihead() -> None:
    stream = clrl.make_stream("cartpole-flip", steps_per_task=128)
    policy = clrl.multihead_policy(PPO)
    model = PPO(
        policy,
        stream.make_vec_env(0, seed=0),
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"net_arch": [16], "n_tasks": len(stream)},
        seed=0,
        device=DEVICE,
    )
    packnet, ewc, heads = clrl.PackNet(prune=0.5, retrain=0.25), clrl.EWC(samples=32), clrl.MultiHead()
    modules = [packnet, ewc, heads]
    with clrl.training_task(model, modules, 0, "first", steps=160):
        for _ in range(5):
            model.learn(32, callback=modules, reset_num_timesteps=False)
    assert packnet.log_scalars()["free"] == pytest.approx(0.5, abs=0.02)  # pruned once, not per chunk
    assert len(ewc.fishers) == 1
    assert [m.tasks_seen for m in modules] == [1, 1, 1]


def test_without_a_scope_each_learn_call_stays_one_task() -> None:
    model, _ = make_model("ppo")
    ewc = clrl.EWC(samples=32)
    for _ in range(3):
        model.learn(32, callback=ewc, reset_num_timesteps=False)
    assert len(ewc.fishers) == 3 and ewc.tasks_seen == 3


def test_packnet_inside_a_scope_without_a_budget_is_refused_before_training() -> None:
    model, _ = make_model("ppo")
    with pytest.raises(clrl.ConfigError, match="steps=N"), clrl.training_task(model, [clrl.PackNet()], 0):
        pass
    assert model.num_timesteps == 0


def test_a_learn_that_raised_leaves_its_task_open_and_the_next_learn_continues_it() -> None:
    model, _ = make_model("ppo")
    ewc = clrl.EWC(samples=32)
    with pytest.raises(Boom):
        model.learn(64, callback=[ewc, RaiseAt(40)])
    model.learn(64, callback=ewc)
    assert len(ewc.fishers) == 1 and ewc.tasks_seen == 1


# ------------------------------------------------------------------ 3. pickle-safe patching
def test_replay_beside_sb3_checkpoint_callback_saves_a_plain_replay_buffer(tmp_path: Path) -> None:
    model, _ = make_model("dqn")
    replay = clrl.Replay(budget=64)
    saver = CheckpointCallback(save_freq=50, save_path=str(tmp_path), save_replay_buffer=True)
    model.learn(128, callback=[replay, saver])
    saved = sorted(tmp_path.glob("*replay_buffer*.pkl"))
    assert saved
    model.load_replay_buffer(saved[-1])
    assert not {"add", "sample", "__getstate__"} & model.replay_buffer.__dict__.keys()


def test_objects_a_module_patches_pickle_and_deep_copy_while_attached() -> None:
    model, _ = make_model("sac")
    replay, l2 = clrl.Replay(budget=64), clrl.L2()
    seen: list[object] = []

    class Copier(BaseCallback):
        def _on_step(self) -> bool:
            if not seen and self.num_timesteps >= 40:  # after the first updates: every hook installed
                buffer = self.model.replay_buffer
                assert "sample" in buffer.__dict__  # attached now
                seen.append(pickle.loads(pickle.dumps(buffer)))
                seen.append(copy.deepcopy(buffer))
                for optimizer in optimizers(self.model).values():
                    seen.append(pickle.loads(pickle.dumps(optimizer)))
                seen.append(copy.deepcopy(self.model.policy))
            return True

    model.learn(64, callback=l2)  # task 0: L2 anchors, so task 1 hooks every optimiser
    model.learn(64, callback=[l2, replay, Copier()])
    assert len(seen) == 6
    for buffer in seen[:2]:
        assert "sample" not in buffer.__dict__  # copies are plain SB3 buffers
    for optimizer in seen[2:5]:
        assert "zero_grad" not in optimizer.__dict__  # type: ignore[attr-defined]


# ------------------------------------------------------------------ 8. refuse early
def test_ewc_on_gsde_is_refused_before_the_first_step() -> None:
    stream = pendulum_stream()
    model = PPO("MlpPolicy", stream.make_vec_env(0), use_sde=True, n_steps=32, batch_size=32, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match="gSDE"):
        clrl.train(model, stream, [clrl.EWC()], eval_episodes=1)
    assert model.num_timesteps == 0
    with pytest.raises(clrl.ConfigError, match="gSDE"):
        model.learn(64, callback=clrl.EWC())
    assert model.num_timesteps == 0


def test_si_without_damping_is_refused_at_construction() -> None:
    with pytest.raises(clrl.ConfigError, match="damping"):
        clrl.SI(damping=0.0)


# ------------------------------------------------------------------ 9. idempotent boundaries
def test_a_task_ends_once_however_often_on_training_end_is_called() -> None:
    model, _ = make_model("ppo")
    l2, ewc = clrl.L2(), clrl.EWC(samples=32)
    model.learn(64, callback=[l2, ewc])
    l2.on_training_end()  # RL Zoo's learn calls it again in its finally
    ewc.on_training_end()
    assert l2.tasks_seen == 1 and ewc.tasks_seen == 1 and len(ewc.fishers) == 1
    with clrl.training_task(model, [ewc], 1):
        model.learn(32, callback=ewc, reset_num_timesteps=False)
        ewc.on_training_end()
    ewc.end_task()
    assert ewc.tasks_seen == 2 and len(ewc.fishers) == 2


# ------------------------------------------------------------------ 11. one model per module
def test_a_module_that_learned_with_one_model_refuses_another() -> None:
    first, _ = make_model("ppo")
    l2 = clrl.L2()
    first.learn(64, callback=l2)
    second, _ = make_model("ppo", seed=1)
    with pytest.raises(clrl.ConfigError, match="another model"):
        second.learn(64, callback=l2)
    assert second.num_timesteps == 0
    l2.bind(second)  # on purpose
    second.learn(64, callback=l2)
    assert l2.tasks_seen == 2


def test_clrl_load_binds_the_modules_to_the_loaded_model(tmp_path: Path) -> None:
    model, stream = make_model("ppo")
    ewc = clrl.EWC(samples=32)
    model.learn(64, callback=ewc)
    clrl.save(model, tmp_path / "m", [ewc])
    loaded, (restored,) = clrl.load(tmp_path / "m.zip", env=stream.make_vec_env(1))
    loaded.learn(64, callback=restored)
    assert restored.tasks_seen == 2


# ------------------------------------------------------------------ 12. cost flat in tasks
def test_ewc_penalty_over_many_tasks_equals_the_sum_task_by_task() -> None:
    model, _ = make_model("ppo")
    ewc = clrl.EWC(strength=3.0)
    ewc.bind(model)
    params = ewc.regularised()
    rng = torch.Generator().manual_seed(0)
    fishers = [{n: torch.rand(p.shape, generator=rng) for n, p in params.items()} for _ in range(50)]
    anchors = [{n: torch.randn(p.shape, generator=rng) for n, p in params.items()} for _ in range(50)]
    ewc.load_state_dict({"fishers": fishers, "anchors": anchors})
    expected = 0.0
    for f, a in zip(fishers, anchors, strict=True):
        expected += sum(float((f[n] * (p.detach() - a[n]).square()).sum()) for n, p in params.items())
    assert ewc.penalty() == pytest.approx(0.5 * 3.0 * expected, rel=1e-5)


def test_off_policy_module_scalars_are_computed_once_per_episode_not_per_step() -> None:
    class Counting(clrl.L2):
        calls = 0

        def log_scalars(self) -> dict[str, float]:
            Counting.calls += 1
            return super().log_scalars()

    model, _ = make_model("sac", train_freq=1)
    module = Counting()
    model.learn(600, callback=module)  # Pendulum: 200-step episodes
    assert 3 <= Counting.calls <= 3 + 1  # one per finished episode, one at the task's end


# ------------------------------------------------------------------ 5. evaluation as the return matrix
def test_continual_eval_callback_scores_what_the_return_matrix_scores(tmp_path: Path) -> None:
    stream = clrl.make_stream("cartpole-flip", steps_per_task=64)
    stream = clrl.TaskStream(stream.name, stream.tasks[:2], steps_per_task=64, task_id="observed")
    model = PPO(
        clrl.multihead_policy(PPO),
        stream.make_vec_env(0, seed=0),
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"net_arch": [16], "n_tasks": 2},
        seed=0,
        device=DEVICE,
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    heads = clrl.MultiHead()
    evaluate = clrl.ContinualEvalCallback(stream, [heads], eval_freq=32, n_eval_episodes=2, seed=7)
    with clrl.training_task(model, [heads], 1, steps=64):
        model.learn(64, callback=[heads, evaluate], reset_num_timesteps=False)
        row = evaluate.evaluate()
        expected = clrl.Evaluator(stream, 2, 7 + 100_000)(model, [heads], current_task=1)
    np.testing.assert_array_equal(row, expected)
    assert [c[1] for c in evaluate.curves] == [1] * len(evaluate.curves) and len(evaluate.curves) == 3
    header = (tmp_path / "progress.csv").read_text().splitlines()[0]
    assert all(f"eval/{name}/return" in header for name in stream.task_names)
    evaluate.close()


# ------------------------------------------------------------------ 10. checkpoints that keep modules
def test_continual_checkpoint_callback_keeps_module_state(tmp_path: Path) -> None:
    model, _ = make_model("ppo")
    ewc = clrl.EWC(samples=32)
    model.learn(64, callback=ewc)
    saver = clrl.ContinualCheckpointCallback(64, tmp_path, [ewc], name_prefix="ewc")
    model.learn(128, callback=[ewc, saver], reset_num_timesteps=False)
    files = sorted(tmp_path.glob("ewc_*_steps.zip"))
    assert [f.name for f in files] == ["ewc_128_steps.zip", "ewc_192_steps.zip"]
    _, (restored,) = clrl.load(files[0])
    assert len(restored.fishers) == 1  # saved during the second task, after the first's Fisher


# ------------------------------------------------------------------ 6. vectorised envs
def _children() -> int:
    return len(multiprocessing.active_children())


def test_train_keeps_subprocvecenv_and_closes_every_env_it_replaces() -> None:
    stream = clrl.TaskStream(
        "tiny", [clrl.Task("a", "CartPole-v1"), clrl.Task("b", "CartPole-v1")], steps_per_task=64
    )
    before = _children()
    model = PPO(
        "MlpPolicy",
        stream.make_vec_env(0, n_envs=2, vec_env_cls=SubprocVecEnv),
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        device=DEVICE,
    )
    assert _children() == before + 2
    clrl.train(model, stream, eval_episodes=1)
    assert isinstance(model.get_env(), SubprocVecEnv)
    assert _children() == before + 2  # the last task's env only: the model's first and task 0's are closed
    model.get_env().close()
    assert _children() == before


def test_run_spec_refuses_an_unknown_vec_env_before_training() -> None:
    with pytest.raises(clrl.ConfigError, match="vec_env must be one of dummy, subproc"):
        clrl.RunSpec(stream="cartpole-flip", vec_env="threads").check()


@pytest.mark.parametrize(
    ("algo", "module", "message"),
    [
        ("ppo", lambda: clrl.Replay(), "off-policy"),
        ("dqn", lambda: clrl.CLEAR(), "on-policy"),
        ("ppo", lambda: clrl.MultiHead(), "multi-head policy"),
        ("ppo", lambda: clrl.ProgressiveColumns(), "progressive policy"),
        ("ppo-sde", lambda: clrl.LwF(), "gSDE"),
        ("ppo-sde", lambda: clrl.CLSER(), "gSDE"),
        ("ppo-sde", lambda: clrl.AGEM(), "gSDE"),
        ("ppo-sde", lambda: clrl.MAS(), "gSDE"),
    ],
)
def test_every_module_refuses_a_model_it_cannot_work_with_before_anything_runs(
    algo: str, module: Callable[[], ContinualModule], message: str
) -> None:
    if algo == "ppo-sde":
        stream = pendulum_stream()
        model = PPO(
            "MlpPolicy", stream.make_vec_env(0), use_sde=True, n_steps=32, batch_size=32, device=DEVICE
        )
    else:
        model, stream = make_model(algo)
    chosen = module()
    with pytest.raises(clrl.ConfigError, match=message):
        clrl.train(model, stream, [chosen], eval_episodes=1)
    assert model.num_timesteps == 0 and chosen.tasks_seen == 0 and getattr(chosen, "model", None) is None
